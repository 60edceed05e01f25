"""``absdsl bench bounds`` measurement machinery: the forward burst, the probe estimate of the
peak, the address-space cap, CNN7's own batch and the speed-target column."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from absdsl.cli import main
from absdsl.experiments import bench_bounds as bench


class _Clock:
    """A fake ``time.perf_counter``: calls advance it by what they are said to cost."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_forward_burst_is_not_charged_for_the_program_before_it(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(bench.time, "perf_counter", clock)
    state = {"evicted": False}

    def forward() -> None:  # 1 ms warm, 80 ms right after the program evicted the caches
        clock.now += 0.080 if state["evicted"] else 0.001
        state["evicted"] = False

    def program() -> None:
        clock.now += 2.0
        state["evicted"] = True

    fwd, prog = bench.paired_ms(forward, program, repeats=5, warmup=2, burst=True)
    assert fwd == pytest.approx(1.0) and prog == pytest.approx(2000.0)
    # without the burst every forward sample follows the program: the inflated figure
    fwd, _ = bench.paired_ms(forward, program, repeats=5, warmup=2, burst=False)
    assert fwd == pytest.approx(80.0)


def test_peak_estimate_extrapolates_fixed_and_per_sample_parts():
    mib = 2**20

    def call(n: int) -> None:  # 4 MiB whatever the batch, 1 MiB more per sample
        fixed = torch.empty(4 * mib, dtype=torch.uint8)
        per_sample = torch.empty(n * mib, dtype=torch.uint8)
        del fixed, per_sample

    need, probes = bench.estimate_peak_gib(call, 100)
    assert [p * 1024 for p in probes] == pytest.approx([5.0, 6.0], abs=0.01)
    assert need * 1024 == pytest.approx(104.0, abs=0.5)
    assert bench.estimate_peak_gib(call, 1)[0] * 1024 == pytest.approx(5.0, abs=0.01)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc: Linux")
def test_address_space_cap_turns_an_oversized_call_into_an_allocation_error():
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    with pytest.raises((RuntimeError, MemoryError)) as err, bench.address_space_cap(0.25):
        torch.empty(4 * 2**30, dtype=torch.uint8)  # 4 GiB > 0.25 GiB + the slack
    assert bench._out_of_memory(err.value)
    assert resource.getrlimit(resource.RLIMIT_AS) == before
    with bench.address_space_cap(0.25):
        torch.empty(2**20, dtype=torch.uint8)  # small allocations still work


def _row(net: str, domain: str, batch: int, ms: float | None, peak_mib: float | None,
         fwd_ms: float = 1.0) -> bench.Row:
    row = bench.Row("a", net, "mnist", domain, batch, fwd_ms, 1.0, ms=ms, peak_mib=peak_mib)
    bench.judge_target(row)
    return row


def test_issue14_targets():
    ok = _row("cnn3", "hbox", 128, ms=40.0, peak_mib=3000.0)
    assert ok.target_ok and ok.target == "<= 4 GiB, <= 50x: pass"
    slow = _row("cnn5", "zonotope", 128, ms=60.0, peak_mib=5000.0)
    assert slow.target_ok is False and slow.target.endswith("FAIL (4.9 GiB, 60x)")
    skipped = _row("cnn3", "zonotope", 128, ms=None, peak_mib=None)
    assert skipped.target_ok is False and "did not run" in skipped.target
    cnn7 = _row("cnn7", "hbox", 32, ms=12_345.0, peak_mib=7000.0)
    assert cnn7.target_ok and cnn7.target == "<= 8 GiB: pass, 12.35 s"
    other_batch = _row("cnn3", "hbox", 64, ms=1.0, peak_mib=1.0)
    assert other_batch.target_ok is None and other_batch.target.startswith("n/a")
    box = _row("cnn3", "box", 128, ms=3.0, peak_mib=1.0)
    assert box.target_ok is None and box.target == ""


def test_table_a_runs_cnn7_at_its_own_batch(tmp_path, capsys):
    threads = torch.get_num_threads()
    path = tmp_path / "a.json"
    try:
        code = main(["bench", "bounds", "--quick", "--table", "a", "--nets", "tiny,cnn7",
                     "--data", "mnist", "--domains", "box", "--batch-a", "3",
                     "--batch-cnn7", "2", "--threads", "1", "--json", str(path)])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    assert "speed target" in capsys.readouterr().out
    rows = {r["net"]: r for r in json.loads(path.read_text())["rows"]}
    assert rows["tiny"]["batch"] == 3 and rows["cnn7"]["batch"] == 2
    for r in rows.values():
        assert r["estimate_gib"] > 0 and r["peak_mib"] > 0 and r["time_ratio"] > 0


def test_bad_batch_is_refused(capsys):
    assert main(["bench", "bounds", "--table", "a", "--batch-cnn7", "0"]) == 2
    assert "--batch-cnn7 must be >= 1" in capsys.readouterr().err
