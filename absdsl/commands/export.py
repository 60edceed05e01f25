"""``absdsl export``: a trained run as an ONNX file, checked by onnxruntime.

    absdsl export RUN --onnx out.onnx [-n N] [--dynamic-batch]

The network is written with its normalisation layer (inputs stay in pixel units, as in
training), then onnxruntime runs the file on the run's test split and the largest difference
from the torch model is printed. A difference above ``--check-tolerance`` (relative to the
largest logit) removes the file and exits with status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from absdsl.errors import AbsdslError, InputError
from absdsl.training.cli_certify import load_run_model
from absdsl.training.data import eval_batches, load_dataset
from absdsl.verification.onnx_io import export_onnx, onnxruntime_outputs, onnxruntime_session


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="RUN_OR_CHECKPOINT",
                        help="a run folder (its newest checkpoint) or a checkpoint file")
    parser.add_argument("--onnx", required=True, metavar="FILE", help="the ONNX file to write")
    parser.add_argument("-n", "--num", type=int, default=None,
                        help="check on the first N test inputs only (default: all)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help="a symbolic batch axis (default: batch 1, as VNN-COMP networks)")
    parser.add_argument("--check-tolerance", type=float, default=1e-4,
                        help="largest allowed |torch - onnxruntime| / (1 + max |logit|)")
    parser.add_argument("--data-root", default=None, help="folder of torchvision data sets")


def run(args: argparse.Namespace) -> int:
    out = Path(args.onnx)
    if out.suffix.lower() != ".onnx":
        raise InputError(f"--onnx {out}: the file name must end in .onnx")
    if args.num is not None and args.num < 1:
        raise InputError(f"-n/--num must be >= 1, got {args.num}")
    if not (args.check_tolerance > 0):
        raise InputError(f"--check-tolerance must be > 0, got {args.check_tolerance}")
    target = Path(args.target)
    if not target.exists():
        raise InputError(f"{target}: no such run folder or checkpoint")
    cfg, model, path, _ = load_run_model(target, args.data_root)
    info, _, test = load_dataset(cfg.dataset, cfg.data_root, False)
    model = model.float().cpu().eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    export_onnx(model, tuple(info.shape), out, dynamic_batch=args.dynamic_batch)
    session = onnxruntime_session(out)
    split = test.subset(args.num)
    worst = scale = 0.0
    agree = total = 0
    for x, _ in eval_batches(split, 250):
        with torch.no_grad():
            ref = model(x.float()).double().numpy()
        got = onnxruntime_outputs(session, x.float().numpy())
        worst = max(worst, float(np.max(np.abs(got - ref))))
        scale = max(scale, float(np.max(np.abs(ref))))
        agree += int((got.argmax(1) == ref.argmax(1)).sum())
        total += x.shape[0]
    relative = worst / (1.0 + scale)
    if relative > args.check_tolerance:
        out.unlink(missing_ok=True)
        raise AbsdslError(f"onnxruntime disagrees with the torch model on the test split: max "
                          f"|difference| {worst:.3g} (relative {relative:.3g} > "
                          f"{args.check_tolerance:g}); {out} removed")
    print(f"checkpoint {path} -> {out} (opset {model_opset(out)}, input [1, "
          f"{', '.join(map(str, info.shape))}] in pixel units, normalisation included)")
    print(f"onnxruntime vs torch on {total} {cfg.dataset} test inputs: max |difference| "
          f"{worst:.3g} (relative {relative:.3g}), same prediction on {agree}/{total}")
    return 0


def model_opset(path: Path) -> int:
    import onnx  # lazy: optional dependency onnx

    model = onnx.load(str(path))
    return next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
