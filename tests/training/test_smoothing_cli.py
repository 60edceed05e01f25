"""``absdsl train --optimizer pgpe|rgs``: run folder, checkpoints with PGPE state, --resume."""

from __future__ import annotations

import json

import pytest
import torch

from absdsl.cli import main

COMMON = [
    "train", "--dataset", "mnist5k", "--model", "cnn3", "--domain", "box",
    "--train-subset", "64", "--test-subset", "32", "--batch-size", "32", "--eps", "0.05",
    "--warmup-epochs", "0", "--ramp-epochs", "1", "--lr", "0.005", "--lr-milestones", "1",
    "--eval-every", "0", "--quiet", "--no-final-eval",
]


def _final_weights(run) -> dict[str, torch.Tensor]:
    ckpts = sorted((run / "checkpoints").glob("epoch_*.pt"))
    return torch.load(ckpts[-1], weights_only=True)


@pytest.mark.parametrize("rule", ["pgpe", "rgs"])
def test_train_resume_equals_straight_run(tmp_path, rule: str) -> None:
    extra = ["--optimizer", rule, "--popsize", "8", "--sigma", "0.01", "--rgs-samples", "4"]
    straight, split = tmp_path / "straight", tmp_path / "split"
    assert main([*COMMON, *extra, "--epochs", "2", "--out", str(straight)]) == 0
    assert main([*COMMON, *extra, "--epochs", "1", "--out", str(split)]) == 0
    assert main(["train", "--resume", str(split), "--epochs", "2", "--quiet",
                 "--no-final-eval"]) == 0

    a, b = _final_weights(straight), _final_weights(split)
    assert a["epoch"] == b["epoch"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["step_rule_name"] == rule
    if rule == "pgpe":
        state = a["step_rule"]["pgpe"]
        assert torch.equal(state["sigma"], b["step_rule"]["pgpe"]["sigma"])
        assert state["options"]["popsize"] == 8
        assert state["lr_scale"] == pytest.approx(0.2)  # milestone 1 passed (preset decay 0.2)
    lines = (straight / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2 and all("loss" in json.loads(line) for line in lines)


def test_bad_pgpe_option_is_reported_before_training(tmp_path, capsys) -> None:
    code = main([*COMMON, "--optimizer", "pgpe", "--popsize", "7", "--epochs", "1",
                 "--out", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "even" in err
    assert not list((tmp_path / "run").glob("checkpoints/*.pt"))


def test_pgpe_metrics_reach_metrics_jsonl(tmp_path) -> None:
    run = tmp_path / "run"
    assert main([*COMMON, "--optimizer", "pgpe", "--popsize", "8", "--sigma", "0.01",
                 "--sigma-lr", "0.1", "--epochs", "2", "--out", str(run)]) == 0
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    # the centre learning rate (not NaN), decayed by 0.2 at milestone 1
    assert [r["lr"] for r in lines] == [pytest.approx(0.001), pytest.approx(0.001)]
    for r in lines:
        assert r["loss_min"] <= r["loss"]
        assert r["loss_std"] > 0 and r["step_norm"] > 0 and r["nonfinite"] == 0
    # sigma is the value at the epoch's end: the checkpoint's mean sigma
    final = _final_weights(run)["step_rule"]["pgpe"]["sigma"]
    assert lines[-1]["sigma"] == pytest.approx(float(final.mean()), rel=1e-6)
    assert lines[0]["sigma"] != pytest.approx(0.01)  # sigma_lr > 0: it moved


def test_resume_does_not_need_the_init_checkpoint(tmp_path) -> None:
    from absdsl.training.data import dataset_info
    from absdsl.training.models import cnn3

    init = tmp_path / "init.pt"
    torch.manual_seed(7)
    torch.save({"model": cnn3(dataset_info("mnist5k")).state_dict()}, init)
    run = tmp_path / "run"
    extra = ["--optimizer", "pgpe", "--popsize", "8", "--init-checkpoint", str(init)]
    assert main([*COMMON, *extra, "--epochs", "1", "--out", str(run)]) == 0
    init.unlink()  # moved or deleted after the run started: the run's checkpoint has it all
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet",
                 "--no-final-eval"]) == 0
    assert _final_weights(run)["epoch"] == 2
    # a fresh run with the missing file still fails, before any work
    code = main([*COMMON, *extra, "--epochs", "1", "--out", str(tmp_path / "fresh")])
    assert code == 2
