"""Write a file so that readers see either the old contents or the new, never a half-written file.

A write replaces only a regular file, or creates a new one: a path naming a FIFO, a device node, a socket, a
directory or a symlink is refused with OutputPathError (a rename over /dev/full or over a symlink would replace
it, which is never what a user asking for an output file meant).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from embergpt.errors import OutputPathError
from embergpt.input_files import file_kind


def check_output_path(path: str | os.PathLike[str], what: str = "output", directory: bool = False) -> Path:
    """`path` when a write may create or replace it: nothing there, or a regular file (a directory when
    `directory`); OutputPathError (one line) for a symlink, FIFO, device, socket, or the wrong one of file and
    directory."""
    path = Path(path)
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    except OSError as e:
        raise OutputPathError(f"{what} {str(path)!r}: cannot be checked ({e.strerror})") from None
    if stat.S_ISLNK(mode) and directory and path.is_dir():
        return path  # a link to a directory (runs -> /data/runs): files are created inside it, nothing replaced
    if stat.S_ISLNK(mode):
        raise OutputPathError(f"{what} {str(path)!r} is a symlink; pass the real path, or remove the link first")
    if stat.S_ISDIR(mode) if directory else stat.S_ISREG(mode):
        return path
    wanted = "a directory" if directory else "a regular file"
    raise OutputPathError(
        f"{what} {str(path)!r} is {file_kind(mode)}, not {wanted}; only {wanted} is replaced: pass another path"
    )


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path` (same filesystem, so the
    rename is atomic). On any failure the temporary file is removed and `path` is left as it was. A `path`
    that exists and is not a regular file is refused (OutputPathError), see `check_output_path`."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():  # checked first: the error names the user's path, not the temp file
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    check_output_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    write_atomic(path, lambda f: f.write(data))
