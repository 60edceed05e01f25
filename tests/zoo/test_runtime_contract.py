"""The contract between generated bound programs and the runtime they call.

Generated code calls the runtime (``rt``, ``dense_rows``, ``patch_rows``) by keyword only, so
that a renamed or reordered parameter fails at once instead of binding the wrong tensor.
This test generates programs for every built-in domain on zoo models that reach every
emitter (patch rows, dense rows through convs, residual adds, concatenation, products,
pooling, traced maps, transposed convs, ops with a restricted range), parses the code and
checks each runtime call against the function's signature.
"""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
import torch.nn as nn

import absdsl
from absdsl.compiler.codegen import RUNTIME
from absdsl.compiler.context import EngineOptions
from tests.zoo import models as zoo

DOMAINS = ("box", "hbox", "zonotope", "deeppoly", "crown-ibp", "alpha-crown")
MODELS = ("cnn_4layer", "cnn_7layer_bn", "resnet_cifar", "densenet_cifar", "squeeze_excite",
          "vit_tiny", "mlp_sigmoid", "cnn_maxpool", "cnn_gelu", "mobilenet_v2_cifar")
# the default engine (patch rows through conv chains) and dense rows everywhere
OPTIONS = (EngineOptions(), EngineOptions(patch_saving=-1.0))


class UpLog(nn.Module):
    """A transposed conv (a traced linear map) and a log (an op with a restricted range)."""

    def __init__(self) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1)
        self.fc = nn.Linear(3 * 7 * 7, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.log(torch.sigmoid(self.up(x)) + 1.0).flatten(1))


def _resolve(func: ast.expr) -> tuple[str, object] | None:
    """The runtime object a call's function names (``rt.where``, ``rt.Gens.fresh``), else None."""
    parts: list[str] = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if not isinstance(func, ast.Name) or func.id not in RUNTIME or not parts:
        return None
    obj: object = RUNTIME[func.id]
    for name in reversed(parts):
        obj = getattr(obj, name)
    return ".".join([func.id, *reversed(parts)]), obj


def runtime_calls(code: str) -> list[tuple[str, object, ast.Call]]:
    """Every call of a runtime function in ``code``: its dotted name, the function, the call."""
    found = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call):
            resolved = _resolve(node.func)
            if resolved is not None:
                found.append((*resolved, node))
    return found


def check_calls(code: str) -> list[str]:
    """Each runtime call that passes a positional argument, or whose keywords do not bind to
    the function's signature (an unknown name, a required one missing)."""
    problems = []
    for name, fn, call in runtime_calls(code):
        where = f"{name} at line {call.lineno}"
        if call.args:
            problems.append(f"{where}: {len(call.args)} positional argument(s)")
            continue
        if any(k.arg is None for k in call.keywords):
            problems.append(f"{where}: ** arguments")
            continue
        try:
            inspect.signature(fn).bind(**{k.arg: None for k in call.keywords if k.arg})
        except TypeError as err:
            problems.append(f"{where}: {err}")
    return problems


def _programs() -> list[tuple[str, str]]:
    """(label, generated code) for every model, domain and engine option set."""
    entries = {e.name: e for e in zoo.ZOO}
    made: list[tuple[str, nn.Module, tuple[int, ...]]] = [
        (name, zoo.build(entries[name]), entries[name].input_shape) for name in MODELS]
    torch.manual_seed(0)
    made.append(("uplog", UpLog().eval(), (2, 4, 4)))
    out = []
    for name, model, shape in made:
        for domain in DOMAINS:
            for options in OPTIONS if domain in ("deeppoly", "crown-ibp") else OPTIONS[:1]:
                prog = absdsl.compile(model, domain, input_shape=shape, options=options)
                out.append((f"{name}/{domain}/{options.patch_saving}", prog.code))
    return out


def test_every_runtime_call_binds_by_keyword() -> None:
    programs = _programs()
    called: set[str] = set()
    for label, code in programs:
        assert not check_calls(code), (label, check_calls(code))
        called |= {name for name, _, _ in runtime_calls(code)}
    # the programs reach the back-substitution runtime in both row forms
    for name in ("dense_rows.refine", "dense_rows.back_lines", "dense_rows.dense_back",
                 "dense_rows.conv_back", "dense_rows.concretize_after", "dense_rows.relax_back",
                 "dense_rows.relax_back_product", "dense_rows.output_chunks",
                 "patch_rows.patch_relax", "patch_rows.patch_start_relaxed",
                 "patch_rows.patch_concretize_after", "rt.cat", "rt.require_range",
                 "rt.Gens.fresh", "rt.bn_scale", "rt.conv_transpose2d"):
        assert name in called, (name, sorted(called))


@pytest.mark.parametrize("code, problem", [
    ("rt.where(m, a, b)", "3 positional argument(s)"),
    ("dense_rows.refine(backsub=f, lower=l)", "missing a required argument"),
    ("patch_rows.patch_mask(rows=r, k=1, size=s, geom=g, pos=p, at=p)", "unexpected keyword"),
])
def test_the_check_finds_a_broken_call(code: str, problem: str) -> None:
    found = check_calls(code)
    assert len(found) == 1 and problem in found[0], found
