"""``absdsl paradox``: the micro preset end to end, resume, redo of a partial run, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from absdsl.cli import main
from absdsl.training import paradox
from absdsl.training.paradox import ParadoxError, make_config

RUNS = ("pgd", "grad-box", "grad-deeppoly", "pgpe-box", "pgpe-deeppoly")


def _snapshot(out: Path) -> dict[str, float]:
    """mtime of every checkpoint and cache file under OUT/runs."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted((out / "runs").rglob("*"))
            if p.suffix in (".pt", ".json") and p.name != paradox.RUN_MARKER}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _micro(out: Path, capsys) -> tuple[int, str]:
    rc = main(["paradox", "--preset", "micro", "--out", str(out), "--quiet"])
    return rc, capsys.readouterr().out


def test_micro_preset_end_to_end_resume_and_redo(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    rc, text = _micro(out, capsys)
    assert rc == 0
    assert "Cert. Acc. [%]" in text and "DeepPoly" in text

    # the JSON holds Table 1's layout: PGD row, one row per domain, GRAD/PGPE x 3 metrics
    data = json.loads((out / "paradox.json").read_text())
    assert data["format"] == "absdsl-paradox"
    (table,) = data["tables"]
    assert table["eps"] == pytest.approx(0.1)
    assert [r["domain"] for r in table["rows"]] == ["PGD", "box", "deeppoly"]
    for row in table["rows"][1:]:
        for opt in ("grad", "pgpe"):
            assert set(row[opt]) == {"natural", "certified", "adversarial"}
            for value in row[opt].values():
                assert 0.0 <= value <= 1.0
            # certified <= adversarial <= natural: the cascade never contradicts itself
            assert row[opt]["certified"] <= row[opt]["adversarial"] <= row[opt]["natural"]
            assert 0.0 <= row[f"tightness_{opt}"] <= 1.0
        assert 0.0 <= row["tightness"] <= 1.0
    assert table["rows"][0]["pgpe"] is None
    assert set(table["tightness_by_network"]) == set(RUNS)
    assert "paradox_under_grad" in table["findings"]
    assert data["certification"]["domain"] == "tightest"
    assert (out / "paradox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every run in its own folder, finished, with its final checkpoint
    for name in RUNS:
        run_dir = out / "runs" / name
        marker = json.loads((run_dir / paradox.RUN_MARKER).read_text())
        assert marker["finished"] is True
        assert (run_dir / "checkpoints" / "epoch_0001.pt").is_file()
        assert (run_dir / paradox.CERTIFY_CACHE).is_file()

    # GRAD starts from the PGD weights: the seeded epoch-0 checkpoint holds them exactly
    pgd_w = torch.load(out / "runs/pgd/checkpoints/epoch_0001.pt", weights_only=True)["model"]
    seed_w = torch.load(out / "runs/grad-box/checkpoints/epoch_0000.pt",
                        weights_only=True)["model"]
    assert all(torch.equal(pgd_w[k], seed_w[k]) for k in pgd_w)
    # PGPE starts there too (init_checkpoint): a few sigma-1e-3 steps stay close to it
    pgpe_w = torch.load(out / "runs/pgpe-box/checkpoints/epoch_0001.pt",
                        weights_only=True)["model"]
    assert max(float((pgd_w[k] - pgpe_w[k]).abs().max()) for k in pgd_w) < 0.05

    # a second invocation resumes: nothing retrained, re-certified or re-measured
    before = _snapshot(out)
    epochs_logged = {n: _lines(out / "runs" / n / "metrics.jsonl") for n in RUNS}
    rc, text2 = _micro(out, capsys)
    assert rc == 0
    assert _snapshot(out) == before
    assert {n: _lines(out / "runs" / n / "metrics.jsonl") for n in RUNS} == epochs_logged
    again = json.loads((out / "paradox.json").read_text())
    assert again["tables"][0]["rows"] == table["rows"]
    assert all(t["status"] == "skipped" for t in again["timings"]["runs"].values())

    # a killed run (no finished marker, final checkpoint lost) is redone from its newest
    # checkpoint; a run that only lost its marker is finished again without training
    killed = out / "runs" / "grad-deeppoly"
    (killed / paradox.RUN_MARKER).unlink()
    (killed / "checkpoints" / "epoch_0001.pt").unlink()
    (out / "runs" / "pgpe-box" / paradox.RUN_MARKER).unlink()
    rc, _ = _micro(out, capsys)
    assert rc == 0
    after = _snapshot(out)
    assert (killed / "checkpoints" / "epoch_0001.pt").is_file()
    assert _lines(killed / "metrics.jsonl") == epochs_logged["grad-deeppoly"] + 1
    assert json.loads((killed / paradox.RUN_MARKER).read_text())["finished"] is True
    status = json.loads((out / "paradox.json").read_text())["timings"]["runs"]
    assert status["grad-deeppoly"]["status"] == "resumed"
    assert status["pgpe-box"]["status"] == "resumed"
    for key, mtime in before.items():
        if key.startswith("runs/grad-deeppoly/") or key == "runs/pgpe-box/metrics.json":
            continue  # redone; and the loop's summary of the re-finished run is rewritten
        assert after[key] == mtime, key  # checkpoints and caches of the others untouched
    assert (out / "runs" / "pgpe-box" / paradox.RUN_MARKER).is_file()


def _error(args: list[str], capsys) -> str:
    rc = main(["paradox", *args])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.count("\n") == 1  # one clear line
    return err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--preset", "huge"], "unknown preset 'huge'"),
        (["--domains", "box,octagon"], "unknown domain 'octagon'"),
        (["--optimizers", "grad,sgd"], "unknown optimizer 'sgd'"),
        (["--eps", "1.5"], "eps must lie in (0, 1]"),
        (["--eps", "-0.1"], "eps must lie in (0, 1]"),
        (["--eps", "0"], "eps must lie in (0, 1]"),
        (["--eps", "nan"], "eps must lie in (0, 1]"),
        (["--eps", "a lot"], "eps 'a lot' is not a number"),
        (["--popsize", "5"], "popsize must be an even integer"),
        (["--epochs", "0"], "grad_epochs must be an integer >= 1"),
    ],
)
def test_bad_settings_are_rejected_before_any_work(tmp_path, capsys, args, needle) -> None:
    out = tmp_path / "px"
    err = _error(["--preset", "micro", *args, "--out", str(out)]
                 if args[0] != "--preset" else [*args, "--out", str(out)], capsys)
    assert needle in err
    assert not out.exists()


