"""The command line: bad input gets one clear line and exit code 2; train then resume."""

from __future__ import annotations

import json

import pytest
import torch

from absdsl.cli import main

TINY = ["--train-subset", "64", "--test-subset", "20", "--batch-size", "32", "--epochs", "1",
        "--eval-every", "0", "--eval-pgd-steps", "2", "--eval-pgd-restarts", "1", "--quiet"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "svhn"], "unknown dataset 'svhn'"),
        (["--model", "vgg16"], "unknown model 'vgg16'"),
        (["--domain", "octagon"], "unknown domain 'octagon'"),
        (["--eps", "1.5"], r"eps must lie in \[0, 1\]"),
        (["--optimizer", "sgd"], "unknown optimizer 'sgd'"),
        (["--lr-milestones", "a,b"], "--lr-milestones"),
    ],
)
def test_train_rejects_bad_input(tmp_path, capsys, args, message):
    assert main(["train", "--out", str(tmp_path / "r"), *TINY, *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert __import__("re").search(message, err), err


def test_certify_rejects_corrupt_and_foreign_checkpoints(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["certify", str(bad)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, foreign)
    assert main(["certify", str(foreign)]) == 2
    assert "not an absdsl training checkpoint" in capsys.readouterr().err


def test_train_from_toml_then_resume_longer(tmp_path, capsys):
    config = tmp_path / "c.toml"
    config.write_text('model = "cnn3"\ndomain = "ibp"\neps = 0.05\nramp-epochs = 1\n')
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "--out", str(run), *TINY]) == 0
    out = capsys.readouterr().out
    assert '"domain": "box"' in out and "run folder" in out
    assert main(["train", "--resume", str(run), "--epochs", "2", "--quiet"]) == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["epochs"] == 2
