"""Confidence thresholds as a number or a schedule of the epoch (`0.9+0.02*epoch`).

The report raised its threshold by 0.02 per epoch; a schedule is a small arithmetic
expression in `epoch` (and `step`), parsed once with `ast` so that a config string can never
run code. Values above 1 are kept as written: no sample passes them, as in the report.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable

from sslrun.errors import UserError

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.Pow: operator.pow}
_FUNCS = {"min": min, "max": max}
_NAMES = ("epoch", "step")


def parse_threshold(text: str) -> Callable[[float, int], float]:
    """Return f(epoch, step) -> threshold; a UserError names the bad part of `threshold=`."""
    try:
        tree = ast.parse(str(text).strip(), mode="eval")
    except SyntaxError:
        raise UserError(f"threshold={text}: expected a number or an expression of epoch such as 0.9+0.02*epoch") from None

    def check(node: ast.AST) -> None:
        if isinstance(node, ast.Expression):
            check(node.body)
        elif isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            pass
        elif isinstance(node, ast.Name) and node.id in _NAMES:
            pass
        elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            check(node.left)
            check(node.right)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            check(node.operand)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _FUNCS and not node.keywords:
            for arg in node.args:
                check(arg)
        else:
            raise UserError(f"threshold={text}: only numbers, epoch, step, + - * / **, min() and max() are allowed")

    check(tree)

    def evaluate(node: ast.AST, env: dict[str, float]) -> float:
        if isinstance(node, ast.Expression):
            return evaluate(node.body, env)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return env[node.id]
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](evaluate(node.left, env), evaluate(node.right, env))
        if isinstance(node, ast.UnaryOp):
            return -evaluate(node.operand, env)
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return float(_FUNCS[node.func.id](*(evaluate(a, env) for a in node.args)))

    def threshold(epoch: float, step: int = 0) -> float:
        return evaluate(tree, {"epoch": float(epoch), "step": float(step)})

    return threshold
