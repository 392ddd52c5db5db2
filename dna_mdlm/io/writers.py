"""Writers that keep outputs whole: atomic files and directories, TSV, and JSON without non-finite numbers.

Every output is written to a temporary sibling and renamed into place, so a crash, a kill or a rejected input
never leaves a half-written file or directory behind, and an existing output is only replaced by a complete one.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it.

    Works for a file or a directory (whatever the body creates at the yielded path). Replacing an
    existing directory is done by moving the old one aside first, so readers never see a mix.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / (path.name + suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def json_safe(x):
    """A copy of `x` that `json.dumps(allow_nan=False)` accepts: numpy scalars and arrays become Python values and
    NaN/inf become None (JSON `null`), so a report never holds the bare `NaN` tokens strict parsers reject."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.ndarray):
        return json_safe(x.tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Path):
        return str(x)
    return x


def dumps_json(obj, indent: int | None = 1) -> str:
    """Strict JSON text of `obj` (see `json_safe`)."""
    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str)


def write_json(path: str | os.PathLike, obj, indent: int | None = 1) -> None:
    """Atomic, strict JSON (non-finite numbers are written as null, never as NaN)."""
    atomic_write_text(path, dumps_json(obj, indent) + "\n")


def _cell(v) -> str:
    if isinstance(v, (float, np.floating)):
        return f"{float(v):.6g}" if math.isfinite(float(v)) else "NA"
    return str(v)


def write_tsv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence]) -> None:
    """Atomic TSV with a header row; floats to 6 significant digits, non-finite values as `NA`."""
    with atomic_path(path) as tmp, open(tmp, "w") as fh:
        fh.write("\t".join(header) + "\n")
        for row in rows:
            fh.write("\t".join(_cell(v) for v in row) + "\n")
