"""The allocator setting of absdsl/cpu_memory.py: on, switchable off, and it removes faults."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Counts the page faults of 10 calls of a Box program after 3 warm-up calls.
_PROBE = """
import json, resource, torch
import torch.nn as nn
import absdsl
from absdsl import cpu_memory
cpu_memory.apply_default()  # what the absdsl command and training do when they start
torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(), nn.Conv2d(8, 8, 4, 2, 1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(392, 10)).eval()
x = torch.rand(128, 1, 28, 28)
prog = absdsl.compile(model, domain="box")
with torch.no_grad():
    for _ in range(3):
        prog(x - 0.01, x + 0.01)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        prog(x - 0.01, x + 0.01)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"applied": cpu_memory.apply_default(), "faults": faults}))
"""


def _probe(switch: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("ABSDSL_KEEP_FREED_MEMORY", None)
    if switch is not None:
        env["ABSDSL_KEEP_FREED_MEMORY"] = switch
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_freed_memory_is_kept_and_calls_stop_faulting() -> None:
    on, off = _probe(None), _probe("0")
    assert on["applied"] is True and off["applied"] is False
    # the default allocator faults in fresh pages on every call; the tuned one reuses them
    assert off["faults"] > 1000, off
    assert on["faults"] * 10 < off["faults"], (on, off)
