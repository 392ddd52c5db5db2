"""The one exception type for bad user input, and the atomic-write helpers that keep outputs whole.

Every library function that rejects a file, argument or sequence raises `InputError` with a one-line
message naming the file/line/argument and what was expected; the CLI prints it and exits 2. Outputs are
written to a temporary sibling and renamed into place, so a crash or a rejected input never leaves a
half-written file or directory behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path


class InputError(ValueError):
    """Bad user input: a one-line message for the CLI (exit code 2)."""


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
