"""Write a file so that readers see either the old contents or the new, never a half-written file."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> None:
    """Call `write(f)` on a temporary file beside `path`, then rename it over `path` (same filesystem, so the
    rename is atomic). On any failure the temporary file is removed and `path` is left as it was."""
    path = Path(path)
    if path.is_dir():  # checked first, so that the error names the user's path, not the temporary file
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
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
