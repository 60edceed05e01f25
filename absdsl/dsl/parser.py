"""Parse domain files into :mod:`absdsl.dsl.ast` trees. User text is parsed, never evaluated."""

from __future__ import annotations

import collections
import dataclasses
import functools
import pickle
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark import Token, Transformer, v_args

from absdsl.dsl import ast
from absdsl.errors import DSLError

_KEYWORD_NAMES = {
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "SEMICOLON": "';'",
    "COLON": "':'", "COMMA": "','", "EQUAL": "'='", "NAME": "a name", "NUMBER": "a number",
    "STRING": "a string", "CMP": "a comparison", "PLUS": "'+'", "MINUS": "'-'", "STAR": "'*'",
    "SLASH": "'/'", "AT": "'@'", "VBAR": "'|'", "QMARK": "'?'", "DOT": "'.'",
}


@functools.lru_cache(maxsize=1)
def _parser() -> lark.Lark:
    grammar = resources.files("absdsl.dsl").joinpath("grammar.lark").read_text()
    return lark.Lark(grammar, parser="lalr", propagate_positions=True, maybe_placeholders=True)


def _pos(meta_or_token) -> ast.Pos:
    return ast.Pos(getattr(meta_or_token, "line", 0) or 0, getattr(meta_or_token, "column", 0) or 0)


def _binary(op: str) -> Callable[[Any, Any, list[Any]], ast.BinOp]:
    """A transformer callback for one binary operator (the grammar has one rule per operator)."""
    def build(self: Any, meta: Any, children: list[Any]) -> ast.BinOp:
        return ast.BinOp(op, children[0], children[1], _pos(meta))
    return build


@v_args(meta=True)
class _ToAst(Transformer):
    """lark tree -> dataclasses; every node keeps the position of its first token."""

    def number(self, meta, children):
        tok = children[0]
        return ast.Num(float(tok), _pos(tok))

    def name(self, meta, children):
        tok = children[0]
        return ast.Name(str(tok), _pos(tok))

    def attr(self, meta, children):
        return ast.Attr(str(children[0]), str(children[1]), _pos(children[0]))

    def call(self, meta, children):
        func = children[0]
        args = tuple(c for c in children[1:] if c is not None)
        return ast.Call(str(func), args, _pos(func))

    def absval(self, meta, children):
        return ast.Abs(children[0], _pos(meta))

    def neg(self, meta, children):
        return ast.Neg(children[0], _pos(meta))

    add = _binary("+")
    sub = _binary("-")
    mul = _binary("*")
    div = _binary("/")
    matmul = _binary("@")

    def compare(self, meta, children):
        left, op, right = children
        return ast.Compare(str(op), left, right, _pos(meta))

    def or_(self, meta, children):
        return children[0] if len(children) == 1 else ast.BoolOp("or", tuple(children), _pos(meta))

    def and_(self, meta, children):
        if len(children) == 1:
            return children[0]
        return ast.BoolOp("and", tuple(children), _pos(meta))

    def not_(self, meta, children):
        return ast.BoolOp("not", (children[0],), _pos(meta))

    def ternary(self, meta, children):
        return ast.Ternary(children[0], children[1], children[2], _pos(meta))

    def assign(self, meta, children):
        *targets, value = children
        return ast.Assign(tuple(str(t) for t in targets), value, _pos(meta))

    def when_branch(self, meta, children):
        return ast.Branch(children[0], tuple(children[1:]), _pos(meta))

    def else_branch(self, meta, children):
        return ast.Branch(None, tuple(children), _pos(meta))

    def guarded(self, meta, children):
        return ast.Guarded(tuple(children), _pos(meta))

    def relax_case(self, meta, children):
        return ast.RelaxCase(children[0], children[1], children[2], _pos(meta))

    def relax_else(self, meta, children):
        return ast.RelaxCase(None, children[0], children[1], _pos(meta))

    def neg_number(self, meta, children):
        tok = children[0]
        return ast.Num(-float(tok), _pos(meta))

    def relax_param(self, meta, children):
        name, lo, hi, init = children
        return ast.RelaxParam(str(name), lo.value, hi.value, init, _pos(meta))

    def relax(self, meta, children):
        names = [c for c in children if isinstance(c, Token)]
        cases = tuple(c for c in children if isinstance(c, ast.RelaxCase))
        params = tuple(c for c in children if isinstance(c, ast.RelaxParam))
        *ops, var, lower, upper = (str(n) for n in names)
        return ast.Relax(tuple(ops), var, lower, upper, cases, _pos(meta), params=params)

    def relax2(self, meta, children):
        names = [str(c) for c in children if isinstance(c, Token)]
        cases = tuple(c for c in children if isinstance(c, ast.RelaxCase))
        *ops, x, y, lx, ux, ly, uy = names
        return ast.Relax(tuple(ops), x, lx, ux, cases, _pos(meta), var2=y, lower2=ly,
                         upper2=uy)

    def field(self, meta, children):
        return ast.StateField(str(children[0]), str(children[1]), _pos(children[0]))

    def state(self, meta, children):
        return ("state", list(children), _pos(meta))

    def gamma(self, meta, children):
        lower, cmp1, var, cmp2, upper = children
        for tok in (cmp1, var, cmp2):
            expected = "x" if tok is var else "<="
            if str(tok) != expected:
                raise lark.exceptions.VisitError(
                    "gamma", tok, DSLError(f"gamma must read 'LOWER <= x <= UPPER', found "
                                           f"{str(tok)!r}", None, "", tok.line, tok.column))
        return ("gamma", ast.Gamma(lower, upper, _pos(meta)), _pos(meta))

    def params(self, meta, children):
        return ("params", tuple(str(c) for c in children))

    def rule_head(self, meta, children):
        ops, params, continuous = [], (), False
        for c in children:
            if isinstance(c, tuple):
                params = c[1]
            elif isinstance(c, Token) and c.type == "CONTINUOUS":
                continuous = True
            elif c is not None:
                ops.append(str(c))
        return (tuple(ops), params, continuous)

    def rule(self, meta, children):
        (ops, params, continuous), *body = children
        return ("rule", ast.Rule(ops, params, continuous, tuple(body), _pos(meta)), _pos(meta))

    def bounds_src(self, meta, children):
        return ("bounds", (str(children[0]), _pos(children[0])), _pos(meta))

    def output_src(self, meta, children):
        return ("output", (str(children[0]), _pos(children[0])), _pos(meta))

    def domain(self, meta, children):
        name, *members = children
        dom = ast.Domain(str(name), _pos(name))
        for kind, value, _ in members:
            if kind == "state":
                dom.state.extend(value)
            elif kind == "gamma":
                dom.gamma = value
            elif kind == "rule":
                dom.rules.append(value)
            elif kind == "bounds":
                dom.bounds_source = value
            elif kind == "output":
                dom.output_source = value
        return dom

    def import_stmt(self, meta, children):
        return ("import", str(children[0])[1:-1], _pos(meta))

    def start(self, meta, children):
        return children


