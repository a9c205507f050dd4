"""A directory named by an environment variable (EMBERGPT_CACHE, TORCHINDUCTOR_CACHE_DIR): checked once, here,
before anything is written under it.

The value comes from outside: it may name a regular file (every later mkdir fails with "Not a directory", far from
the variable that caused it), be megabytes long, hold a NUL byte (which os functions refuse with a bare
ValueError), or be relative (then it would move with the working directory between two runs). `directory_from_env`
turns each of these into one DataError naming the variable and what to set it to; a relative path is made absolute
against the current directory, once. Whether the directory can be written is left to the write: a read-only cache
is survivable (the token cache then only warns), a wrong kind of path is a mistake.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from embergpt.errors import DataError
from embergpt.input_files import file_kind

MAX_PATH_CHARS = 4096  # PATH_MAX on Linux: a longer path cannot be opened anyway


def directory_from_env(name: str, default: Path) -> Path:
    """The directory in environment variable `name` (`default` when unset or blank), made absolute. DataError (one
    line) when the value is too long, holds a NUL or control character, or names something that is not a
    directory (a file, a FIFO, a device); a path that does not exist yet is fine (it is created on first write)."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    shown = repr(raw[:60]) + ("..." if len(raw) > 60 else "")
    advice = f"set {name} to a directory path, or unset it"
    if len(raw) > MAX_PATH_CHARS:
        raise DataError(f"{name} is {len(raw):,} characters long, over the limit of {MAX_PATH_CHARS}; {advice}")
    if any(ord(c) < 32 for c in raw):
        raise DataError(f"{name}={shown} holds a control character; {advice}")
    path = Path(raw).expanduser().absolute()
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return path
    except OSError as e:  # e.g. a component of the path is a file (ENOTDIR), or the name is too long
        raise DataError(f"{name}={shown} cannot be used as a directory ({e.strerror}); {advice}") from None
    if not stat.S_ISDIR(mode):
        raise DataError(f"{name}={shown} is {file_kind(mode)}, not a directory; {advice}")
    return path


def embergpt_cache() -> Path:
    """The root of embergpt's caches (downloads, tokens, compiled graphs): `$EMBERGPT_CACHE`, checked as above, else
    `~/.cache/embergpt`."""
    return directory_from_env("EMBERGPT_CACHE", Path.home() / ".cache" / "embergpt")
