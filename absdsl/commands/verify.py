"""``absdsl verify``: decide a VNN-LIB property on an ONNX network (VNN-COMP result words).

    absdsl verify model.onnx prop.vnnlib [--timeout S] [--json] [--out RESULT_FILE]

Prints ``unsat`` (the property holds), ``sat`` with a counterexample re-checked by
onnxruntime, ``unknown`` or ``timeout``; exit status 0 for any of them and 2 for bad input
(one line on stderr, nothing claimed). ``--out`` writes the result file of the VNN-COMP
convention (the word, then the counterexample as ``((X_0 v) ... (Y_0 v) ...)``).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from absdsl.errors import InputError
from absdsl.training.checkpoint import atomic_write_text
from absdsl.verification import COMPLETE_STAGES
from absdsl.verification.verify import VerifyResult, decide_files


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("onnx", metavar="MODEL.onnx", help="the network")
    parser.add_argument("vnnlib", metavar="PROP.vnnlib", help="the property (VNN-LIB 1.0)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="wall-clock budget for the whole run, loading included (300)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--out", metavar="FILE", default=None,
                        help="also write the VNN-COMP result file")
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="a refuting row's lower bound must exceed b by this (1e-6)")
    parser.add_argument("--pgd-steps", type=int, default=50)
    parser.add_argument("--pgd-restarts", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: the competition's one-core setting)")
    parser.add_argument("--complete", choices=COMPLETE_STAGES, default="auto",
                        help="the complete stage: branch and bound on the input box (bab) or "
                             "on ReLU phases (relu), the exact MILP, or none; auto: bab for "
                             "networks with at most 64 inputs, relu otherwise (milp without "
                             "ReLUs)")


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise InputError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    if not (math.isfinite(args.tolerance) and args.tolerance > 0):
        raise InputError(f"--tolerance must be > 0, got {args.tolerance}")
    if args.pgd_steps < 1 or args.pgd_restarts < 1:
        raise InputError("--pgd-steps and --pgd-restarts must be >= 1")
    if args.threads < 1:
        raise InputError(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    result, prop = decide_files(args.onnx, args.vnnlib, timeout=args.timeout,
                                tolerance=args.tolerance, pgd_steps=args.pgd_steps,
                                pgd_restarts=args.pgd_restarts, seed=args.seed, start=start,
                                complete=args.complete)
    assert isinstance(result, VerifyResult)
    if args.out:
        atomic_write_text(result.vnncomp_text(), Path(args.out))
    if args.json:
        data = result.to_json()
        data.update({"network": args.onnx, "property": args.vnnlib,
                     "cases": len(prop.cases) if prop else None,
                     "polytopes": sum(len(c.polytopes) for c in prop.cases) if prop else None,
                     "tolerance": args.tolerance, "timeout": args.timeout})
        print(json.dumps(data))
    else:
        print(result.vnncomp_text(), end="")
        detail = ", ".join(f"{k}: {v}" for k, v in result.refuted.items()) or "none"
        print(f"# {result.seconds:.2f} s; polytopes refuted by stage: {detail}; "
              f"open: {result.open_polytopes}" + (f"; decided by {result.stage}"
                                                  if result.stage else "")
              + (f"; {result.branches} branches" if result.branches else ""))
        for note in result.notes:
            print(f"# note: {note}")
    return 0
