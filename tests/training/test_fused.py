"""Fused (torch.compile'd) bound programs: same bounds as eager; one warning on a failure.

The tests compile with the "aot_eager" backend (dynamo capture + AOT autograd, no C++ code
generation), which keeps them fast on a loaded machine; inductor is exercised by
benchmarks/bench_fusion.py.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import absdsl
from absdsl.training import fused
from absdsl.training.config import ConfigError, resolve
from absdsl.training.fused import CompiledProgram, CompileFallbackWarning, use_compile_cache
from absdsl.training.objective import _margin_rows, input_box, mixed_margin


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """Each test compiles new programs: start from dynamo's empty caches."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _setup(domain: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(18, 8), nn.ReLU(), nn.Linear(8, 4)).eval()
    prog = absdsl.compile(model, domain=domain)
    x, y = torch.rand(3, 1, 7, 7), torch.tensor([0, 1, 3])
    lo, hi = input_box(x, 0.05)
    _, spec = _margin_rows(y, 4, lo)
    return model, prog, lo, hi, spec


@pytest.mark.parametrize("domain", ["box", "deeppoly", "crown-ibp"])
def test_compiled_bounds_and_gradients_equal_eager(domain):
    model, prog, lo, hi, spec = _setup(domain)
    fast = CompiledProgram(prog, backend="aot_eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompileFallbackWarning)
        lb, ub = fast(lo, hi, spec)
    assert fast.failed is None
    ref_lb, ref_ub = prog(lo, hi, spec)
    assert torch.allclose(lb, ref_lb, atol=1e-5, rtol=1e-5)
    assert torch.allclose(ub, ref_ub, atol=1e-5, rtol=1e-5)
    lb.sum().backward()
    grad = model[0].weight.grad.clone()
    model.zero_grad()
    ref_lb.sum().backward()
    assert torch.allclose(grad, model[0].weight.grad, atol=1e-4, rtol=1e-4)
    lower, none = fast(lo, hi, spec, upper=False)
    assert none is None and torch.allclose(lower, ref_lb, atol=1e-5, rtol=1e-5)


def test_crown_ibp_mixing_through_compiled_programs_equals_eager():
    model, prog, lo, hi, _ = _setup("crown-ibp")
    eager = {"crown-ibp": prog, "box": absdsl.compile(model, domain="box")}
    compiled = {k: CompiledProgram(v, backend="aot_eager") for k, v in eager.items()}
    y = torch.tensor([0, 1, 3])
    a = mixed_margin(compiled, "crown-ibp", None, lo, hi, y, 4, beta=0.5)
    b = mixed_margin(eager, "crown-ibp", None, lo, hi, y, 4, beta=0.5)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_failing_compiler_falls_back_with_one_warning_and_eager_bounds(monkeypatch):
    monkeypatch.setattr(fused, "_WARNED", set())
    _, prog, lo, hi, spec = _setup("deeppoly")

    def broken_backend(gm, example_inputs):
        raise RuntimeError("forced compiler failure for the test")

    fast = CompiledProgram(prog, backend=broken_backend)
    with pytest.warns(CompileFallbackWarning, match="forced compiler failure") as caught:
        lb, ub = fast(lo, hi, spec)
        fast(lo, hi, spec)  # later calls go straight to the eager program
        CompiledProgram(prog, backend=broken_backend)(lo, hi, spec)  # same reason: no repeat
    assert len([w for w in caught if w.category is CompileFallbackWarning]) == 1
    assert "deeppoly" in str(caught[0].message).lower() and fast.failed is not None
    ref_lb, ref_ub = prog.functional(prog.params(), lo, hi, spec)
    assert torch.equal(lb, ref_lb) and torch.equal(ub, ref_ub)


def test_wrapper_passes_the_program_through():
    _, prog, lo, hi, spec = _setup("crown-ibp")
    fast = CompiledProgram(prog, backend="aot_eager")
    assert fast.domain == prog.domain and fast.params().keys() == prog.params().keys()
    assert fast.shares_intermediate is False  # mixing then calls the compiled programs


def test_compile_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_compile_cache() == tmp_path / "absdsl" / "inductor"
    assert (tmp_path / "absdsl" / "inductor").is_dir()
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache() == tmp_path / "mine"  # the user's setting wins


def test_compile_is_refused_for_population_optimizers():
    with pytest.raises(ConfigError, match="grad optimizer"):
        resolve({"torch_compile": True, "optimizer": "pgpe"})
    assert resolve({"torch_compile": True}).torch_compile is True


def test_cli_flags_reach_the_config():
    import argparse

    from absdsl.training import cli_train

    parser = argparse.ArgumentParser()
    cli_train.register(parser)
    given = cli_train.overrides_from_args(
        parser.parse_args(["--compile", "--loss-fusion", "--domain", "crown"]))
    assert given["torch_compile"] is True and given["loss_fusion"] is True
    plain = cli_train.overrides_from_args(parser.parse_args([]))
    assert "torch_compile" not in plain and "loss_fusion" not in plain
