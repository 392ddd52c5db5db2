"""The one input layer: every verb reads files through these modules, so they all apply the same rules.

* `text`: opening any text input — compression sniffed from the bytes (gzip and BGZF read; bzip2, xz, zstd and zip
  refused by name), a UTF-8 byte-order mark dropped, any newline convention, read errors (a truncated gzip, binary
  data) turned into one-line errors.
* `fasta`: FASTA records (names are the first word after `>`, as samtools reads them; duplicate names, empty records
  and text before the first header are errors naming the lines) streamed with Biopython, or opened for random
  access through pyfaidx, on the file itself or on a normalised copy in the cache when pyfaidx cannot index it.
  An index (`.fai`) that does not describe the file is never trusted.
* `regions`: `chr:start-end` regions and BED intervals, checked against the records: a missing record, a reversed
  interval or one running past the end is an error, never clipped; interval arithmetic; contig-name aliasing.
* `tables`: CSV/TSV with a header (delimiter from the extension or sniffed).
* `writers`: atomic file and directory writers, TSV and JSON writers that refuse non-finite numbers, and
  `check_outputs`, the one rule on where a verb may write (no file over a directory or directory over a file, a
  non-empty output directory only when it is a previous output of the same verb, no output over or in an input).
"""
