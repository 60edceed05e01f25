"""``absdsl paradox``: the micro preset end to end (GRAD from scratch, PGPE and RGS from the
PGD start), resume, redo of a partial run, the presets, the estimate, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from absdsl.cli import main
from absdsl.experiments import paradox
from absdsl.experiments.paradox import ParadoxError, make_config
from absdsl.training.data import dataset_info

RUNS = ("pgd", "grad-box", "grad-deeppoly", "pgpe-box", "pgpe-deeppoly", "rgs-box",
        "rgs-deeppoly")


def _snapshot(out: Path) -> dict[str, float]:
    """mtime of every checkpoint and cache file under OUT/runs."""
    return {str(p.relative_to(out)): p.stat().st_mtime_ns
            for p in sorted((out / "runs").rglob("*"))
            if p.suffix in (".pt", ".json") and p.name != paradox.RUN_MARKER}


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _micro(out: Path, capsys) -> tuple[int, str]:
    rc = main(["paradox", "--preset", "micro", "--optimizers", "grad,pgpe,rgs", "--out", str(out),
               "--quiet"])
    return rc, capsys.readouterr().out


def test_micro_preset_end_to_end_resume_and_redo(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    rc, text = _micro(out, capsys)
    assert rc == 0
    assert "Cert. Acc. [%]" in text and "DeepPoly" in text

    # the JSON holds Table 1's layout: PGD row, one row per domain, GRAD/PGPE/RGS x 3 metrics
    data = json.loads((out / "paradox.json").read_text())
    assert data["format"] == "absdsl-paradox"
    (table,) = data["tables"]
    assert table["eps"] == pytest.approx(0.1)
    assert [r["domain"] for r in table["rows"]] == ["PGD", "box", "deeppoly"]
    for row in table["rows"][1:]:
        for opt in ("grad", "pgpe", "rgs"):
            assert set(row[opt]) == {"natural", "certified", "adversarial"}
            for value in row[opt].values():
                assert 0.0 <= value <= 1.0
            # certified <= adversarial <= natural: the cascade never contradicts itself
            assert row[opt]["certified"] <= row[opt]["adversarial"] <= row[opt]["natural"]
            assert 0.0 <= row[f"tightness_{opt}"] <= 1.0
        assert 0.0 <= row["tightness"] <= 1.0
    assert table["rows"][0]["pgpe"] is None
    assert set(table["tightness_by_network"]) == set(RUNS)
    # tightness_scope "own": the start with every domain, a trained network with its own
    assert set(table["tightness_by_network"]["pgd"]["auc"]) == {"box", "deeppoly"}
    assert set(table["tightness_by_network"]["rgs-deeppoly"]["auc"]) == {"deeppoly"}
    assert "paradox_under_grad" in table["findings"]
    assert "DeepPoly above IBP under RGS" in table["findings"]["paper_orderings"]
    assert data["table_layout"]["columns"]["certified"] == ["grad", "pgpe", "rgs"]
    assert "RGS" in text and "paper: DeepPoly above IBP under PGPE" in text
    assert data["certification"]["domain"] == "tightest"
    assert (out / "paradox.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every run in its own folder, finished, with its final checkpoint
    for name in RUNS:
        run_dir = out / "runs" / name
        marker = json.loads((run_dir / paradox.RUN_MARKER).read_text())
        assert marker["finished"] is True
        assert (run_dir / "checkpoints" / "epoch_0001.pt").is_file()
        assert (run_dir / paradox.CERTIFY_CACHE).is_file()

    # GRAD trains from scratch: torch's Kaiming-uniform init of the run's seed (not Shi et
    # al.'s IBP init, not the PGD start), moved by two Adam steps of lr 1e-3
    grad_dir = out / "runs/grad-box"
    assert json.loads((grad_dir / paradox.RUN_MARKER).read_text())["init_sha256"] is None
    assert not (grad_dir / "checkpoints" / "epoch_0000.pt").exists()
    assert 'init = "default"' in (grad_dir / "config.toml").read_text()
    torch.manual_seed(0)
    fresh = paradox.micro_fc(dataset_info("mnist5k")).state_dict()
    grad_w = torch.load(grad_dir / "checkpoints/epoch_0001.pt", weights_only=True)["model"]
    assert max(float((fresh[k] - grad_w[k]).abs().max()) for k in fresh) < 0.005
    # PGPE and RGS start from the PGD weights (init_checkpoint): a few steps stay close
    pgd_w = torch.load(out / "runs/pgd/checkpoints/epoch_0001.pt", weights_only=True)["model"]
    for name in ("pgpe-box", "rgs-deeppoly"):
        w = torch.load(out / "runs" / name / "checkpoints/epoch_0001.pt",
                       weights_only=True)["model"]
        assert max(float((pgd_w[k] - w[k]).abs().max()) for k in pgd_w) < 0.01, name

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

    # a killed run (no finished marker, final checkpoint lost, no other checkpoint: GRAD
    # from scratch keeps no epoch 0) is trained again; a run that only lost its marker is
    # finished again without training (mid-epoch resume: the interrupt test below)
    killed = out / "runs" / "grad-deeppoly"
    (killed / paradox.RUN_MARKER).unlink()
    (killed / "checkpoints" / "epoch_0001.pt").unlink()
    (out / "runs" / "pgpe-box" / paradox.RUN_MARKER).unlink()
    rc, _ = _micro(out, capsys)
    assert rc == 0
    after = _snapshot(out)
    assert (killed / "checkpoints" / "epoch_0001.pt").is_file()
    assert _lines(killed / "metrics.jsonl") == epochs_logged["grad-deeppoly"]
    assert json.loads((killed / paradox.RUN_MARKER).read_text())["finished"] is True
    status = json.loads((out / "paradox.json").read_text())["timings"]["runs"]
    assert status["grad-deeppoly"]["status"] == "trained"
    assert status["pgpe-box"]["status"] == "resumed"
    assert all(status[n]["status"] == "skipped" for n in RUNS
               if n not in ("grad-deeppoly", "pgpe-box"))
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
        (["--grad-start", "sideways"], "grad_start must be one of scratch, pgd"),
        (["--rgs-samples", "3"], "rgs_samples must be an even integer"),
        (["--pgpe-batches", "0"], "pgpe_batches (batches per epoch) must be an integer >= 1"),
        (["--tightness-scope", "some"], "tightness_scope must be one of own, all"),
        (["--optimizers", "grad,rgs", "--rgs-epochs", "0"], "rgs_epochs must be an integer"),
        (["--set", "learning_rate=1"], "unknown paradox setting 'learning_rate'"),
        (["--set", "grad_lr"], "expected KEY=VALUE"),
        (["--set", "grad_ramp_epochs=3"], "grad_ramp_epochs must map eps"),
        (["--set", "grad_milestones=[0]"], "grad_milestones must be a list of epochs >= 1"),
        (["--set", "rgs_decay=2.0"], "rgs_decay must lie in (0, 1]"),
        (["--estimate", "--estimate-steps", "0"], "--estimate-steps must be >= 1"),
        (["--threads", "0"], "--threads must be >= 1, got 0"),
        (["--population-eval", "sometimes"], "population_eval must be auto, vmap or loop"),
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


def _dry_run(capsys, *args: str) -> dict:
    assert main(["paradox", *args, "--dry-run"]) == 0
    return json.loads(capsys.readouterr().out)


def test_paper_preset_dry_run_shows_the_paper_settings(capsys) -> None:
    shown = _dry_run(capsys, "--preset", "paper")
    cfg = shown["config"]
    assert cfg["model"] == "cnn3" and cfg["dataset"] == "mnist"
    assert cfg["eps"] == [0.1, 0.3] and cfg["popsize"] == 256 and cfg["sigma"] == 1e-3
    names = [r["name"] for r in shown["runs"]]
    assert "eps0.3/pgd" in names and "eps0.1/pgpe-deeppoly" in names and len(names) == 18
    runs = {r["name"]: r for r in shown["runs"]}
    # appendix B: GRAD from scratch (Kaiming uniform), 70 epochs, 20-epoch ramp, decay 0.2
    # after 50 and 60, Adam 5e-5, clipping; PGPE's ramp only at eps 0.3
    grad = runs["eps0.3/grad-deeppoly"]
    assert grad["init"] == "default" and grad["epochs"] == 70 and grad["ramp_epochs"] == 20
    assert grad["lr"] == 5e-5 and grad["lr_milestones"] == [50, 60] and grad["grad_clip"] == 10
    assert "options" not in grad  # no init_checkpoint: not from the PGD start
    assert runs["eps0.3/pgpe-box"]["ramp_epochs"] == 50
    assert runs["eps0.1/pgpe-box"]["ramp_epochs"] == 0


def test_quick_preset_is_cnn3_from_scratch_and_the_mlp_preset_is_kept(capsys) -> None:
    shown = _dry_run(capsys, "--preset", "quick")
    cfg = shown["config"]
    assert cfg["model"] == "cnn3" and cfg["dataset"] == "mnist5k" and cfg["eps"] == [0.1, 0.3]
    assert cfg["domains"] == ["box", "hbox", "crown-ibp", "deeppoly"]
    assert cfg["optimizers"] == ["grad", "pgpe", "rgs"]
    runs = {r["name"]: r for r in shown["runs"]}
    assert len(runs) == 2 * (1 + 3 * 4)
    for eps in ("0.1", "0.3"):
        for domain in cfg["domains"]:
            grad = runs[f"eps{eps}/grad-{domain}"]
            assert grad["init"] == "default" and grad["ramp_epochs"] >= 1
            assert grad["grad_clip"] == 10.0 and "options" not in grad
            assert grad["beta_start"] == grad["beta_end"] == 1.0  # CROWN-IBP (R)
            pgpe = runs[f"eps{eps}/pgpe-{domain}"]
            assert pgpe["options"]["popsize"] == cfg["popsize"]
            # batches per epoch: the first pgpe_batches batches of the split
            assert pgpe["train_subset"] == cfg["pgpe_batches"] * cfg["pgpe_batch_size"]
            assert runs[f"eps{eps}/rgs-{domain}"]["options"]["rgs_samples"] == cfg["rgs_samples"]
    # every budget is a flag or a --set field
    small = _dry_run(capsys, "--preset", "quick", "--grad-epochs", "2", "--popsize", "8",
                     "--pgpe-batches", "3", "--rgs-samples", "2", "--test-subset", "50",
                     "--optimizers", "grad,rgs", "--eps", "0.3", "--set", "grad_lr=1e-3",
                     "--set", "grad_ramp_epochs={\"0.3\" = 1}")
    c = small["config"]
    assert (c["grad_epochs"], c["popsize"], c["pgpe_batches"], c["rgs_samples"],
            c["test_subset"], c["grad_lr"]) == (2, 8, 3, 2, 50, 1e-3)
    assert [r["name"] for r in small["runs"]] == [
        "pgd", "grad-box", "grad-hbox", "grad-crown-ibp", "grad-deeppoly", "rgs-box",
        "rgs-hbox", "rgs-crown-ibp", "rgs-deeppoly"]
    assert small["runs"][1]["ramp_epochs"] == 1 and small["runs"][1]["epochs"] == 2
    # populations member by member (no vmap, no vmapped memory probe): how, not what
    looped = _dry_run(capsys, "--preset", "quick", "--population-eval", "loop")
    rgs = {r["name"]: r for r in looped["runs"]}["eps0.3/rgs-hbox"]
    assert rgs["options"]["population_eval"] == "loop" and rgs["options"]["chunk_size"] == 1
    assert make_config("quick", {"population_eval": "loop"}).compared() == \
        make_config("quick").compared()
    # the MLP preset of before, unchanged: 784-32-32-10, eps 0.1, fine-tuned from the start
    mlp = _dry_run(capsys, "--preset", "quick-mlp")
    assert mlp["config"]["model"] == "absdsl.training.paradox:quick_fc"
    assert mlp["config"]["grad_start"] == "pgd" and mlp["config"]["eps"] == [0.1]
    assert [r["name"] for r in mlp["runs"]][:2] == ["pgd", "grad-box"]
    assert mlp["runs"][1]["epochs"] == 2 and "init" not in mlp["runs"][1]


def test_grad_start_pgd_seeds_grad_with_the_start_weights(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    assert main(["paradox", "--preset", "micro", "--optimizers", "grad", "--domains", "box",
                 "--grad-start", "pgd", "--test-subset", "10", "--out", str(out),
                 "--quiet"]) == 0
    capsys.readouterr()
    pgd_w = torch.load(out / "runs/pgd/checkpoints/epoch_0001.pt", weights_only=True)["model"]
    seed_w = torch.load(out / "runs/grad-box/checkpoints/epoch_0000.pt",
                        weights_only=True)["model"]
    assert all(torch.equal(pgd_w[k], seed_w[k]) for k in pgd_w)
    marker = json.loads((out / "runs/grad-box" / paradox.RUN_MARKER).read_text())
    assert marker["init_sha256"] == paradox.file_sha256(
        out / "runs/pgd/checkpoints/epoch_0001.pt")


def test_estimate_projects_every_run_and_touches_no_folder(tmp_path, capsys) -> None:
    out = tmp_path / "px"
    assert main(["paradox", "--preset", "micro", "--optimizers", "grad,pgpe,rgs", "--domains",
                 "box", "--estimate", "--estimate-steps", "1", "--quiet",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    for name in ("pgd", "grad-box", "pgpe-box", "rgs-box"):
        assert f"\n{name} " in text
    assert "projected: training" in text and "float64 bounds per digit" in text
    cfg = make_config("micro", {"optimizers": ["grad", "rgs"], "domains": ["box"],
                                "grad_epochs": 3})
    est = paradox.estimate(cfg, steps=1, digits=4, quiet=True)
    rows = {r["name"]: r for r in est["runs"]}
    assert rows["grad-box"]["steps"] == 3 * 2  # 3 epochs of 64 digits in batches of 32
    assert rows["grad-box"]["projected_seconds"] >= rows["grad-box"]["seconds_per_step"] * 5
    total = est["projected_seconds"]
    assert total["total"] == pytest.approx(total["train"] + total["certify"]
                                           + total["tightness"])
    assert set(est["bounds"]["0.1"]["domains"]) >= {"box", "hbox", "zonotope", "deeppoly"}


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
    assert "RGS" not in text  # columns only for the optimisers that ran
    # the paper's orderings, with the gap against two standard errors on n inputs
    f = paradox.findings(rows, n=100)
    ibp = f["paper_orderings"]["IBP best under GRAD"]
    assert ibp["holds"] is True and ibp["gap_points"] == pytest.approx(10.0)
    # 2 s.e. of 0.7 vs 0.6 on 100 inputs: 200 * sqrt((0.21 + 0.24) / 100) = 13.4 points
    assert ibp["two_se_points"] == pytest.approx(13.42, abs=0.01) and ibp["within_noise"]
    dp = f["paper_orderings"]["DeepPoly above IBP under PGPE"]
    assert dp["holds"] is True and dp["gap_points"] == pytest.approx(20.0)
    assert "DeepPoly above IBP under RGS" not in f["paper_orderings"]  # no RGS rows
    assert paradox.findings(flipped)["paper_orderings"]["IBP best under GRAD"]["holds"] is False
    text = paradox.format_tables([{"eps": 0.1, "rows": rows, "findings": f}], "mnist5k")
    assert "paper: IBP best under GRAD: yes (gap +10.0 points; 2 s.e. 13.4 points, " \
           "within noise)" in text


_SIGMOID = """
import torch.nn as nn

