"""Writers that keep outputs whole: atomic files and directories, TSV, and JSON without non-finite numbers, and
the one rule on where a verb may write (`check_outputs`), checked before any work starts.

Every output is written to a temporary sibling and renamed into place, so a crash, a kill or a rejected input
never leaves a half-written file or directory behind, and an existing output is only replaced by a complete one.

Output rules (`check_outputs`; every verb of the CLI applies them to its flags before it starts):

* a file output never replaces a directory, and a directory output never replaces a file;
* a directory output that already exists must be empty or a previous output of the same verb: it holds the
  verb's signature file (`OutputDirectory.signature`) and, for a verb that replaces its directory as a whole,
  nothing the verb does not write itself (`OutputDirectory.entries`), so nothing of the user's is deleted;
* no output is, contains, or lies inside one of the command's inputs.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ""):
    """Yield a temporary path beside `path`; on success rename it onto `path`, on error remove it.

    Works for a file or a directory (whatever the body creates at the yielded path). Replacing an
    existing directory is done by moving the old one aside first, so readers never see a mix. A file never
    replaces a directory nor a directory a file: that raises InputError and leaves `path` as it was (callers
    should run `check_outputs` first, so that this is found before any work).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)) / (path.name + suffix)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"nothing was written to {tmp}")
        if path.exists() and path.is_dir() != tmp.is_dir():
            raise InputError(_kind_clash(str(path), path.is_dir(), "output"))
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


# ------------------------------------------------------------------------------------------------------------
# Where a verb may write: checked once, before any work
# ------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputDirectory:
    """A verb's output directory, described well enough to tell its previous output from anything else.

    `signature`: a file this kind of output always holds. `entries`: glob patterns of everything the verb writes
    in it, for a verb that replaces the directory as a whole (everything else would be deleted); None for a verb
    that only adds to the directory (a training run: checkpoints, logs, model/), which deletes nothing of yours.
    """

    verb: str
    signature: str
    entries: tuple[str, ...] | None = None


def _kind_clash(shown: str, is_dir: bool, flag: str) -> str:
    if is_dir:
        return f"{flag} {shown}: is a directory (expected a file name)"
    return f"{flag} {shown}: is a file (expected a directory name)"


def _resolved(path) -> Path:
    return Path(os.path.abspath(os.path.realpath(os.path.expanduser(str(path)))))


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_outputs(files: Iterable[tuple[str, object]] = (),
                  directories: Iterable[tuple[str, object, OutputDirectory]] = (),
                  inputs: Iterable[tuple[str, object]] = ()) -> None:
    """Refuse, before any work, outputs that would destroy data (the rules in the module docstring).

    `files`: (flag, path) written as files; `directories`: (flag, path, OutputDirectory) written as directories;
    `inputs`: (flag, path) the command reads (paths that do not exist, such as hub ids, are skipped). None paths
    are skipped. Raises InputError naming the flag and path, e.g. "--out runs/x: is a directory (expected a file
    name)"; touches nothing.
    """
    files = [(f, p) for f, p in files if p is not None]
    directories = [(f, p, d) for f, p, d in directories if p is not None]
    inputs = [(f, p) for f, p in inputs if p is not None and os.path.lexists(str(p))]
    for flag, path in files:
        path = Path(path)
        if path.is_dir():
            raise InputError(_kind_clash(str(path), True, flag))
        parent = next((q for q in path.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise InputError(f"{flag} {path}: {parent} is a file, not a directory")
    for flag, path, spec in directories:
        _check_directory(flag, Path(path), spec)
    outputs = [(f, p, True) for f, p in files] + [(f, p, d.entries is not None) for f, p, d in directories]
    for k, (flag, out, _) in enumerate(outputs):
        for other, out2, _ in outputs[:k]:
            if _resolved(out) == _resolved(out2):
                raise InputError(f"{flag} {out}: is also {other}; give each output its own name")
    for oflag, out, replaced in outputs:
        o = _resolved(out)
        for iflag, inp in inputs:
            i = _resolved(inp)
            if o == i or (os.path.exists(str(out)) and os.path.samefile(str(out), str(inp))):
                raise InputError(f"{oflag} {out}: is the {iflag} input (an output never overwrites an input); "
                                 f"choose another name")
            if replaced and _inside(i, o):
                raise InputError(f"{oflag} {out}: contains the {iflag} input {inp}, which writing {oflag} would "
                                 f"delete; choose another directory")
            if _inside(o, i) and i.is_dir():
                raise InputError(f"{oflag} {out}: lies inside the {iflag} input directory {inp}; write it elsewhere")


def _check_directory(flag: str, path: Path, spec: OutputDirectory) -> None:
    if not path.exists():
        parent = next((q for q in path.parents if q.exists()), None)
        if parent is not None and not parent.is_dir():
            raise InputError(f"{flag} {path}: {parent} is a file, not a directory")
        return
    if not path.is_dir():
        raise InputError(_kind_clash(str(path), False, flag))
    names = sorted(p.name for p in path.iterdir())
    if not names:
        return
    if spec.signature not in names:
        raise InputError(f"{flag} {path}: a directory that is not empty and not a previous {spec.verb} output (it "
                         f"has no {spec.signature}); choose a new or empty directory")
    if spec.entries is not None:
        foreign = [n for n in names if not any(fnmatch.fnmatchcase(n, pat) for pat in spec.entries)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(f"{flag} {path}: holds {shown} besides a previous {spec.verb} output, which replacing "
                             f"it would delete; move them or choose a new directory")
