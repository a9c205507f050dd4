"""The calculator tool: what a model writes between <|python_start|> and <|python_end|>, evaluated safely.

`evaluate(expression) -> str` walks the Python AST of the expression and accepts only numbers, `( )`, unary
`+ -` and the binary operators `+ - * / // %`. No `eval`, no names, no calls, no attribute access, no `**`.
Everything is bounded, so it needs no timer (it runs in the server's worker thread, where SIGALRM cannot):
at most MAX_CHARS characters, MAX_PARENS nested parentheses, MAX_DEPTH levels of AST nesting, and integers
below 10**MAX_INT_DIGITS in every operand and every intermediate result (one step is at most a 100-digit product).

The result is always a string; it never raises:
    an integer result      its decimal digits:                       123+456 -> "579", 7//2 -> "3", -7%3 -> "2"
    a float result (`/`,   Python's repr of the value rounded to     7/2 -> "3.5", 1/3 -> "0.333333",
    or a float operand)    FLOAT_DECIMALS decimal places             4/2 -> "2.0", 1e20/3 -> "3.333333333333333e+19"
    anything wrong         "error: " and what                        1/0 -> "error: division by zero"
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable

MAX_CHARS = 1000
MAX_PARENS = 32  # nested parentheses
MAX_DEPTH = 128  # nesting of the AST (parentheses, signs, precedence); a flat chain like 1+2+...+n does not nest
MAX_INT_DIGITS = 100
FLOAT_DECIMALS = 6
_INT_LIMIT = 10**MAX_INT_DIGITS

_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
_SYMBOLS = {ast.Pow: "**", ast.LShift: "<<", ast.RShift: ">>", ast.BitOr: "|", ast.BitAnd: "&", ast.BitXor: "^",
            ast.MatMult: "@", ast.Invert: "~", ast.Not: "not"}


class CalculatorError(ValueError):
    """What is wrong with an expression, in words a model (or a user) can read."""


def evaluate(expression: str) -> str:
    """The value of an arithmetic expression as text, or "error: ..." (never an exception). See the module."""
    try:
        return _format(_evaluate(expression))
    except CalculatorError as e:
        return f"error: {e}"
    except ZeroDivisionError:
        return "error: division by zero"
    except OverflowError:
        return "error: the number is too large"
    except RecursionError:  # a safety net: MAX_DEPTH keeps the walk far below Python's limit
        return "error: the expression is nested too deeply"


def _evaluate(expression: str) -> int | float:
    if not isinstance(expression, str):
        raise CalculatorError("the expression must be text")
    text = expression.strip()
    if not text:
        raise CalculatorError("empty expression")
    if len(text) > MAX_CHARS:
        raise CalculatorError(f"the expression is longer than {MAX_CHARS} characters")
    depth = 0
    for c in text:  # before parsing: the parser itself recurses on nesting
        depth += (c == "(") - (c == ")")
        if depth > MAX_PARENS:
            raise CalculatorError(f"more than {MAX_PARENS} nested parentheses")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise CalculatorError("not an arithmetic expression") from None
    return _walk(tree.body, 0)


def _walk(node: ast.AST, depth: int) -> int | float:
    if depth > MAX_DEPTH:
        raise CalculatorError(f"more than {MAX_DEPTH} levels of nesting")
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CalculatorError(f"only numbers are allowed, not {type(value).__name__}")
        return _checked(value)
    if isinstance(node, ast.BinOp):
        # a left-associative chain a+b-c+... is a deep left spine: walk it in a loop, recurse only on the right
        chain: list[ast.BinOp] = []
        while isinstance(node, ast.BinOp):
            chain.append(node)
            node = node.left
        value = _walk(node, depth + 1)
        for binop in reversed(chain):
            op = _BINARY.get(type(binop.op))
            if op is None:
                name = _SYMBOLS.get(type(binop.op), type(binop.op).__name__)
                raise CalculatorError(f"the operator {name} is not allowed")
            value = _checked(op(value, _walk(binop.right, depth + 1)))
        return value
    if isinstance(node, ast.UnaryOp):
        unary = _UNARY.get(type(node.op))
        if unary is None:
            raise CalculatorError(f"the operator {_SYMBOLS.get(type(node.op), type(node.op).__name__)} is not allowed")
        return _checked(unary(_walk(node.operand, depth + 1)))
    if isinstance(node, ast.Name):
        raise CalculatorError(f"names are not allowed ({node.id})")
    if isinstance(node, ast.Attribute):
        raise CalculatorError("attribute access is not allowed")
    if isinstance(node, ast.Call):
        raise CalculatorError("function calls are not allowed")
    raise CalculatorError(f"{type(node).__name__} is not allowed: only numbers, + - * / // % and ( )")


def _checked(value: int | float) -> int | float:
    if isinstance(value, int):
        if -_INT_LIMIT < value < _INT_LIMIT:
            return value
        raise CalculatorError(f"a number has more than {MAX_INT_DIGITS} digits")
    if not math.isfinite(value):
        raise CalculatorError("the result is not a finite number")
    return value


def _format(value: int | float) -> str:
    if isinstance(value, int):
        return str(value)
    return repr(round(value, FLOAT_DECIMALS) + 0.0)  # + 0.0: -0.0 prints as 0.0
