"""Checkpoints: atomic writes, weights-only loading, and clear errors for bad files.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, so
``torch.load(path, weights_only=True)`` reads it. It is written to a temporary file in the
same folder and renamed over the target, so a full disk or a crash never leaves a truncated
checkpoint behind and never destroys the previous one.
"""

from __future__ import annotations

import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from absdsl.errors import AbsdslError

FORMAT = "absdsl-train-checkpoint"
VERSION = 1
_NAME = re.compile(r"^epoch_(\d+)(?:_step_(\d+))?\.pt$")


class CheckpointError(AbsdslError):
    """A checkpoint that cannot be written, read, or is not one of ours."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CheckpointError(
            f"could not write {path}: {err.strerror or err} (the previous checkpoints are intact)"
        ) from err
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def atomic_write_text(text: str, path: str | Path) -> None:
    """Write a text file by temp file + rename (metrics, configs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise CheckpointError(f"could not write {path}: {err.strerror or err}") from err


def rng_state() -> dict[str, Any]:
    """The RNG states that training touches (torch CPU, CUDA if present, numpy, python)."""
    np_state = np.random.get_state(legacy=True)
    # The global generator is MT19937, whose legacy state is a tuple (a dict only for others).
    assert isinstance(np_state, tuple), "numpy's global generator is not MT19937"
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": _py_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _py_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    return [int(version), list(internal), gauss]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state.get("numpy")
    if np_state is not None:
        np.random.set_state(
            (
                "MT19937",
                np_state["keys"].numpy().astype(np.uint32),
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached"],
            )
        )
    py = state.get("python")
    if py is not None:
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and check a training checkpoint; corrupt and foreign files get a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure means "not a readable checkpoint"
        raise CheckpointError(
            f"{path} is not a readable checkpoint (corrupt, truncated, or not saved by "
            f"torch.save with plain data): {type(err).__name__}: {str(err)[:200]}"
        ) from err
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        what = "a bare state_dict" if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(
            f"{path} is not an absdsl training checkpoint (found {what}); "
            "absdsl train writes checkpoints under RUN/checkpoints/"
        )
    if int(obj.get("version", -1)) > VERSION:
        raise CheckpointError(f"{path} has checkpoint version {obj.get('version')}; "
                              f"this absdsl reads up to {VERSION}")
    for key in ("model", "config", "epoch", "batch"):
        if key not in obj:
            raise CheckpointError(f"{path} is missing {key!r}: not a complete checkpoint")
    return obj


def checkpoint_name(epoch: int, batch: int = 0) -> str:
    """``epoch_0003.pt`` after 3 finished epochs; mid-epoch: ``epoch_0003_step_0012.pt``."""
    return f"epoch_{epoch:04d}.pt" if batch == 0 else f"epoch_{epoch:04d}_step_{batch:04d}.pt"


def list_checkpoints(run_dir: str | Path) -> list[tuple[int, int, Path]]:
    """(finished epochs, batches into the next epoch, path), oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    if folder.is_dir():
        for p in folder.iterdir():
            m = _NAME.match(p.name)
            if m:
                found.append((int(m.group(1)), int(m.group(2) or 0), p))
    return sorted(found)


def latest_checkpoint(run_dir: str | Path) -> Path:
    found = list_checkpoints(run_dir)
    if not found:
        raise CheckpointError(f"{run_dir} holds no checkpoints (expected {run_dir}/checkpoints/)")
    return found[-1][2]
