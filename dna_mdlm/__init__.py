"""dna-mdlm: masked diffusion language models for DNA on a Caduceus (RC-aware BiMamba) backbone."""

__version__ = "0.1.0"

from .errors import InputError
from .tokenizer import DNATokenizer

__all__ = ["DNATokenizer", "InputError", "__version__"]
