"""Errors a user can cause. The CLI prints them as one line (no traceback) and exits non-zero."""


class EmbergptError(Exception):
    """Base class for errors caused by input: a bad path, a bad flag value, a broken file."""


class CheckpointError(EmbergptError):
    """A checkpoint directory is missing files, corrupted, or does not match its config/metadata."""


class DataError(EmbergptError):
    """A text source cannot be read: missing file, bad URL, server errors, malformed data."""


class TokenizerError(EmbergptError):
    """A tokenizer file is invalid, or text cannot be encoded with it."""


class DeviceError(EmbergptError):
    """The requested device or dtype is not available on this machine."""


class InputFileError(EmbergptError, ValueError):
    """A file or a reply read from outside is not what it claims: not a regular file, too large, too deeply
    nested, not valid JSON, or not of the expected shape."""


class OutputPathError(EmbergptError, ValueError):
    """An output path names something a write must not replace: a FIFO, a device, a symlink, a directory."""


MAX_MESSAGE_CHARS = 1000


def one_line(message: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """`message` as what the CLI prints: one line (runs of whitespace, newlines included, become one space) of at
    most `limit` characters. A message quotes what it refuses, and that value may be an environment variable of
    100,000 characters: its middle is cut, so that the start (what went wrong) and the end (what to do) remain."""
    flat = " ".join(str(message).split())
    if len(flat) <= limit:
        return flat
    keep = (limit - 5) // 2
    return f"{flat[:keep]} ... {flat[len(flat) - keep:]}"
