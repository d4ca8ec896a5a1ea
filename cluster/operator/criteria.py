"""`spec.criteriaExpression` of an adx-mon resource: whether this operator handles the resource.

adx-mon's operator evaluates the expression with CEL (cel-go) against its cluster labels (its
`--cluster-labels key=value` flags), each declared as a string variable: empty means handle it; an
expression that is true, handle it; false, skip it; one that does not parse or type-check (an
undeclared label, `region == true`) is an error that blocks the resource until it is changed.

This module implements the part of CEL that such expressions use, with CEL's meaning, and says
so when an expression goes beyond it (`CriteriaUnsupported`) instead of guessing:

- string literals in single or double quotes (escaped backslash, quotes, n, t, r), `true`, `false`;
- label names (identifiers), each a string; a name that is not a label is CEL's
  "undeclared reference" error;
- `==` and `!=` between two strings or two booleans, `&&`, `||`, `!`, parentheses;
- `x in ['a', 'b']` (a list literal of strings);
- `x.startsWith('a')`, `x.endsWith('a')`, `x.contains('a')`.

Not implemented (CriteriaUnsupported): numbers, `<`/`>`, arithmetic, `? :`, `matches` (RE2),
macros (`has`, `exists`, ...), maps, raw and triple-quoted strings, `null`, bytes.

Pure: no I/O. Labels are case-sensitive, as in adx-mon's code.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<op>==|!=|&&|\|\||[!()\[\],.])
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<unsupported>\d[\w.]*|<=|>=|[<>+\-*/%?:{}])
  | (?P<other>\S)
""", re.X)
_ESCAPES = {"\\": "\\", "'": "'", '"': '"', "n": "\n", "t": "\t", "r": "\r"}
_METHODS = ("startsWith", "endsWith", "contains")
_RESERVED = {"null", "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let", "loop",
             "package", "namespace", "return", "var", "void", "while"}


class CriteriaError(ValueError):
    """The expression is not valid CEL for adx-mon's labels either: a parse or type error."""

    reason = "CriteriaExpressionError"


class CriteriaUnsupported(CriteriaError):
    """The expression may be valid CEL, but uses a part of CEL this operator does not implement."""

    reason = "CriteriaExpressionUnsupported"


@dataclass(frozen=True)
class _Tok:
    kind: str
    text: str
    pos: int


def _tokens(expression: str) -> list[_Tok]:
    out = []
    for m in _TOKEN.finditer(expression):
        kind = m.lastgroup or "other"
        if kind == "space":
            continue
        text = m.group()
        if kind == "other":
            raise CriteriaError(f"syntax error at {m.start()}: unexpected {text!r}")
        if kind == "unsupported":
            raise CriteriaUnsupported(f"{text!r} at {m.start()}: not in the part of CEL this operator implements "
                                      "(strings, labels, ==, !=, &&, ||, !, in [...], startsWith, endsWith, contains)")
        if kind == "string" and expression.startswith(('"""', "'''"), m.start()):
            raise CriteriaUnsupported(f"a triple-quoted string at {m.start()}: not implemented")
        if kind == "ident" and text in ("r", "R", "b", "B") and expression[m.end():m.end() + 1] in ("'", '"'):
            raise CriteriaUnsupported(f"a raw or bytes literal at {m.start()}: not implemented")
        out.append(_Tok(kind, text, m.start()))
    return out


def _unquote(text: str, pos: int) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        c = body[i]
        if c == "\\":
            nxt = body[i + 1]
            if nxt not in _ESCAPES:
                raise CriteriaUnsupported(f"the escape \\{nxt} at {pos + i + 1}: not implemented")
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


# The tree: ("str", value) | ("bool", value) | ("label", name) | ("list", [items]) | ("not", x) |
# ("and"/"or"/"=="/"!="/"in", a, b) | ("call", method, target, argument). Each node is checked to a
# type ("string", "bool", "list") before anything is evaluated, as CEL does.
Node = tuple[Any, ...]


