"""The errors dna-mdlm raises on purpose, each with a one-line message for the command line.

* `InputError`: bad user input (a file, line, flag or sequence); the CLI prints it and exits 2.
* `TrainingDiverged`: a training run produced a non-finite loss, gradient or weight; training stops, the last finite
  checkpoint stays and no model is exported; the CLI prints it and exits 1.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: a one-line message naming the file/line/flag and what was expected (CLI exit code 2)."""


class TrainingDiverged(RuntimeError):
    """A non-finite loss, gradient or weight stopped training (CLI exit code 1)."""


def check_int(flag: str, value, minimum: int = 1, what: str = "") -> int:
    """An integer flag (`--batch-size`, `--window`, ...) -> its value; InputError `--flag V: expected ...` when
    it is not an integer >= `minimum` (`what` names the unit, e.g. "bases")."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        need = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise InputError(f"{flag} {value}: expected {need}" + (f" ({what})" if what else ""))
    return value
