"""Checkpoints: atomic writes survive a full disk; bad files get clear errors."""

from __future__ import annotations

import errno

import pytest
import torch

from absdsl.errors import AbsdslError
from absdsl.training import checkpoint as ck


def _state(value: float) -> dict:
    return {"format": ck.FORMAT, "version": 1, "model": {"w": torch.full((2,), value)},
            "config": {}, "epoch": 1, "batch": 0, "rng": ck.rng_state()}


def test_round_trip_is_weights_only(tmp_path):
    path = tmp_path / "checkpoints" / ck.checkpoint_name(1)
    ck.atomic_save(_state(1.0), path)
    assert torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.ones(2))
    assert ck.load_checkpoint(path)["epoch"] == 1
    assert ck.latest_checkpoint(tmp_path) == path


def test_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    ck.atomic_save(_state(1.0), path)

    def full_disk(obj, fh):
        fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(AbsdslError, match="No space left on device.*intact"):
        ck.atomic_save(_state(2.0), path)
    monkeypatch.undo()
    assert torch.equal(ck.load_checkpoint(path)["model"]["w"], torch.ones(2))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(AbsdslError, match="not a readable checkpoint"):
        ck.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weight": torch.zeros(3)}, foreign)
    with pytest.raises(AbsdslError, match="not an absdsl training checkpoint"):
        ck.load_checkpoint(foreign)
    truncated = tmp_path / "trunc.pt"
    ck.atomic_save(_state(1.0), truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.raises(AbsdslError, match="not a readable checkpoint"):
        ck.load_checkpoint(truncated)
    with pytest.raises(AbsdslError, match="no checkpoint at"):
        ck.load_checkpoint(tmp_path / "missing.pt")


def test_rng_state_round_trip():
    state = ck.rng_state()
    a = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    ck.set_rng_state(state)
    b = (torch.rand(3), __import__("random").random(), __import__("numpy").random.rand())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
