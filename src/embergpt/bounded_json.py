"""JSON from outside (a file, a line of a log, a server's reply), bounded before it is parsed and checked after.

    loads(text, what="metadata.json")              size and nesting depth checked first, then json.loads
    read_json_file(path, max_bytes=..., what=...)  only a regular file, only up to max_bytes, then `loads`
    expect_object(value, what, required={...})     a dict whose named keys have the named types

Every failure is one `InputFileError` line (or the `error` class the caller passes) that names what was read and
what to do, never a RecursionError, an AttributeError on a field of the wrong type, or a traceback.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from embergpt.errors import EmbergptError, InputFileError
from embergpt.input_files import read_regular_file

DEFAULT_MAX_DEPTH = 32  # every file embergpt writes nests at most 4 deep
DEFAULT_MAX_BYTES = 16 << 20
# A JSON string, unrolled so that a long string is matched without backtracking.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")


def nesting_depth(data: bytes) -> int:
    """The deepest nesting of [ and { in JSON `data`, brackets inside strings ignored; computed without
    recursion, so that a million '[' costs a scan, not a stack."""
    if data.count(b"[") + data.count(b"{") == 0:
        return 0
    depth = deepest = 0
    for m in _BRACKETS.finditer(_STRING.sub(b'""', data)):
        if m.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON (use a finite number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf
        raise ValueError(f"{text[:20]} is too large for a float")
    return value


def loads(
    text: str | bytes,
    *,
    what: str = "JSON",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    advice: str = "",
    error: type[EmbergptError] = InputFileError,
) -> Any:
    """Parse `text` as JSON after checking its size (UTF-8 bytes) and nesting depth; NaN and Infinity are refused
    (they are not JSON). Raises `error`: "<what>: <problem>[; <advice>]"."""
    tail = f"; {advice}" if advice else ""
    data = text.encode("utf-8", errors="surrogatepass") if isinstance(text, str) else bytes(text)
    if len(data) > max_bytes:
        raise error(f"{what}: {len(data):,} bytes, over the limit of {max_bytes:,}{tail}")
    depth = nesting_depth(data)
    if depth > max_depth:
        raise error(f"{what}: nested {depth} levels deep, over the limit of {max_depth}{tail}")
    try:
        return json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise error(f"{what}: not valid JSON ({reason}){tail}") from None


def read_json_file(
    path: str | os.PathLike[str],
    *,
    what: str = "JSON file",
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
    advice: str = "",
    error: type[EmbergptError] = InputFileError,
) -> Any:
    """The JSON in the regular file at `path` (see `embergpt.input_files.read_regular_file`), bounded as `loads`.
    Errors read "<what> '<path>' ...", e.g. "checkpoint config.json '/runs/x/final/config.json' ..."."""
    data = read_regular_file(path, max_bytes=max_bytes, what=what, error=error)
    name = f"{what} {os.fspath(path)!r}"
    return loads(data, what=name, max_bytes=max_bytes, max_depth=max_depth, advice=advice, error=error)


# ---- schema helpers: check a parsed value's shape before any field is used

_TYPE_NAMES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def type_name(types: type | tuple[type, ...]) -> str:
    """'an integer or null' for (int, type(None))."""
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in types)


def is_instance(value: Any, types: type | tuple[type, ...]) -> bool:
    """isinstance, except that bool is not an int, an int is a float, and a float must be finite."""
    types = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):
        return bool in types
    if isinstance(value, float):
        return float in types and math.isfinite(value)
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def expect_type(
    value: Any, types: type | tuple[type, ...], what: str, error: type[EmbergptError] = InputFileError
) -> Any:
    """`value`, when `is_instance(value, types)`; `error` naming `what` and the expected type otherwise."""
    if not is_instance(value, types):
        got = type_name(type(value)) if type(value) in _TYPE_NAMES else type(value).__name__
        if isinstance(value, float):
            got = f"the non-finite number {value}"
        raise error(f"{what} must be {type_name(types)}, got {got}")
    return value


def expect_object(
    value: Any,
    what: str,
    required: Mapping[str, type | tuple[type, ...]] | None = None,
    optional: Mapping[str, type | tuple[type, ...]] | None = None,
    error: type[EmbergptError] = InputFileError,
    allow_unknown: bool = True,
) -> dict[str, Any]:
    """`value` as a dict whose `required` keys are present and whose `required`/`optional` keys have their types.
    Raises `error` naming `what` and the first key that does not fit."""
    expect_type(value, dict, what, error)
    required, optional = required or {}, optional or {}
    for key, types in required.items():
        if key not in value:
            raise error(f"{what} lacks the key {key!r}")
        expect_type(value[key], types, f"{what}: {key!r}", error)
    for key, types in optional.items():
        if key in value:
            expect_type(value[key], types, f"{what}: {key!r}", error)
    if not allow_unknown:
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise error(f"{what} has unknown key(s) {', '.join(map(repr, unknown[:5]))}")
    return value