def _describe_expected(expected: set[str]) -> str:
    names = sorted({_KEYWORD_NAMES.get(e, repr(e.lower()) if e.isupper() else e) for e in expected})
    if len(names) > 8:
        names = names[:8] + ["..."]
    return ", ".join(names)


# parsed files by (text, filename), pickled: every ``absdsl.compile`` of a domain name loads
# its files again (DeepPoly: three files, 75 ms of lark parsing), and a fresh copy per call
# keeps callers from sharing one tree. Bounded, so many edited copies (mutants) cannot grow it.
_PARSED: collections.OrderedDict[tuple[str, str], bytes] = collections.OrderedDict()
_PARSED_MAX = 64


def parse_source(source: str, filename: str = "<domain>") -> ast.Module:
    """Parse one file's text. Imports are recorded, not followed (see :func:`load_module`)."""
    key = (source, filename)
    if key in _PARSED:
        _PARSED.move_to_end(key)
        module: ast.Module = pickle.loads(_PARSED[key])  # noqa: S301 (our own bytes)
        return module
    module = _parse_source(source, filename)
    _PARSED[key] = pickle.dumps(module)
    if len(_PARSED) > _PARSED_MAX:
        _PARSED.popitem(last=False)
    return module


def _parse_source(source: str, filename: str) -> ast.Module:
    try:
        tree = _parser().parse(source)
    except lark.UnexpectedCharacters as err:
        raise DSLError(f"unexpected character {err.char!r}", source, filename,
                       err.line, err.column) from None
    except lark.UnexpectedToken as err:
        tok = err.token
        what = "end of file" if tok.type == "$END" else repr(str(tok))
        raise DSLError(f"unexpected {what}; expected {_describe_expected(err.expected)}",
                       source, filename, err.line, err.column) from None
    except lark.UnexpectedEOF as err:
        lines = source.splitlines() or [""]
        raise DSLError(f"unexpected end of file; expected {_describe_expected(set(err.expected))}",
                       source, filename, len(lines), len(lines[-1]) + 1) from None
    try:
        items = _ToAst().transform(tree)
    except lark.exceptions.VisitError as err:
        inner = err.orig_exc
        if isinstance(inner, DSLError):
            raise DSLError(inner.message, source, filename, inner.line, inner.column) from None
        raise
    module = ast.Module(filename, source)
    for item in items:
        if isinstance(item, tuple) and item[0] == "import":
            module.imports.append((item[1], item[2]))
        elif isinstance(item, ast.Relax):
            module.relaxes.append(dataclasses.replace(item, filename=filename, source=source))
        elif isinstance(item, ast.Domain):
            item.filename, item.source = filename, source
            module.domains.append(item)
    return module


def load_module(path: str | Path, _seen: frozenset[str] = frozenset()) -> ast.Module:
    """Parse a file and the files it imports (relative to it); local definitions win."""
    path = Path(path)
    try:
        source = path.read_text()
    except OSError as err:
        raise DSLError(f"cannot read domain file: {err.strerror}", filename=str(path)) from None
    module = parse_source(source, str(path))
    key = str(path.resolve())
    relaxes: list[ast.Relax] = []
    domains: list[ast.Domain] = []
    for target, pos in module.imports:
        dep = (path.parent / target)
        if str(dep.resolve()) in _seen | {key}:
            raise DSLError(f"import cycle through {target!r}", source, str(path), pos.line,
                           pos.column)
        if not dep.exists():
            raise DSLError(f"imported file {target!r} not found (looked in {path.parent})",
                           source, str(path), pos.line, pos.column)
        sub = load_module(dep, _seen | {key})
        relaxes.extend(sub.relaxes)
        domains.extend(sub.domains)
    module.relaxes = relaxes + module.relaxes
    module.domains_imported = domains  # type: ignore[attr-defined]
    return module
