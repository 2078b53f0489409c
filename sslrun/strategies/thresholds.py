"""Confidence thresholds as a number or a schedule of the epoch (`0.9+0.02*epoch`).

The report raised its threshold by 0.02 per epoch; a schedule is a small arithmetic
expression in `epoch` (and `step`). It is read by a grammar of its own, never by Python:
a config string comes from anyone, and Python's parser plus `**` let `9**9**9` hang a
login node. The grammar is

    expr   := term (('+' | '-') term)*
    term   := factor (('*' factor) | ('/' number))*     # division by a non-zero number only
    factor := number | 'epoch' | 'step' | '-' factor | '(' expr ')'
            | ('min' | 'max') '(' expr (',' expr)+ ')'

with at most 200 characters, so evaluation is a few float operations that cannot raise.
Values above 1 are kept as written: no sample passes them, as in the report.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from sslrun.errors import UserError
from sslrun.text import bad_char, shown

MAX_CHARS = 200
_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][+-]?\d+)?|\.\d+(?:[eE][+-]?\d+)?)|([A-Za-z_]+)|(.))")
_NAMES = ("epoch", "step")
_FUNCS = {"min": min, "max": max}
_HINT = "expected a number or a schedule such as 0.9+0.02*epoch or min(0.99, 0.9+0.02*epoch)"

# A parsed expression is a tree of tuples: ("num", x) | ("var", name) | ("neg", e) | (op, a, b) | (fn, [args]).
Node = tuple


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[str] = []
        for match in _TOKEN.finditer(text):
            token = next(g for g in match.groups() if g is not None)
            if not token.isspace():
                self.tokens.append(token)
        self.pos = 0

    def fail(self, why: str) -> UserError:
        return UserError(f"threshold={self.text}: {why}; {_HINT}")

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if not token:
            raise self.fail(f"expected '{expected}' at the end" if expected else "unexpected end")
        if expected is not None and token != expected:
            raise self.fail(f"expected '{expected}' at '{token}'")
        self.pos += 1
        return token

    def parse(self) -> Node:
        node = self.expr()
        if self.peek():
            raise self.fail(f"unexpected '{self.peek()}'")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            node = (op, node, self.term())
        return node

    def term(self) -> Node:
        node = self.factor()
        while self.peek() in ("*", "/"):
            op = self.take()
            if op == "*":
                if self.peek() == "*":
                    raise self.fail("'**' is not allowed")
                node = ("*", node, self.factor())
            else:
                divisor = self.number(self.take())
                if divisor == 0:
                    raise self.fail("division by zero")
                node = ("*", node, ("num", 1.0 / divisor))
        return node

    def number(self, token: str) -> float:
        if not token or not (token[0].isdigit() or token[0] == "."):
            raise self.fail(f"expected a number, got '{token}'" if token else "expected a number at the end")
        try:
            value = float(token)
        except ValueError:
            raise self.fail(f"'{token}' is not a number") from None
        if not math.isfinite(value):
            raise self.fail(f"'{token}' is not a finite number")
        return value

    def factor(self) -> Node:
        token = self.take()
        if token == "-":
            return ("neg", self.factor())
        if token == "(":
            node = self.expr()
            self.take(")")
            return node
        if token in _NAMES:
            return ("var", token)
        if token in _FUNCS:
            self.take("(")
            args = [self.expr()]
            while self.peek() == ",":
                self.take()
                args.append(self.expr())
            self.take(")")
            if len(args) < 2:
                raise self.fail(f"{token}() needs two values or more")
            return (token, args)
        if token[0].isalpha() or token[0] == "_":
            raise self.fail(f"unknown name '{token}' (only epoch, step, min, max)")
        return ("num", self.number(token))


def _evaluate(node: Node, env: dict[str, float]) -> float:
    kind = node[0]
    if kind == "num":
        return node[1]
    if kind == "var":
        return env[node[1]]
    if kind == "neg":
        return -_evaluate(node[1], env)
    if kind in _FUNCS:
        return _FUNCS[kind](_evaluate(a, env) for a in node[1])
    a, b = _evaluate(node[1], env), _evaluate(node[2], env)
    return a + b if kind == "+" else a - b if kind == "-" else a * b


def parse_threshold(text: str) -> Callable[..., float]:
    """Return f(epoch, step=0) -> threshold; a UserError names the bad part of `threshold=`."""
    text = str(text).strip()
    bad = bad_char(text)
    if bad is not None:  # the message quotes the text: it must stay one line
        raise UserError(f"threshold: contains the control character '{shown(bad)}'; {_HINT}")
    if not text:
        raise UserError(f"threshold=: empty; {_HINT}")
    if len(text) > MAX_CHARS:
        raise UserError(f"threshold=: {len(text)} characters; expected at most {MAX_CHARS}")
    if text.count("(") > 50:
        raise UserError("threshold=: too deeply nested; expected at most 50 parentheses")
    tree = _Parser(text).parse()
    for epoch in (0.0, 1.0, 1000.0):
        value = _evaluate(tree, {"epoch": epoch, "step": epoch})
        if not math.isfinite(value):
            raise UserError(f"threshold={text}: not a finite number at epoch {epoch:g}; {_HINT}")

    def threshold(epoch: float, step: int = 0) -> float:
        return _evaluate(tree, {"epoch": float(epoch), "step": float(step)})

    return threshold


def first_epoch_above_one(text: str, last_epoch: float, epoch_steps: int = 1) -> int | None:
    """The first whole epoch in [0, last_epoch] where the schedule passes 1 (no sample can pass it
    from then on, so unlabeled data stops counting), or None; for a one-line warning at submit time.

    `step` is taken as epoch * epoch_steps. Epochs past 100000 are sampled at the last one only.
    """
    f = parse_threshold(text)
    last = max(0, int(math.floor(last_epoch)))
    epochs = list(range(min(last, 100_000) + 1))
    if last > 100_000:
        epochs.append(last)
    for epoch in epochs:
        if f(epoch, epoch * epoch_steps) > 1:
            return epoch
    return None
