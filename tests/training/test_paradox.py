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
        (["--complete", "--milp-time-limit", "0"],
         "--milp-time-limit must be a positive number of seconds, got 0.0"),
        (["--milp-time-limit", "nan"], "--milp-time-limit must be a positive number"),
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


_SIGMOID = """
import torch.nn as nn

def make(info):
    c, h, w = info.shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.Sigmoid(),
                         nn.Linear(8, info.num_classes))
"""


@pytest.mark.parametrize("extra, needle", [
    (["--domains", "box,hbox"], "domain 'hbox' cannot train or bound model"),
    (["--domains", "box", "--complete"], "piecewise-linear networks only"),
])
def test_a_domain_without_a_rule_for_an_op_fails_before_any_training(
        tmp_path, capsys, monkeypatch, extra, needle) -> None:
    (tmp_path / "paradox_sigmoid_net.py").write_text(_SIGMOID)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "px"
    err = _error(["--preset", "micro", "--model", "paradox_sigmoid_net:make", *extra,
                  "--out", str(out)], capsys)
    assert needle in err and "sigmoid" in err
    assert not out.exists()  # no start was trained, no folder made


def test_complete_adds_the_milp_stage_to_every_certification(tmp_path, capsys,
                                                             monkeypatch) -> None:
    import absdsl.training.certify as certify_mod
    from absdsl.training import milp

    stages: list[milp.MilpStage] = []

    def keep(*args):
        stages.append(milp.MilpStage(*args))
        return stages[-1]

    monkeypatch.setitem(certify_mod._STAGES, "milp", keep)
    # the cascade's PGD finds nothing here, so every correct input that no bound certifies
    # reaches HiGHS (on the micro networks PGD would otherwise decide them all)
    monkeypatch.setattr(certify_mod, "pgd_attack", lambda model, x, *a, **k: x.clone())
    out = tmp_path / "px"
    args = ["paradox", "--preset", "micro", "--optimizers", "grad", "--domains", "box",
            "--complete", "--milp-time-limit", "10", "--test-subset", "10", "--out", str(out),
            "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    data = json.loads((out / "paradox.json").read_text())
    assert data["config"]["complete"] is True and data["certification"]["complete"] is True
    assert data["certification"]["cascade"].endswith("-> exact MILP (HiGHS, 10 s per input)")
    assert len(stages) == 2 and all(st.time_limit == 10.0 for st in stages)  # one per network
    for name, stage in zip(("pgd", "grad-box"), stages, strict=True):
        summary = data["runs"][name]["certify"]
        counts = summary["counts"]
        # a 784-16-10 network: HiGHS decides every input the earlier stages left
        assert counts["unknown"] == 0, counts
        assert sum(counts.values()) == summary["n"] == 10
        assert summary["certified_acc"] <= summary["adversarial_acc"] <= summary["natural_acc"]
        by_milp = {k: sum(st["status"] == k for st in stage.stats)
                   for k in ("certified", "falsified", "unknown")}
        # PGD falsified nothing: every falsified input is a (checked) MILP counterexample,
        # and the MILP saw exactly the correct inputs that no bound certified
        assert counts["falsified"] == by_milp["falsified"]
        bound_certified = counts["certified"] - by_milp["certified"]
        assert len(stage.stats) == summary["n"] - counts["misclassified"] - bound_certified
        cache = json.loads((out / "runs" / name / paradox.CERTIFY_CACHE).read_text())
        assert cache["key"]["stages"] == ["milp"] and cache["key"]["milp_time_limit"] == 10
    assert sum(len(st.stats) for st in stages) >= 1  # HiGHS really ran
    # the same folder without --complete is another experiment
    err = _error(["--preset", "micro", "--optimizers", "grad", "--domains", "box",
                  "--test-subset", "10", "--out", str(out)], capsys)
    assert "different configuration" in err and "complete" in err


def test_a_config_saved_before_complete_existed_still_matches(tmp_path) -> None:
    out = tmp_path / "px"
    cfg = make_config("micro")
    old = cfg.to_dict()
    for key in paradox.ADDED_DEFAULTS:
        del old[key]
    out.mkdir()
    (out / paradox.CONFIG_FILE).write_text(json.dumps({"format": paradox.FORMAT, "version": 1,
                                                       "config": old}))
    paradox.prepare_out(out, cfg, overwrite=False)  # the same experiment: accepted
    with pytest.raises(ParadoxError, match="differs in: complete"):
        paradox.prepare_out(out, make_config("micro", {"complete": True}), overwrite=False)


def test_an_interrupted_paradox_resumes_from_the_runs_it_finished(tmp_path, capsys,
                                                                  monkeypatch) -> None:
    from absdsl.training import loop
    from absdsl.training.checkpoint import CheckpointError

    out = tmp_path / "px"
    args = ["paradox", "--preset", "micro", "--optimizers", "grad", "--domains",
            "box,deeppoly", "--out", str(out), "--quiet"]
    real = loop.run_training

    def ctrl_c_in_the_third_run(cfg, run_dir, **kwargs):
        if Path(run_dir).name == "grad-deeppoly":  # Ctrl-C: the loop saves, then raises
            raise loop.Interrupted("interrupted; checkpoint saved")
        return real(cfg, run_dir, **kwargs)

    monkeypatch.setattr(loop, "run_training", ctrl_c_in_the_third_run)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "grad-deeppoly" in err and "again to resume" in err and err.count("\n") == 1
    assert not (out / "paradox.json").exists()
    for name in ("pgd", "grad-box"):
        assert json.loads((out / "runs" / name / paradox.RUN_MARKER).read_text())["finished"]
    assert not json.loads((out / "runs/grad-deeppoly" / paradox.RUN_MARKER).read_text())[
        "finished"]
    before = _snapshot(out)

    monkeypatch.setattr(loop, "run_training", real)
    assert main(args) == 0
    capsys.readouterr()
    status = json.loads((out / "paradox.json").read_text())["timings"]["runs"]
    assert {n: s["status"] for n, s in status.items()} == {
        "pgd": "skipped", "grad-box": "skipped", "grad-deeppoly": "resumed"}
    after = _snapshot(out)
    for key, mtime in before.items():  # the finished runs: not retrained, not re-certified
        if not key.startswith("runs/grad-deeppoly/"):
            assert after[key] == mtime, key
    assert (out / "runs/grad-deeppoly/checkpoints/epoch_0001.pt").is_file()

    # a checkpoint whose weights do not fit the model its config names: a clear error
    ckpt = torch.load(out / "runs/pgd/checkpoints/epoch_0001.pt", weights_only=True)
    ckpt["config"]["model"] = "fc"
    wrong = tmp_path / "wrong.pt"
    torch.save(ckpt, wrong)
    with pytest.raises(CheckpointError, match="do not fit model 'fc'"):
        paradox.load_network(out / "runs/pgd", wrong)
