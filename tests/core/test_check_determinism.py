"""``absdsl check --seed N`` draws the same cases in every process, whatever was imported.

Hypothesis mixes literal constants of loaded non-site-packages modules into its draws; the
checker switches that off (``without_local_constants``), so a test that asserts a search finds
a bug finds it whatever ran before it.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

import absdsl.soundness as soundness
import absdsl.soundness.checks as checks  # where _run_property reads describe_case


def _drawn_cases(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    cases: list[str] = []
    describe = checks.describe_case

    def record(kwargs):
        text = describe(kwargs)
        cases.append(text)
        return text

    monkeypatch.setattr(checks, "describe_case", record)
    report = soundness.check_domain("box", max_examples=12, seed=7, properties=("bounds",))
    assert report.ok  # Box is sound: no shrinking, every drawn case is recorded
    monkeypatch.setattr(checks, "describe_case", describe)
    return cases


def _import_module_with_constants(tmp_path: Path, name: str) -> None:
    # odd literals a user's script or another test module might hold
    (tmp_path / f"{name}.py").write_text(
        "WEIGHTS = (0.4914, -0.2023, 123.456, 7e-3, -31.25, 2.5e-7, 999.0, -0.617)\n"
        "SIZES = (37, 113, 4099, -17)\n")
    sys.path.insert(0, str(tmp_path))
    try:
        importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))


def test_drawn_cases_do_not_depend_on_loaded_modules(tmp_path, monkeypatch):
    before = _drawn_cases(monkeypatch)
    _import_module_with_constants(tmp_path, "absdsl_check_determinism_probe")
    after = _drawn_cases(monkeypatch)
    assert len(before) == 12 and before == after


def test_the_switch_hides_the_constants_hypothesis_collects(tmp_path):
    """The guard above is not vacuous: Hypothesis does collect the probe's literals, and the
    checker's switch hides them while it runs."""
    providers = pytest.importorskip("hypothesis.internal.conjecture.providers")
    if not hasattr(providers, "_get_local_constants"):
        pytest.skip("this Hypothesis version draws no local constants (nothing to switch off)")
    _import_module_with_constants(tmp_path, "absdsl_check_determinism_probe2")
    assert 123.456 in providers._get_local_constants().floats
    with soundness.without_local_constants():
        assert not providers._get_local_constants().floats
        assert not providers._get_local_constants().integers
    assert 123.456 in providers._get_local_constants().floats
