"""Reading a file named by a user: only a regular file, and only up to a size cap.

A path may name a FIFO (open() blocks until a writer comes), a device such as /dev/zero (read() never ends) or a
directory. `read_regular_file` opens without blocking, checks with fstat that the opened thing is a regular file,
and reads at most `max_bytes + 1` bytes, so none of these can hang the program or fill its memory.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from embergpt.errors import EmbergptError, InputFileError

_KIND_NAMES = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def file_kind(mode: int) -> str:
    """'a regular file', 'a FIFO (named pipe)', ... for an st_mode."""
    return "a regular file" if stat.S_ISREG(mode) else _KIND_NAMES.get(stat.S_IFMT(mode), "not a regular file")


def open_regular_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int | None,
    what: str = "file",
    error: type[EmbergptError] = InputFileError,
) -> tuple[int, int]:
    """Open `path` for reading; returns (fd, size). Raises `error` (one line naming the file) when it is missing,
    not a regular file, or larger than `max_bytes` (None: no cap)."""
    p = os.fspath(path)
    try:
        # O_NONBLOCK: opening a FIFO that has no writer returns at once instead of waiting for one.
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise error(f"{what} {p!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise error(f"{what} {p!r} is a directory; pass a file") from None
    except OSError as e:
        raise error(f"cannot read {what} {p!r} ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {p!r} is {file_kind(st.st_mode)}, not a regular file; pass a file")
        if max_bytes is not None and st.st_size > max_bytes:
            raise error(
                f"{what} {p!r} is {st.st_size:,} bytes, over the limit of {max_bytes:,}; is it the right file?"
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd, st.st_size


def read_regular_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int,
    what: str = "file",
    error: type[EmbergptError] = InputFileError,
) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them; `error` otherwise (see
    `open_regular_file`). A file that grows past the cap while being read is refused too."""
    fd, _ = open_regular_file(path, max_bytes=max_bytes, what=what, error=error)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"cannot read {what} {os.fspath(path)!r} ({e.strerror})") from None
    if len(data) > max_bytes:
        raise error(f"{what} {os.fspath(path)!r} is over the limit of {max_bytes:,} bytes; is it the right file?")
    return data


def read_regular_text(
    path: str | os.PathLike[str],
    *,
    max_bytes: int,
    what: str = "file",
    error: type[EmbergptError] = InputFileError,
) -> str:
    """`read_regular_file` decoded as UTF-8; invalid UTF-8 is `error` too."""
    data = read_regular_file(path, max_bytes=max_bytes, what=what, error=error)
    return _utf8(data, f"{what} {os.fspath(path)!r}", error)


def _utf8(data: bytes | bytearray, label: str, error: type[EmbergptError]) -> str:
    """`data` decoded as UTF-8, or `error` naming `label` and the first bad byte."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{label} is not UTF-8 text (byte {e.start})") from None


def read_text_stream(
    stream: BinaryIO,
    *,
    max_bytes: int,
    what: str = "input",
    error: type[EmbergptError] = InputFileError,
) -> str:
    """At most `max_bytes` of UTF-8 text from a binary stream (stdin: a pipe, a terminal, /dev/zero redirected in).
    A stream that goes on past the cap is `error` after reading `max_bytes + 1` bytes, never the whole of it; so is
    text that is not UTF-8."""
    data = bytearray()
    while len(data) <= max_bytes:
        chunk = stream.read(min(1 << 20, max_bytes + 1 - len(data)))
        if not chunk:
            break
        data += chunk
    if len(data) > max_bytes:
        raise error(f"{what} is over the limit of {max_bytes:,} bytes; pass less text")
    return _utf8(data, what, error)


def read_text_line(
    stream: BinaryIO,
    *,
    max_bytes: int,
    what: str = "input line",
    error: type[EmbergptError] = InputFileError,
) -> str | None:
    """One line of UTF-8 text from a binary stream, without its newline; None at the end of the stream. A line
    longer than `max_bytes` (a pipe from /dev/zero has no newline at all) is `error` after reading `max_bytes + 1`
    bytes of it; so is a line that is not UTF-8."""
    data = stream.readline(max_bytes + 1)
    if not data:
        return None
    if len(data) > max_bytes and not data.endswith(b"\n"):
        raise error(f"{what} is over the limit of {max_bytes:,} bytes; pass shorter lines")
    return _utf8(data, what, error).removesuffix("\n").removesuffix("\r")