def make(info):
    c, h, w = info.shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.Sigmoid(),
                         nn.Linear(8, info.num_classes))
"""


_SORTED = """
import torch
import torch.nn as nn

class Sorted(nn.Module):
    def __init__(self, n_in, n_out):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(n_in, 8), nn.Linear(8, n_out)

    def forward(self, x):
        return self.fc2(torch.sort(self.fc1(x.flatten(1)), dim=1).values)

def make(info):
    c, h, w = info.shape
    return Sorted(c * h * w, info.num_classes)
"""


@pytest.mark.parametrize("factory, extra, needle, op", [
    # every built-in domain bounds every op of the table: an op outside it stops the first
    (_SORTED, ["--domains", "box,hbox"], "domain 'box' cannot train or bound model",
     "torch.sort"),
    (_SIGMOID, ["--domains", "box", "--complete", "milp"], "piecewise-linear networks only",
     "sigmoid"),
])
def test_a_domain_without_a_rule_for_an_op_fails_before_any_training(
        tmp_path, capsys, monkeypatch, factory, extra, needle, op) -> None:
    module = f"paradox_{op.replace('.', '_')}_net"  # one module name per model
    (tmp_path / f"{module}.py").write_text(factory)
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "px"
    err = _error(["--preset", "micro", "--model", f"{module}:make", *extra,
                  "--out", str(out)], capsys)
    assert needle in err and op in err
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
            "--complete", "milp", "--milp-time-limit", "10", "--test-subset", "10", "--out",
            str(out), "--quiet"]
    assert main(args) == 0
    capsys.readouterr()
    data = json.loads((out / "paradox.json").read_text())
    assert data["config"]["complete"] == "milp" and data["certification"]["complete"] == "milp"
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
    # the same folder without --complete: the same networks, certified again without it
    assert main(["paradox", "--preset", "micro", "--optimizers", "grad", "--domains", "box",
                 "--test-subset", "10", "--out", str(out), "--quiet"]) == 0
    again = json.loads((out / "paradox.json").read_text())
    assert again["config"]["complete"] is False
    for name in ("pgd", "grad-box"):
        cache = json.loads((out / "runs" / name / paradox.CERTIFY_CACHE).read_text())
        assert "stages" not in cache["key"]
        assert again["runs"][name]["checkpoint"] == data["runs"][name]["checkpoint"]


def test_complete_bab_certifies_every_network_and_reports_the_undecided(
        tmp_path, capsys, monkeypatch) -> None:
    """``--complete`` alone is ReLU branch and bound: it runs on every network, and the
    table says how many inputs stayed undecided per network."""
    import absdsl.training.certify as certify_mod
    from absdsl.verification import relu_bab_stage

    stages: list[relu_bab_stage.ReluBabStage] = []

    def keep(*args):
        stages.append(relu_bab_stage.ReluBabStage(*args))
        return stages[-1]

    monkeypatch.setitem(certify_mod._STAGES, "bab", keep)
    monkeypatch.setattr(certify_mod, "pgd_attack", lambda model, x, *a, **k: x.clone())
    out = tmp_path / "px"
    assert main(["paradox", "--preset", "micro", "--optimizers", "grad", "--domains", "box",
                 "--complete", "--milp-time-limit", "5", "--test-subset", "10", "--out",
                 str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    data = json.loads((out / "paradox.json").read_text())
    assert data["config"]["complete"] == "bab"
    assert data["certification"]["cascade"].endswith("-> ReLU branch and bound (5 s per input)")
    assert len(stages) == 2 and sum(len(st.stats) for st in stages) >= 1
    rows = data["tables"][0]["rows"]
    for name, row in zip(("pgd", "grad-box"), rows, strict=True):
        counts = data["runs"][name]["certify"]["counts"]
        assert row["undecided"]["grad"] == counts["unknown"]
        cache = json.loads((out / "runs" / name / paradox.CERTIFY_CACHE).read_text())
        assert cache["key"]["stages"] == ["bab"]
    assert "undecided inputs (unknown after every stage): PGD GRAD" in printed


def test_a_finished_folder_rerun_with_complete_is_certified_again_not_trained(
        tmp_path, monkeypatch) -> None:
    """--complete (and its limit) on a finished folder: the networks are kept (same
    checkpoints, nothing trained) and certified again through the complete stage."""
    import absdsl.training.certify as certify_mod

    out = tmp_path / "px"
    base = ["paradox", "--preset", "micro", "--optimizers", "grad", "--domains", "box",
            "--test-subset", "6", "--out", str(out), "--quiet"]
    assert main(base) == 0
    first = json.loads((out / "paradox.json").read_text())
    ran: list[str] = []

    def keep(*args):
        ran.append("bab")
        return certify_mod._STAGES_ORIGINAL_BAB(*args)

    from absdsl.verification import relu_bab_stage

    monkeypatch.setattr(certify_mod, "_STAGES_ORIGINAL_BAB", relu_bab_stage.ReluBabStage,
                        raising=False)
    monkeypatch.setitem(certify_mod._STAGES, "bab", keep)
    assert main([*base, "--complete", "--milp-time-limit", "2"]) == 0
    second = json.loads((out / "paradox.json").read_text())
    assert second["config"]["complete"] == "bab"
    assert ran  # the complete stage was built for the networks again
    for name, run in second["runs"].items():
        assert run["checkpoint"] == first["runs"][name]["checkpoint"]
        cache = json.loads((out / "runs" / name / paradox.CERTIFY_CACHE).read_text())
        assert cache["key"]["stages"] == ["bab"] and cache["key"]["milp_time_limit"] == 2.0
    statuses = {name: run.get("status") for name, run in second["timings"]["runs"].items()}
    assert set(statuses.values()) == {"skipped"}, statuses


def test_a_config_saved_before_complete_existed_still_matches(tmp_path) -> None:
    out = tmp_path / "px"
    # what an older version ran: GRAD fine-tuned from the start, no RGS, no tightness scope
    cfg = make_config("micro", {"grad_start": "pgd", "grad_init": "ibp",
                                "tightness_scope": "all"})
    old = cfg.to_dict()
    for key in [*paradox.ADDED_DEFAULTS, *paradox.STAGE_FIELDS["rgs"]]:
        del old[key]
    out.mkdir()
    (out / paradox.CONFIG_FILE).write_text(json.dumps({"format": paradox.FORMAT, "version": 1,
                                                       "config": old}))
    paradox.prepare_out(out, cfg, overwrite=False)  # the same experiment: accepted
    # a complete stage changes certification only (re-certified, not retrained): accepted
    paradox.prepare_out(out, make_config("micro", {"complete": True, "grad_start": "pgd",
                                                   "grad_init": "ibp",
                                                   "tightness_scope": "all"}),
                        overwrite=False)
    saved = json.loads((out / paradox.CONFIG_FILE).read_text())["config"]
    assert saved["complete"] is True
    # the micro preset now trains GRAD from scratch: another experiment
    with pytest.raises(ParadoxError, match="grad_init, grad_start, tightness_scope"):
        paradox.prepare_out(out, make_config("micro"), overwrite=False)


def test_an_interrupted_paradox_resumes_from_the_runs_it_finished(tmp_path, capsys,
                                                                  monkeypatch) -> None:
    from absdsl.training import loop
    from absdsl.training.checkpoint import CheckpointError

    out = tmp_path / "px"
    args = ["paradox", "--preset", "micro", "--optimizers", "grad", "--domains",
            "box,deeppoly", "--out", str(out), "--quiet"]
    real = loop.run_training

    def ctrl_c_in_the_third_run(cfg, run_dir, **kwargs):
        if Path(run_dir).name == "grad-deeppoly":  # Ctrl-C after its first step: the loop
            kwargs["on_step"] = lambda trainer, step: trainer.request_stop()  # saves, raises
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
    from absdsl.training.checkpoint import list_checkpoints

    assert [(e, b) for e, b, _ in list_checkpoints(out / "runs/grad-deeppoly")] == [(0, 1)]
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
    assert _lines(out / "runs/grad-deeppoly/metrics.jsonl") == 1
    # and it ends with the weights of the same run never stopped
    cfg = make_config("micro", {"optimizers": ["grad"], "domains": ["box", "deeppoly"]})
    (spec,) = [s for s in paradox.plan(cfg) if s.name == "grad-deeppoly"]
    real(paradox.train_config(spec), tmp_path / "ref", progress=False, final_eval=False)
    ref = torch.load(tmp_path / "ref/checkpoints/epoch_0001.pt", weights_only=True)["model"]
    got = torch.load(out / "runs/grad-deeppoly/checkpoints/epoch_0001.pt",
                     weights_only=True)["model"]
    assert all(torch.equal(ref[k], got[k]) for k in ref)

    # a checkpoint whose weights do not fit the model its config names: a clear error
    ckpt = torch.load(out / "runs/pgd/checkpoints/epoch_0001.pt", weights_only=True)
    ckpt["config"]["model"] = "fc"
    wrong = tmp_path / "wrong.pt"
    torch.save(ckpt, wrong)
    with pytest.raises(CheckpointError, match="do not fit model 'fc'"):
        paradox.load_network(out / "runs/pgd", wrong)


def test_standard_preset_follows_section_4_1_with_larger_smoothing_budgets(capsys) -> None:
    shown = _dry_run(capsys, "--preset", "standard")
    cfg, quick = shown["config"], make_config("quick")
    assert cfg["model"] == "cnn3" and cfg["eps"] == [0.1, 0.3]
    assert cfg["domains"] == ["box", "hbox", "crown-ibp", "deeppoly"]
    assert cfg["optimizers"] == ["grad", "pgpe", "rgs"] and cfg["grad_start"] == "scratch"
    runs = {r["name"]: r for r in shown["runs"]}
    assert len(runs) == 2 * (1 + 3 * 4)
    for eps, ramp in (("0.1", 0), ("0.3", 2)):  # the paper ramps smoothing at eps 0.3 only
        for opt, members in (("pgpe", "popsize"), ("rgs", "rgs_samples")):
            run = runs[f"eps{eps}/{opt}-deeppoly"]
            assert run["ramp_epochs"] == ramp
            steps = run["epochs"] * run["train_subset"] // run["batch_size"]
            quick_steps = getattr(quick, f"{opt}_epochs") * getattr(quick, f"{opt}_batches")
            assert steps >= 4 * quick_steps  # 150 steps against the quick preset's 32
            assert run["options"][members] >= 2 * getattr(quick, members)
            assert run["lr_milestones"] and run["lr_decay"] == 0.4  # decays late, as 4.1
        grad = runs[f"eps{eps}/grad-deeppoly"]
        assert grad["epochs"] > quick.grad_epochs and grad["init"] == "default"


def test_standard_preset_projects_under_three_hours_at_the_measured_costs() -> None:
    from absdsl.experiments.paradox.estimate import project
    from absdsl.experiments.paradox.measured import STANDARD_ESTIMATE

    cfg = make_config("standard")
    projected = project(cfg, STANDARD_ESTIMATE)
    assert set(projected["runs"]) == {spec.name for spec in paradox.plan(cfg)}
    assert 3600 < projected["total"] <= 3 * 3600
    # the budget is what costs: twice the generations would not fit
    longer = make_config("standard", {"pgpe_epochs": 12, "rgs_epochs": 12})
    assert project(longer, STANDARD_ESTIMATE)["total"] > projected["total"] + 1800


def test_projection_from_unit_costs_repeats_the_estimate(capsys) -> None:
    from absdsl.experiments.paradox.estimate import project

    cfg = make_config("micro", {"optimizers": ["grad", "pgpe", "rgs"], "domains": ["box"]})
    est = paradox.estimate(cfg, steps=1, digits=4, quiet=True)
    rows = {r["name"]: r["projected_seconds"] for r in est["runs"]}
    again = project(cfg, {"step_units": est["step_units"], "bounds": est["bounds"]})
    assert again["runs"] == pytest.approx(rows, rel=1e-9)
    assert again["total"] == pytest.approx(est["projected_seconds"]["total"], rel=1e-9)
    # popsize scales PGPE's steps, nothing else
    bigger = make_config("micro", {"optimizers": ["grad", "pgpe", "rgs"], "domains": ["box"],
                                   "popsize": 8})
    more = project(bigger, {"step_units": est["step_units"], "bounds": est["bounds"]})
    assert more["runs"]["pgpe-box"] > again["runs"]["pgpe-box"]
    assert more["runs"]["rgs-box"] == pytest.approx(again["runs"]["rgs-box"])
    with pytest.raises(ParadoxError, match="no measured step cost for grad-deeppoly@0.1"):
        project(make_config("micro"), {"step_units": est["step_units"],
                                       "bounds": est["bounds"]})
