"""``absdsl bench train``: rows at initialisation and on trained weights, each divided by a
standard epoch timed alongside it; the pre-training schedule; bad options refused early."""

from __future__ import annotations

import json

import pytest
import torch

from absdsl.cli import main
from absdsl.experiments import bench_train
from absdsl.training.checkpoint import load_checkpoint

# 512 digits in batches of 128: 4 batches an epoch, so a run takes a few seconds
SMALL = ["--train-subset", "512", "--batch-size", "128", "--steps", "2"]


def test_bench_train_rows_at_init_and_on_trained_weights(tmp_path, capsys):
    out, saved = tmp_path / "bench.json", tmp_path / "weights"
    assert main(["bench", "train", "--domains", "box", *SMALL, "--trained-epochs", "2",
                 "--trained-batches", "2", "--save-weights", str(saved),
                 "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "x standard" in text and "<= 2.5x" in text
    assert "speed targets on the trained weights:" in text
    init, trained = json.loads(out.read_text())["rows"]
    assert (init["domain"], init["weights"]) == ("box", "init")
    assert (trained["domain"], trained["weights"]) == ("box", "trained")
    for r in (init, trained):
        assert r["ratio"] == r["seconds"] / r["standard_seconds"] and r["seconds"] > 0
        assert 0.0 <= r["unstable"] <= 1.0 and r["target"] == 2.5
    # the trained weights are not the initial ones: their bounds decide other neurons
    assert trained["unstable"] != init["unstable"]
    assert trained["target_text"].startswith("<= 2.5x: ")

    # the saved checkpoint loads (weights_only) and times the same weights again
    ckpt = load_checkpoint(saved / "box" / "checkpoints" / "epoch_0002.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["domain"] == "box"
    again = tmp_path / "again.json"
    assert main(["bench", "train", "--domains", "box", *SMALL, "--no-init",
                 "--weights", f"box={saved / 'box'}", "--json", str(again)]) == 0
    row, = json.loads(again.read_text())["rows"]
    assert row["weights"] == "trained" and "epoch_0002.pt" in row["source"]
    assert row["unstable"] == trained["unstable"]


class _Recorder:
    """A step rule that records the schedule values it is given."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, float, float]] = []

    def step(self, batch) -> dict[str, float]:
        self.seen.append((batch.epoch, batch.step, batch.eps, batch.beta))
        return {"loss": 0.0}

    def on_epoch_end(self, epoch: int) -> None:
        pass


def test_pretrain_schedule_warm_up_ramp_then_full_eps(monkeypatch):
    rec = _Recorder()
    monkeypatch.setattr(bench_train, "_rule", lambda model, cfg: rec)
    b = bench_train._bench(dict(dataset="mnist5k", model="cnn3", eps=0.1, batch_size=128,
                                epochs=1, warmup_epochs=0, ramp_epochs=0, train_subset=512,
                                method="certified", domain="crown-ibp"))
    bench_train.pretrain(b, torch.nn.Linear(1, 1), epochs=4, batches=3)
    by_epoch = {e: [s for s in rec.seen if s[0] == e] for e in range(4)}
    assert [len(v) for v in by_epoch.values()] == [4, 3, 3, 3]  # warm-up epoch is whole
    assert all(eps == 0.0 for _, _, eps, _ in by_epoch[0])
    ramp = [eps for e in (1, 2) for _, _, eps, _ in by_epoch[e]]
    assert ramp == sorted(ramp) and 0.0 <= ramp[0] < ramp[-1] < 0.1
    assert all(eps == pytest.approx(0.1) for _, _, eps, _ in by_epoch[3])
    betas = [beta for e in (1, 2, 3) for _, _, _, beta in by_epoch[e]]
    assert betas[0] == 1.0 and betas[-1] == 0.0  # CROWN-IBP's beta ramps with eps


@pytest.mark.parametrize("argv, message", [
    (["--trained-epochs", "1"], "--trained-epochs must be 0 or >= 2"),
    (["--steps", "-1"], "--steps must be >= 0"),
    (["--weights", "nodomain=x.pt"], "unknown domain 'nodomain'"),
    (["--weights", "missing-run"], "no checkpoint at missing-run"),
])
def test_bench_train_bad_options(argv, message, capsys):
    assert main(["bench", "train", "--domains", "box", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bench_train_refuses_weights_of_another_model(tmp_path, capsys):
    path = tmp_path / "cnn3.pt"
    model = torch.nn.Linear(2, 2)
    torch.save({"format": "absdsl-train-checkpoint", "version": 1, "config": {"model": "fc"},
                "model": model.state_dict(), "epoch": 1, "batch": 0}, path)
    assert main(["bench", "train", "--domains", "box", "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert "holds a 'fc' model" in err and "--model 'cnn3'" in err
