"""``calculator``: exact arithmetic for the policy, evaluated on the host without ``eval``.

Supported: int and float literals, ``+ - * / // % **``, unary ``+``/``-`` and parentheses.
Anything else (names, calls, attributes, subscripts, strings, comparisons, bit operations ...)
is refused with an error that says what was found.

The expression is model-written, so it is hostile ground: it must not hang or exhaust memory.
Hence the bounds, all checked *before* computing: at most :data:`MAX_CHARS` characters (which also
bounds the nesting depth, as each level costs a character), and no integer beyond
:data:`MAX_INT_BITS` bits (``9**9**9**9`` is refused at its innermost power, without computing
it). Floats that overflow or leave the reals (``1e308*1e308``, ``(-8)**0.5``) are errors, not
``inf``/``nan``/complex answers.

Results: integers are exact; ``/`` gives an int when the division is exact, else a float; floats
are shown with 12 significant digits (``0.1+0.2`` -> ``0.3``), so float noise does not leak into
answers.
"""

from __future__ import annotations

import ast
import math
import operator

from tools.registry import register

MAX_CHARS = 200
#: About 1,200 decimal digits: more than any answer needs, and cheap to compute and print.
MAX_INT_BITS = 4096

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
#: What a refused node is, in the error message.
_KINDS = {
    ast.Name: "names", ast.Call: "function calls", ast.Attribute: "attributes",
    ast.Subscript: "subscripts", ast.Compare: "comparisons", ast.BoolOp: "and/or",
    ast.Lambda: "lambdas", ast.IfExp: "conditional expressions", ast.Tuple: "tuples",
    ast.List: "lists", ast.Dict: "dicts", ast.Set: "sets", ast.JoinedStr: "f-strings",
}


class CalculatorError(ValueError):
    """The expression is not supported arithmetic, or its value is out of bounds."""


def _too_big() -> CalculatorError:
    return CalculatorError(f"result too large (more than {MAX_INT_BITS} bits, about 1200 digits)")


def _power(base: float, exponent: float) -> int | float:
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
        # Bound the result's size before computing it: bits(base ** e) <= bits(base) * e.
        if abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
            raise _too_big()
        if abs(base) <= 1:  # 0, 1, -1: any exponent, no work
            return (1 if exponent % 2 == 0 else -1) if base == -1 else base
    result = base**exponent
    if isinstance(result, complex):
        raise CalculatorError("the result is not a real number (a negative base to a fractional power)")
    return result


def _binary(op: type, left: float, right: float) -> int | float:
    if op is ast.Pow:
        return _power(left, right)
    if (op is ast.Mult and isinstance(left, int) and isinstance(right, int)
            and left.bit_length() + right.bit_length() > MAX_INT_BITS + 1):
        raise _too_big()
    if op is ast.Div and isinstance(left, int) and isinstance(right, int) and right and left % right == 0:
        return left // right  # exact: stay an int (no float rounding of large quotients)
    return _BINARY[op](left, right)


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant):
        if isinstance(node.value, bool) or not isinstance(node.value, (int, float)):
            raise CalculatorError(f"only numbers are supported, got {node.value!r}")
        if isinstance(node.value, int) and node.value.bit_length() > MAX_INT_BITS:
            raise _too_big()
        return node.value
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        try:
            result = _binary(type(node.op), left, right)
        except ZeroDivisionError:
            raise CalculatorError("division by zero") from None
        except OverflowError:
            raise CalculatorError("result too large for a float") from None
        if isinstance(result, int) and result.bit_length() > MAX_INT_BITS:
            raise _too_big()
        if isinstance(result, float) and not math.isfinite(result):
            raise CalculatorError("result too large for a float (overflow)")
        return result
    kind = _KINDS.get(type(node))
    if kind is None and isinstance(node, (ast.BinOp, ast.UnaryOp)):
        kind = f"the operator {type(node.op).__name__}"
    raise CalculatorError(
        f"{kind or type(node).__name__} not supported; use numbers, + - * / // % ** and parentheses"
    )


def evaluate(expression: str) -> int | float:
    """The value of an arithmetic ``expression`` (see the module docstring); raises
    :class:`CalculatorError`."""
    if not isinstance(expression, str):
        raise CalculatorError(f"the expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_CHARS:
        raise CalculatorError(f"expression too long ({len(expression)} characters, at most {MAX_CHARS})")
    if not expression.strip():
        raise CalculatorError("empty expression")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except (SyntaxError, ValueError) as e:
        raise CalculatorError(f"not a valid expression: {e.msg if isinstance(e, SyntaxError) else e}") from None
    except (RecursionError, MemoryError):
        raise CalculatorError("expression nested too deeply") from None
    try:
        return _eval(tree)
    except RecursionError:
        raise CalculatorError("expression nested too deeply") from None


def format_number(value: float) -> str:
    return str(value) if isinstance(value, int) else format(value, ".12g")


@register("calculator")
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return its value.

    Supports numbers, + - * / // % ** and parentheses; no variables or functions.

    Args:
        expression: The arithmetic expression, e.g. "(3 + 4) * 12 / 7".
    """
    return format_number(evaluate(expression))
