"""Coverage of the model zoo (issue 16, part 4): every model x every built-in domain.

Each case either compiles (``absdsl.compile(model, domain, input_shape=...)``) and is sound at
sampled points of an eps box and exact on a degenerate box, or is refused at compile time with
a ``TraceError`` that names the op and where it is. Which is which is pinned in ``EXPECTED``:
a regression and an unexpected new success both fail, so the table (and the README's coverage
table, ``python benchmarks/coverage.py``) is updated deliberately.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch.nn as nn

import absdsl
from tests.zoo.models import (
    BY_NAME,
    DOMAINS,
    HEAVY,
    TAGS,
    ZOO,
    build,
    check_program,
    refused_op,
)

ALL = frozenset(DOMAINS)

# model -> (the domains it compiles in, the op every other domain's refusal names). The op is
# matched ignoring case and underscores (``MaxPool2d`` matches ``max_pool2d``).
EXPECTED: dict[str, tuple[frozenset[str], str]] = {
    "cnn_4layer": (ALL, ""),
    "cnn_4layer_bn": (ALL, ""),
    "cnn_7layer": (ALL, ""),
    "cnn_7layer_bn": (ALL, ""),
    "resnet_cifar": (ALL, ""),
    "cresnet5": (ALL, ""),
    "densenet_cifar": (ALL, ""),
    "wide_resnet": (ALL, ""),
    "mobilenet_v2_cifar": (ALL, ""),
    "mlp_relu": (ALL, ""),
    "mlp_sigmoid": (ALL, ""),
    "mlp_tanh": (ALL, ""),
    "mlp_leaky_relu": (ALL, ""),
    "mlp_relu6": (ALL, ""),
    "mlp_hardtanh": (ALL, ""),
    "cnn_maxpool": (ALL, ""),
    "cnn_f_max_pool2d": (ALL, ""),
    "cnn_zeropad": (ALL, ""),
    "cnn_silu": (ALL, ""),
    "cnn_gelu": (ALL, ""),
    "cnn_elu": (ALL, ""),
    "cnn_softplus": (ALL, ""),
    "cnn_hardswish": (ALL, ""),
    "squeeze_excite": (ALL, ""),
    "vit_tiny": (ALL, ""),
    "tv_resnet18": (ALL, ""),
    "tv_vgg11": (ALL, ""),
    "tv_alexnet": (ALL, ""),
    "tv_squeezenet1_0": (ALL, ""),
    "tv_mobilenet_v2": (ALL, ""),
    "tv_efficientnet_b0": (ALL, ""),
}

# cases over ~20 s on 2 shared cores (DeepPoly back-substitution through every ReLU6 layer)
SLOW = {("tv_mobilenet_v2", "deeppoly")}


def _norm(text: str) -> str:
    return text.lower().replace("_", "")


def _cases() -> list[object]:
    """(model, domain) in model-major order, so one cached model serves its five domains."""
    def marks(case: tuple[str, str]) -> list[pytest.MarkDecorator]:
        return [pytest.mark.slow] if case in SLOW else []

    return [pytest.param(m.name, d, id=f"{m.name}-{d}", marks=marks((m.name, d)))
            for m in ZOO for d in DOMAINS]


@functools.lru_cache(maxsize=1)
def _model(name: str) -> nn.Module:
    return build(BY_NAME[name])


def test_table_covers_the_zoo() -> None:
    """Every zoo model is pinned, with known domains, a tag, and an op wherever one refuses."""
    assert set(EXPECTED) == set(BY_NAME)
    assert len(BY_NAME) == len(ZOO)  # names are unique
    assert {m.tag for m in ZOO} == set(TAGS)
    for name, (compiles, op) in EXPECTED.items():
        assert compiles <= ALL, name
        assert bool(op) == (compiles != ALL), name
    for name, domain in SLOW:
        assert domain in EXPECTED[name][0], (name, domain)  # only cases that compile


@pytest.mark.parametrize("name,domain", _cases())
def test_zoo_case(name: str, domain: str) -> None:
    """Compiles and is sound/exact where pinned (only compiles, for ``HEAVY``); otherwise
    refused at compile time, naming the op and its module or source line."""
    entry = BY_NAME[name]
    compiles, op = EXPECTED[name]
    model = _model(name)
    if domain in compiles:
        prog = absdsl.compile(model, domain, input_shape=entry.input_shape)
        assert prog.ir.nodes  # traced at once (input_shape given)
        if (name, domain) in HEAVY:
            return  # compiled only: see models.HEAVY
        check = check_program(model, prog, entry)
        assert check.finite, f"{name}/{domain}: non-finite bounds"
        assert check.violation <= check.tol, \
            f"{name}/{domain}: unsound by {check.violation:.3g} (tolerance {check.tol:.3g})"
        assert check.exact_error <= check.tol, \
            f"{name}/{domain}: degenerate box off model(x) by {check.exact_error:.3g}"
        return
    try:
        absdsl.compile(model, domain, input_shape=entry.input_shape)
    except absdsl.TraceError as err:
        message = str(err)
    else:
        pytest.fail(f"{name} now compiles in {domain} (or is refused only when called): "
                    f"update EXPECTED and the README's coverage table")
    assert _norm(op) in _norm(message), f"refusal does not name {op!r}: {message}"
    assert "module '" in message or ".py:" in message, f"refusal names no location: {message}"


def test_refused_op_reads_the_messages() -> None:
    """The coverage table's cell is the op the refusal names."""
    assert refused_op("domain HBox has no rule for sigmoid, needed by module '2' (Sigmoid)") \
        == "sigmoid"
    assert refused_op("back-substitution has no rule for op max_pool2d") == "max_pool2d"
    assert refused_op("operator.mul at model.py:3: broadcasting two input-dependent tensors "
                      "has no rule") == "operator.mul"
    assert refused_op("module 'features.2' (MaxPool2d) at vgg.py:66: no rule") == "MaxPool2d"
    assert refused_op("a message that names no op at all") == "a message that names no op"


def test_coverage_benchmark_matches_the_table(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``benchmarks/coverage.py`` reports the pinned outcome (ok / the refusing op) and its
    JSON holds one cell per model and domain."""
    from benchmarks import coverage

    names, domains = ["mlp_sigmoid", "squeeze_excite"], ["box", "hbox"]
    out = tmp_path / "cov.json"
    assert coverage.main(["--models", ",".join(names), "--domains", ",".join(domains),
                          "--json", str(out), "--threads", "1"]) == 0
    cells = json.loads(out.read_text())["cells"]
    assert [(c["model"], c["domain"]) for c in cells] == [(n, d) for n in names for d in domains]
    printed = capsys.readouterr().out
    for c in cells:
        compiles, op = EXPECTED[c["model"]]
        if c["domain"] in compiles:
            assert c["status"] == "ok", c
        else:
            assert c["status"] == "refused" and _norm(op) in _norm(c["message"]), c
            assert f"`{c['op']}`" in printed
    assert printed.splitlines()[0].startswith("| model | tag | input | box | hbox |")
