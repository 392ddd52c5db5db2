"""Reading and writing the files users hand to dna-mdlm and get back from it."""
