"""Data-parallel GRAD: two gloo processes under torchrun end where one process does."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

from absdsl.training.checkpoint import latest_checkpoint, load_checkpoint

REPO = Path(__file__).resolve().parents[2]
ARGS = ["train", "--train-subset", "192", "--test-subset", "10", "--batch-size", "64",
        "--epochs", "2", "--ramp-epochs", "1", "--warmup-epochs", "0", "--eval-every", "0",
        "--no-final-eval", "--quiet", "--domain", "box", "--eps", "0.1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    return env


def _single(out: Path, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "absdsl", *ARGS, "--out", str(out)],
                   check=True, env=_env(), cwd=cwd, capture_output=True, timeout=300)


def _two_processes(args: list[str], cwd: Path) -> None:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
           "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
           "-m", "absdsl", *args]
    proc = subprocess.run(cmd, env=_env(), cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _same_final_weights(single: Path, double: Path) -> dict:
    """Both runs ended at step 6, on 1 and 2 processes, with the same weights."""
    a = load_checkpoint(latest_checkpoint(single))
    b = load_checkpoint(latest_checkpoint(double))
    assert a["step"] == b["step"] == 6
    assert (a["world_size"], b["world_size"]) == (1, 2)
    for key, value in a["model"].items():
        assert torch.allclose(value, b["model"][key], rtol=1e-4, atol=1e-6), key
    return b


def test_two_gloo_processes_match_one_process(tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    _single(single, tmp_path)
    _two_processes([*ARGS, "--out", str(double)], tmp_path)
    b = _same_final_weights(single, double)
    # and the run really trained: the weights moved during the second epoch
    first = load_checkpoint(double / "checkpoints" / "epoch_0001.pt")["model"]
    assert any(not torch.equal(v, first[k]) for k, v in b["model"].items())


def test_a_run_interrupted_with_one_process_resumes_with_two(tmp_path):
    """The data order is global and ranks split each batch, so the world size may change
    at a resume: one process for epoch 1, two for epoch 2, ends where one process does."""
    single, resumed = tmp_path / "single", tmp_path / "resumed"
    for out in (single, resumed):  # two epochs each
        _single(out, tmp_path)
    # the state of a run stopped during epoch 2: its last checkpoint and metrics line gone
    (resumed / "checkpoints" / "epoch_0002.pt").unlink()
    lines = (resumed / "metrics.jsonl").read_text().splitlines()
    (resumed / "metrics.jsonl").write_text("\n".join(lines[:1]) + "\n")
    _two_processes(["train", "--resume", str(resumed), "--quiet"], tmp_path)
    _same_final_weights(single, resumed)
    epochs = [json.loads(line)["epoch"]
              for line in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
