"""The calculator tool against Python's own arithmetic, and against hostile input."""

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embergpt.chat.calculator import FLOAT_DECIMALS, MAX_CHARS, MAX_INT_DIGITS, MAX_PARENS, evaluate

OPERATORS = ["+", "-", "*", "/", "//", "%"]

numbers = st.one_of(
    st.integers(min_value=0, max_value=10**6).map(str),
    st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False).map(lambda f: f"{f:.3f}"),
)


def _expressions(children):
    return st.one_of(
        st.tuples(children, st.sampled_from(OPERATORS), children).map(lambda t: f"({t[0]} {t[1]} {t[2]})"),
        children.map(lambda e: f"-{e}"),
        st.tuples(children, st.sampled_from(OPERATORS), children).map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
    )


expressions = st.recursive(numbers, _expressions, max_leaves=12)


@settings(max_examples=400, deadline=None)
@given(expressions)
def test_agrees_with_python_arithmetic(expression):
    try:
        expected = eval(expression, {"__builtins__": {}}, {})  # the reference: Python itself, on our own strings
    except ZeroDivisionError:
        assert evaluate(expression) == "error: division by zero"
        return
    got = evaluate(expression)
    if isinstance(expected, int):
        assert got == str(expected)
    else:
        assert "." in got or "e" in got or "inf" in got  # a float prints as one
        assert float(got) == round(expected, FLOAT_DECIMALS)


@pytest.mark.parametrize(
    "expression",
    [
        "__import__('os').system('true')",
        "(1).real",
        "().__class__.__bases__[0].__subclasses__()",
        "x + 1",
        "print(1)",
        "lambda: 1",
        "'a' * 10",
        "[1, 2]",
        "1 if 1 else 2",
        "2 ** 10",
        "1 << 5",
        "~1",
        "not 1",
        "True + 1",
        "1j * 2",
        "1; 2",
        "a = 1",
        "",
        "   ",
        "1 +",
        "1e308 * 10",
        "1 / 0",
        "1 % 0",
        "1.5 // 0",
    ],
)
def test_hostile_and_malformed_expressions_are_error_texts(expression):
    assert evaluate(expression).startswith("error: ")


def test_sizes_are_bounded_and_fast():
    nines = "9" * 40
    cases = {
        "9" * 10_000: "longer than",  # a 10,000-digit number
        "(" * (MAX_PARENS + 1) + "1" + ")" * (MAX_PARENS + 1): "nested parentheses",
        "-" * (MAX_CHARS - 1) + "1": "nesting",
        "(" * 500 + "1" + ")" * 500: "longer than",
        f"{nines}*{nines}*{nines}": f"more than {MAX_INT_DIGITS} digits",  # each step is cheap; the result is not
        "10 ** 10 ** 10": "not allowed",  # a huge power
    }
    for expression, reason in cases.items():
        start = time.perf_counter()
        result = evaluate(expression)
        assert result.startswith("error: ") and reason in result, (expression[:30], result)
        assert time.perf_counter() - start < 0.5


def test_long_flat_chains_and_big_but_allowed_numbers():
    terms = list(range(1, 240))
    assert evaluate("+".join(map(str, terms))) == str(sum(terms))  # a 238-deep left spine: no recursion limit
    nines = "9" * 40
    assert evaluate(f"{nines}*{nines}") == str(int(nines) ** 2)


def test_works_in_a_worker_thread():
    results = []
    thread = threading.Thread(target=lambda: results.append(evaluate("(123 + 456) * 2")))
    thread.start()
    thread.join()
    assert results == ["1158"]
