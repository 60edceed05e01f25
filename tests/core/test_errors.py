"""Bad input: each raises the right AbsdslError subclass, with a clear message, before work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box, mlp

import absdsl
from absdsl.errors import AbsdslError, DSLError, InputError

GOOD = """domain Bad {
  state { l: bound; u: bound }
  gamma { l <= x <= u }
  rule input { l = lo; u = hi }
  rule affine { l = W @ l + b - |W| @ u; u = W @ u + b }
  rule add(p, q) { l = p.l + q.l; u = p.u + q.u }
  rule monotone { l = f(l); u = f(u) }
}
"""


def _compile_file(tmp_path: Path, text: str):
    path = tmp_path / "dom.absd"
    path.write_text(text)
    return path, absdsl.compile(mlp([2, 2]), str(path))


def test_unknown_domain_name() -> None:
    with pytest.raises(AbsdslError) as err:
        absdsl.compile(mlp([2, 2]), "boxx")
    assert "boxx" in str(err.value) and "box" in str(err.value)


def test_unknown_domain_name_is_input_error() -> None:
    with pytest.raises(InputError):
        absdsl.compile(mlp([2, 2]), "boxx")


def test_good_user_file_compiles(tmp_path: Path) -> None:
    _, prog = _compile_file(tmp_path, GOOD)
    lo, hi = box((2,), batch=1)
    lb, ub = prog(lo, hi)
    assert (lb <= ub).all()


def test_dsl_syntax_error_has_location_and_caret(tmp_path: Path) -> None:
    with pytest.raises(DSLError) as err:
        _compile_file(tmp_path, GOOD.replace("+ b - |W| @ u;", "+ b + ;"))
    msg = str(err.value)
    assert "dom.absd:5:" in msg
    lines = msg.splitlines()
    assert "rule affine" in lines[1] and lines[2].strip() == "^"
    assert err.value.line == 5 and err.value.column == lines[2].index("^") - 3


def test_dsl_undefined_name(tmp_path: Path) -> None:
    with pytest.raises(DSLError) as err:
        _compile_file(tmp_path, GOOD.replace("|W| @ u;", "zz;"))
    msg = str(err.value)
    assert "undefined name 'zz'" in msg and "dom.absd:5:" in msg and "^" in msg


def test_dsl_gens_times_gens(tmp_path: Path) -> None:
    text = """domain Z {
  state { c: bound; G: gens }
  gamma { c - sum(|G|) <= x <= c + sum(|G|) }
  rule input { c = (hi + lo) / 2; G = newgens((hi - lo) / 2) }
  rule affine { c = W @ c + b; G = G * G }
  rule add(p, q) { c = p.c + q.c; G = p.G + q.G }
  rule relu { c = c; G = G }
}
"""
    with pytest.raises(DSLError) as err:
        _compile_file(tmp_path, text)
    assert "dom.absd:5:" in str(err.value) and "generator" in str(err.value)


def test_lo_greater_than_hi() -> None:
    prog = absdsl.compile(mlp([2, 3, 2]), "deeppoly")
    lo, hi = box((2,), batch=2)
    with pytest.raises(InputError, match=r"lo > hi at index \(1, 0\)"):
        prog(lo.index_put((torch.tensor(1), torch.tensor(0)), hi[1, 0] + 1), hi)


def test_nan_input() -> None:
    prog = absdsl.compile(mlp([2, 3, 2]), "box")
    lo, hi = box((2,), batch=2)
    lo[0, 1] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        prog(lo, hi)


def test_wrong_spec_shape() -> None:
    prog = absdsl.compile(mlp([2, 3, 4]), "crown-ibp")
    lo, hi = box((2,), batch=2)
    with pytest.raises(InputError, match="columns"):
        prog(lo, hi, spec=torch.zeros(2, 3, 5, dtype=DTYPE))
    with pytest.raises(InputError, match="batch"):
        prog(lo, hi, spec=torch.zeros(3, 3, 4, dtype=DTYPE))
    with pytest.raises(InputError, match=r"\[batch, k, n_out\]"):
        prog(lo, hi, spec=torch.zeros(2, 4, dtype=DTYPE))


def test_dtype_mismatch() -> None:
    prog = absdsl.compile(mlp([2, 3, 2]), "zonotope")
    lo, hi = box((2,), batch=2)
    with pytest.raises(InputError, match="float64"):
        prog(lo.float(), hi.float())
    with pytest.raises(InputError, match="differ"):
        prog(lo, hi.float())
    with pytest.raises(InputError):
        prog(lo, hi, spec=torch.zeros(2, 1, 2))  # float32 spec


def test_unbatched_and_shape_mismatch() -> None:
    prog = absdsl.compile(mlp([2, 3, 2]), "box")
    lo, hi = box((2,), batch=2)
    with pytest.raises(InputError, match="batched"):
        prog(lo[0], hi[0])
    with pytest.raises(InputError, match="differ in shape"):
        prog(lo, hi[:1])


def test_errors_raised_before_work(monkeypatch) -> None:
    """Validation happens before the generated program runs."""
    prog = absdsl.compile(mlp([2, 3, 2]), "deeppoly", input_shape=(2,))
    called = []
    compiled = next(iter(prog._compiled.values()))
    monkeypatch.setattr(compiled, "fn", lambda *a: called.append(1))
    lo, hi = box((2,), batch=1)
    with pytest.raises(InputError):
        prog(hi, lo)
    assert not called


def test_not_a_module_and_bad_budget() -> None:
    with pytest.raises(InputError):
        absdsl.compile(lambda x: x, "box")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        absdsl.compile(nn.Linear(2, 2), "box", memory_budget_mb=0)
