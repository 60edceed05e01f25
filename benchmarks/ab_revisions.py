"""A/B of two whole revisions: bound-program and training-step timings, alternating, one run.

    python benchmarks/ab_revisions.py --base 88194b1 --head main
    python benchmarks/ab_revisions.py --base 88194b1 --head . --nets cnn3 --rounds 5

Each revision is exported from git into its own folder under the temporary directory (``.``
is the working tree itself) and imported in its own worker process (``PYTHONPATH`` set to
that folder, so nothing of one tree's layout leaks into the other's). Both workers build the
same networks from the same seed and compile them through the public API
(``absdsl.compile``), then the parent asks them in turn, base then head, head then base
on the next round, to time the same calls:

- ``bounds`` (as ``absdsl bench bounds``): ``prog(lo, hi)`` without gradients;
- ``train`` (as ``absdsl bench train``'s GRAD step): lower bounds of the margins
  ``C @ f(x)``, cross-entropy of their negation, backward.

It prints each tree's median per call, the ratio head / base (below 1: head is faster) and
whether the two trees' float64 bounds are bit-identical on the same inputs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# ---- the worker: runs inside one tree, answers one JSON request per line -----------------


def _nets() -> dict[str, Any]:
    """Networks on MNIST-shaped inputs (built here, so that both trees time the same ones):
    CNN3 and CNN5 as in ``training/models.py``, and a 3-layer MLP."""
    import torch.nn as nn

    return {
        "cnn3": lambda: nn.Sequential(
            nn.Conv2d(1, 8, 5, 2, 2), nn.ReLU(), nn.Conv2d(8, 8, 4, 2, 1), nn.ReLU(),
            nn.Flatten(), nn.Linear(8 * 7 * 7, 10)),
        "cnn5": lambda: nn.Sequential(
            nn.Conv2d(1, 16, 5, 2, 2), nn.ReLU(), nn.Conv2d(16, 16, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(16, 32, 4, 2, 1), nn.ReLU(), nn.Flatten(), nn.Linear(32 * 3 * 3, 512),
            nn.ReLU(), nn.Linear(512, 10)),
        "mlp": lambda: nn.Sequential(
            nn.Flatten(), nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 10)),
    }


class _Worker:
    """Compiled programs and inputs of one tree, keyed by (net, domain, batch, dtype)."""

    def __init__(self, threads: int, eps: float) -> None:
        import torch

        import absdsl

        torch.set_num_threads(threads)
        try:  # the CPU allocator setting: made at import before the redesign, by the CLI after
            from absdsl import cpu_memory
            cpu_memory.apply_default()
        except (ImportError, AttributeError):
            pass
        self.torch, self.absdsl, self.eps = torch, absdsl, eps
        self.cache: dict[tuple, tuple] = {}

    def _setup(self, net: str, domain: str, batch: int, dtype_name: str) -> tuple:
        key = (net, domain, batch, dtype_name)
        if key not in self.cache:
            torch = self.torch
            dtype = getattr(torch, dtype_name)
            torch.manual_seed(0)
            model = _nets()[net]().to(dtype).eval()
            prog = self.absdsl.compile(model, domain, input_shape=(1, 28, 28))
            g = torch.Generator().manual_seed(1)
            x = torch.rand(batch, 1, 28, 28, generator=g).to(dtype)
            lo, hi = (x - self.eps).clamp(0, 1), (x + self.eps).clamp(0, 1)
            y = torch.randint(0, 10, (batch,), generator=g)
            # margin rows e_y - e_j for every j != y: the specification training bounds
            eye = torch.eye(10, dtype=dtype)
            spec = torch.stack([eye[int(t)] - eye[[j for j in range(10) if j != int(t)]]
                                for t in y])
            self.cache[key] = (model, prog, lo, hi, spec)
        return self.cache[key]

    def _call(self, task: str, setup: tuple) -> None:
        torch = self.torch
        model, prog, lo, hi, spec = setup
        if task == "bounds":
            with torch.no_grad():
                prog(lo, hi)
            return
        model.zero_grad(set_to_none=True)
        lb, _ = prog(lo, hi, spec, upper=False)
        logits = torch.cat([torch.zeros_like(lb[:, :1]), -lb], dim=1)
        target = torch.zeros(lb.shape[0], dtype=torch.long)
        torch.nn.functional.cross_entropy(logits, target).backward()

    def fingerprint(self, net: str, domain: str, batch: int) -> str:
        """sha256 of the float64 bounds (with and without the margin spec)."""
        torch = self.torch
        _, prog, lo, hi, spec = self._setup(net, domain, batch, "float64")
        digest = hashlib.sha256()
        with torch.no_grad():
            for out in (*prog(lo, hi), *prog(lo, hi, spec)):
                digest.update(out.contiguous().numpy().tobytes())
        return digest.hexdigest()

    def time(self, task: str, net: str, domain: str, batch: int, calls: int,
             warmup: int) -> list[float]:
        setup = self._setup(net, domain, batch, "float32")
        for _ in range(warmup):
            self._call(task, setup)
        out = []
        for _ in range(calls):
            t0 = time.perf_counter()
            self._call(task, setup)
            out.append(time.perf_counter() - t0)
        return out


def worker_main(threads: int, eps: float) -> None:
    """Answer requests on stdin with one JSON line each on stdout."""
    w = _Worker(threads, eps)
    print(json.dumps({"absdsl": str(Path(str(w.absdsl.__file__)).resolve().parent)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "fingerprint":
            reply: Any = w.fingerprint(req["net"], req["domain"], req["batch"])
        else:
            reply = w.time(req["task"], req["net"], req["domain"], req["batch"],
                           req["calls"], req["warmup"])
        print(json.dumps({"reply": reply}), flush=True)


# ---- the parent: trees, workers, alternation, the table ---------------------------------


def export_tree(rev: str, into: Path) -> Path:
    """The files of ``rev`` under ``into/<commit>`` (``.``: the working tree itself)."""
    if rev == ".":
        return ROOT
    commit = subprocess.run(["git", "rev-parse", "--short=12", rev], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    folder = into / commit
    if not (folder / "absdsl" / "__init__.py").exists():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "archive", commit], cwd=ROOT, check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


class _Tree:
    def __init__(self, label: str, folder: Path, threads: int, eps: float) -> None:
        env = dict(os.environ, PYTHONPATH=str(folder))
        self.label = label
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker",
             "--threads", str(threads), "--eps", str(eps)],
            cwd=str(folder), env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        hello = self._read()
        where = Path(hello["absdsl"])
        if not where.is_relative_to(folder):
            raise SystemExit(f"{label}: the worker imported absdsl from {where}, not {folder}")
        self.where = where

    def _read(self) -> Any:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"{self.label}: the worker stopped (see its error above)")
        return json.loads(line)

    def ask(self, **req: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(req) + "\n")
        self.proc.stdin.flush()
        return self._read()["reply"]

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", default="88194b1", help="git revision (default 88194b1)")
    ap.add_argument("--head", default="main", help="git revision, or . for the working tree")
    ap.add_argument("--nets", default="cnn3,mlp", help="comma-separated: cnn3,cnn5,mlp")
    ap.add_argument("--domains", default="box,zonotope,deeppoly,crown-ibp")
    ap.add_argument("--tasks", default="bounds,train")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=5, help="alternations per row")
    ap.add_argument("--calls", type=int, default=3, help="timed calls per tree and round")
    ap.add_argument("--warmup", type=int, default=1, help="untimed calls before each timing")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eps", type=float, default=0.05)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "absdsl_ab",
                    help="where the revisions' files are exported (kept for the next run)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker_main(args.threads, args.eps)
        return 0

    trees = [_Tree(rev, export_tree(rev, args.workdir), args.threads, args.eps)
             for rev in (args.base, args.head)]
    for t in trees:
        print(f"{t.label}: absdsl from {t.where}", flush=True)
    print(f"batch {args.batch}, {args.threads} thread(s), {args.rounds} rounds x {args.calls} "
          f"calls per tree (alternating), medians in ms", flush=True)
    header = (f"{'task':7} {'net':5} {'domain':10} {args.base[:10]:>10} {args.head[:10]:>10} "
              f"{'head/base':>9}  float64 bounds")
    print(header + "\n" + "-" * len(header), flush=True)
    ratios = []
    try:
        for net in args.nets.split(","):
            for domain in args.domains.split(","):
                prints = [t.ask(op="fingerprint", net=net, domain=domain, batch=args.batch)
                          for t in trees]
                same = "bit-identical" if prints[0] == prints[1] else "DIFFER"
                for task in args.tasks.split(","):
                    times: list[list[float]] = [[], []]
                    for r in range(args.rounds):
                        order = (0, 1) if r % 2 == 0 else (1, 0)
                        for i in order:
                            times[i] += trees[i].ask(op="time", task=task, net=net,
                                                     domain=domain, batch=args.batch,
                                                     calls=args.calls, warmup=args.warmup)
                    med = [statistics.median(ts) * 1e3 for ts in times]
                    ratios.append(med[1] / med[0])
                    print(f"{task:7} {net:5} {domain:10} {med[0]:10.2f} {med[1]:10.2f} "
                          f"{med[1] / med[0]:9.3f}  {same}", flush=True)
    finally:
        for t in trees:
            t.close()
    geo = statistics.geometric_mean(ratios)
    print(f"geometric mean of head/base over {len(ratios)} rows: {geo:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