class _Parser:
    def __init__(self, expression: str) -> None:
        self.toks = _tokens(expression)
        self.i = 0
        self.end = len(expression)

    def peek(self) -> _Tok | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, text: str | None = None) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise CriteriaError(f"unexpected end of expression at {self.end}"
                                + (f", expected {text!r}" if text else ""))
        if text is not None and tok.text != text:
            raise CriteriaError(f"syntax error at {tok.pos}: expected {text!r}, found {tok.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.toks:
            raise CriteriaError("empty expression")
        node = self.or_()
        tok = self.peek()
        if tok is not None:
            raise CriteriaError(f"syntax error at {tok.pos}: unexpected {tok.text!r}")
        return node

    def or_(self) -> Node:
        node = self.and_()
        while (tok := self.peek()) is not None and tok.text == "||":
            self.take()
            node = ("or", node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.relation()
        while (tok := self.peek()) is not None and tok.text == "&&":
            self.take()
            node = ("and", node, self.relation())
        return node

    def relation(self) -> Node:
        node = self.unary()
        while (tok := self.peek()) is not None and tok.text in ("==", "!=", "in"):
            self.take()
            node = (tok.text, node, self.unary())
        return node

    def unary(self) -> Node:
        tok = self.peek()
        if tok is not None and tok.text == "!":
            self.take()
            return ("not", self.unary())
        return self.member()

    def member(self) -> Node:
        node = self.primary()
        while (tok := self.peek()) is not None and tok.text == ".":
            self.take()
            name = self.take()
            if name.kind != "ident":
                raise CriteriaError(f"syntax error at {name.pos}: expected a name after '.'")
            following = self.peek()
            if name.text not in _METHODS or following is None or following.text != "(":
                raise CriteriaUnsupported(f".{name.text} at {name.pos}: only .startsWith(), .endsWith() and "
                                          ".contains() are implemented")
            self.take("(")
            argument = self.or_()
            self.take(")")
            node = ("call", name.text, node, argument)
        return node

    def primary(self) -> Node:
        tok = self.take()
        if tok.kind == "string":
            return ("str", _unquote(tok.text, tok.pos))
        if tok.text == "(":
            node = self.or_()
            self.take(")")
            return node
        if tok.text == "[":
            items: list[Node] = []
            while (nxt := self.peek()) is not None and nxt.text != "]":
                items.append(self.or_())
                if (sep := self.peek()) is not None and sep.text == ",":
                    self.take()
                else:
                    break
            self.take("]")
            return ("list", items)
        if tok.kind == "ident":
            if tok.text in ("true", "false"):
                return ("bool", tok.text == "true")
            if tok.text == "in":
                raise CriteriaError(f"syntax error at {tok.pos}: unexpected 'in'")
            if tok.text in _RESERVED:
                raise CriteriaUnsupported(f"{tok.text!r} at {tok.pos}: not implemented")
            following = self.peek()
            if following is not None and following.text == "(":
                raise CriteriaUnsupported(f"the function {tok.text}() at {tok.pos}: not implemented")
            return ("label", tok.text)
        raise CriteriaError(f"syntax error at {tok.pos}: unexpected {tok.text!r}")


def _check(node: Node, labels: Mapping[str, str]) -> str:
    """The node's type, or CriteriaError: CEL's type check, over labels declared as strings."""
    op = node[0]
    if op == "str":
        return "string"
    if op == "bool":
        return "bool"
    if op == "label":
        if node[1] not in labels:
            raise CriteriaError(f"undeclared reference to '{node[1]}' (the operator's cluster labels: "
                                f"{', '.join(sorted(labels)) or 'none'})")
        return "string"
    if op == "list":
        for item in node[1]:
            if _check(item, labels) != "string":
                raise CriteriaUnsupported("a list of something else than strings: not implemented")
        return "list"
    if op == "not":
        if _check(node[1], labels) != "bool":
            raise CriteriaError("found no matching overload for '!_' applied to a non-bool")
        return "bool"
    if op in ("and", "or"):
        if _check(node[1], labels) != "bool" or _check(node[2], labels) != "bool":
            raise CriteriaError(f"found no matching overload for '{'&&' if op == 'and' else '||'}' applied to "
                                "a non-bool")
        return "bool"
    if op in ("==", "!="):
        left, right = _check(node[1], labels), _check(node[2], labels)
        if left == "list" or right == "list":
            raise CriteriaUnsupported("comparing lists: not implemented")
        if left != right:
            raise CriteriaError(f"found no matching overload for '_{op}_' applied to '({left}, {right})'")
        return "bool"
    if op == "in":
        left, right = _check(node[1], labels), _check(node[2], labels)
        if right != "list":
            raise CriteriaError(f"found no matching overload for '@in' applied to '({left}, {right})'")
        if left != "string":
            raise CriteriaError(f"found no matching overload for '@in' applied to '({left}, list(string))'")
        return "bool"
    if op == "call":
        target, argument = _check(node[2], labels), _check(node[3], labels)
        if target != "string" or argument != "string":
            raise CriteriaError(f"found no matching overload for '{node[1]}' applied to '{target}.({argument})'")
        return "bool"
    raise AssertionError(node)


def _eval(node: Node, labels: Mapping[str, str]) -> Any:
    op = node[0]
    if op in ("str", "bool"):
        return node[1]
    if op == "label":
        return labels[node[1]]
    if op == "list":
        return [_eval(item, labels) for item in node[1]]
    if op == "not":
        return not _eval(node[1], labels)
    if op == "and":
        return _eval(node[1], labels) and _eval(node[2], labels)
    if op == "or":
        return _eval(node[1], labels) or _eval(node[2], labels)
    if op == "==":
        return _eval(node[1], labels) == _eval(node[2], labels)
    if op == "!=":
        return _eval(node[1], labels) != _eval(node[2], labels)
    if op == "in":
        return _eval(node[1], labels) in _eval(node[2], labels)
    target, argument = _eval(node[2], labels), _eval(node[3], labels)
    return {"startsWith": target.startswith, "endsWith": target.endswith,
            "contains": target.__contains__}[node[1]](argument)


def evaluate(expression: str, labels: Mapping[str, str]) -> bool:
    """adx-mon's `EvaluateCriteriaExpression`: True for an empty expression; the expression's value
    otherwise. CriteriaError (parse or type error: adx-mon's `CriteriaExpressionError`) or its
    subclass CriteriaUnsupported (beyond this implementation) when it cannot say."""
    if expression == "":
        return True
    tree = _Parser(expression).parse()
    if _check(tree, labels) != "bool":
        raise CriteriaError("the expression's value is not a bool")
    return bool(_eval(tree, labels))


def parse_labels(items: list[str]) -> dict[str, str]:
    """`--cluster-labels` values (`key=value`, repeated or comma-separated, as adx-mon's operator
    takes them), spaces around key and value trimmed. ValueError for one without `=` or a key."""
    out: dict[str, str] = {}
    for item in items:
        for label in item.split(","):
            key, eq, value = label.partition("=")
            if not eq:
                raise ValueError(f"cluster label {label!r}: expected key=value")
            if not key.strip():
                raise ValueError(f"cluster label {label!r}: the key is empty")
            out[key.strip()] = value.strip()
    return out