def test_paper_preset_without_full_mnist_names_what_is_missing(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    err = _error(["--preset", "paper", "--data-root", str(tmp_path / "nodata"),
                  "--out", str(out)], capsys)
    assert "full mnist" in err and "nodata" in err and "--data-root" in err
    assert not out.exists()


def test_paper_preset_dry_run_shows_the_paper_settings(capsys) -> None:
    assert main(["paradox", "--preset", "paper", "--dry-run"]) == 0
    shown = json.loads(capsys.readouterr().out)
    cfg = shown["config"]
    assert cfg["model"] == "cnn3" and cfg["dataset"] == "mnist"
    assert cfg["eps"] == [0.1, 0.3] and cfg["popsize"] == 256 and cfg["sigma"] == 1e-3
    names = [r["name"] for r in shown["runs"]]
    assert "eps0.3/pgd" in names and "eps0.1/pgpe-deeppoly" in names and len(names) == 18


def test_out_with_another_configuration_needs_overwrite(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    paradox.prepare_out(out, make_config("micro"), overwrite=False)
    (out / "runs" / "pgd").mkdir(parents=True)
    err = _error(["--preset", "micro", "--eps", "0.2", "--out", str(out)], capsys)
    assert "different configuration" in err and "eps" in err and "--overwrite" in err
    assert (out / "runs" / "pgd").is_dir()  # nothing was touched
    # --overwrite starts over: the old runs go, the new configuration is recorded
    paradox.prepare_out(out, make_config("micro", {"eps": [0.2]}), overwrite=True)
    assert not (out / "runs").exists()
    saved = json.loads((out / paradox.CONFIG_FILE).read_text())
    assert saved["config"]["eps"] == [0.2]


def test_out_holding_foreign_files_is_refused(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    err = _error(["--preset", "micro", "--out", str(out), "--overwrite"], capsys)
    assert "not empty" in err
    assert (out / "thesis.tex").read_text() == "precious"


def test_config_normalises_aliases_and_orders_eps() -> None:
    cfg = make_config("micro", {"domains": ["IBP", "crown", "box"], "eps": ["0.3", 0.1]})
    assert cfg.domains == ["box", "deeppoly"]
    assert cfg.eps == [0.1, 0.3]
    with pytest.raises(ParadoxError, match="unknown paradox setting"):
        make_config("micro", {"learning_rate": 1.0})


def _row(domain: str, tight: float, grad: float, pgpe: float) -> dict:
    acc = {"natural": 0.9, "adversarial": 0.8}
    return {"domain": domain, "tightness": tight, "grad": {**acc, "certified": grad},
            "pgpe": {**acc, "certified": pgpe}}


def test_findings_detect_the_paradox_and_its_reversal() -> None:
    rows = [_row("box", 0.2, 0.7, 0.5), _row("crown-ibp", 0.5, 0.6, 0.6),
            _row("deeppoly", 0.8, 0.5, 0.7)]
    f = paradox.findings(rows)
    assert f["loosest_domain"] == "box" and f["tightest_domain"] == "deeppoly"
    assert f["paradox_under_grad"] is True and f["reversal_under_pgpe"] is True
    assert f["grad"]["rank_correlation_tightness_vs_certified"] == pytest.approx(-1.0)
    assert f["grad"]["loosest_minus_tightest_certified"] == pytest.approx(0.2)
    # no paradox when the tight domain also trains best with GRAD
    flipped = [_row("box", 0.2, 0.5, 0.5), _row("deeppoly", 0.8, 0.7, 0.4)]
    g = paradox.findings(flipped)
    assert g["paradox_under_grad"] is False and g["reversal_under_pgpe"] is False
    text = paradox.format_tables([{"eps": 0.1, "rows": [
        {"domain": "PGD", "grad": {"natural": 0.9, "certified": 0.1, "adversarial": 0.5},
         "pgpe": None, "tightness": None}, *rows], "findings": f}], "mnist5k")
    assert "Nat. Acc. [%]" in text and "DeepPoly" in text and "70.00" in text
