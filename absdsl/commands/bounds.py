"""``absdsl bounds``: sound lower/upper bounds of a model's outputs on an L-inf ball.

    absdsl bounds --model pkg.mod:factory --domain deeppoly --eps 0.02 --random 1,28,28
    absdsl bounds --model RUN/checkpoints/epoch_0010.pt --eps 0.1 --input x.pt \\
        --spec margins --label 3

``--model`` is ``module:factory`` (imported, never eval'd; the factory is called with no
arguments), optionally with ``--weights CKPT`` (a state_dict or an absdsl training
checkpoint), or an absdsl training checkpoint alone (its config names the model and data
set). Files are read with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

import absdsl
from absdsl.errors import AbsdslError, InputError
from absdsl.training.certify import certificate_threshold, domain_trust
from absdsl.training.data import dataset_info
from absdsl.training.models import build_model, load_factory
from absdsl.verification.onnx_io import load_onnx


def input_shape(given: str | None, known: tuple[int, ...] | None) -> tuple[int, ...]:
    """``--input-shape`` when given, else the checkpoint's own shape."""
    if given is not None:
        return parse_shape(given, "--input-shape")
    if known is not None:
        return known
    raise InputError("give --input-shape, e.g. --input-shape 1,28,28")


def parse_shape(text: str, flag: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        shape = ()
    if not shape or any(s <= 0 for s in shape):
        raise InputError(f"{flag}: expected positive integers like 1,28,28, got {text!r}")
    return shape


def _torch_load(path: Path, what: str) -> Any:
    if not path.is_file():
        raise InputError(f"{what}: no such file {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - every failure means "not a readable file"
        raise InputError(f"{what}: {path} is not readable with torch.load(weights_only=True): "
                         f"{type(err).__name__}: {str(err)[:200]}") from err


def _state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]  # an absdsl training checkpoint (or {'model': state_dict})
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"--weights: {path} holds neither a state_dict nor a checkpoint with one")
    return obj


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InputError(f"weights {path} do not fit the model: {str(err).strip()[:400]}") from err


def load_model(spec: str, weights: str | None = None) -> tuple[nn.Module, tuple[int, ...] | None]:
    """The model (eval mode) and, for a training checkpoint, the data set's input shape."""
    path = Path(spec)
    shape: tuple[int, ...] | None = None
    if path.suffix.lower() == ".onnx":  # an ONNX network knows its input shape
        if weights is not None:
            raise InputError("--weights goes with --model module:factory, not with an ONNX file")
        net = load_onnx(path)
        return net.eval(), net.input_shape
    if ":" not in spec or path.suffix in (".pt", ".pth") or path.is_file():
        if not path.is_file():
            raise InputError(f"--model {spec!r}: expected 'module:factory' or a checkpoint "
                             f"file, and there is no such file")
        obj = _torch_load(path, "--model")
        cfg = obj.get("config") if isinstance(obj, dict) else None
        if not isinstance(cfg, dict) or "model" not in cfg:
            raise InputError(f"--model {spec}: not an absdsl training checkpoint (no config with "
                             f"a model name); give --model module:factory --weights {spec}")

        info = dataset_info(str(cfg.get("dataset", "mnist")))
        model = build_model(str(cfg["model"]), info)
        shape = tuple(info.shape)
        _load_weights(model, _state_dict(obj, path), path)
    else:
        factory = load_factory(spec)  # one resolver for every command
        try:
            model = factory()
        except TypeError as err:
            raise InputError(f"--model {spec!r}: calling the factory with no arguments failed: "
                             f"{err}") from err
        if not isinstance(model, nn.Module):
            raise InputError(f"--model {spec!r}: factory returned {type(model).__name__}, "
                             f"not an nn.Module")
        if weights is not None:
            wpath = Path(weights)
            _load_weights(model, _state_dict(_torch_load(wpath, "--weights"), wpath), wpath)
    if weights is not None and shape is not None:
        raise InputError("--weights goes with --model module:factory, not with a checkpoint")
    return model.eval(), shape


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True,
                        help="module:factory, an absdsl training checkpoint (.pt) or an ONNX file")
    parser.add_argument("--weights", default=None, help="state_dict or checkpoint for the factory")
    parser.add_argument("--domain", default="box",
                        help="box/ibp, hbox, zonotope/deepz, deeppoly/crown, crown-ibp or a .absd "
                             "file (default box)")
    parser.add_argument("--eps", type=float, required=True, help="L-inf radius")
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--input", default=None,
                     help=".pt file with a tensor [C,H,W] or [batch,C,H,W] (or a dict with 'x')")
    src.add_argument("--random", default=None, metavar="SHAPE",
                     help="a random input in [0,1] of this shape, e.g. 1,28,28")
    parser.add_argument("--batch", type=int, default=1, help="with --random: batch size (1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-clip", action="store_true", help="do not clip the ball to [0, 1]")
    parser.add_argument("--spec", choices=("none", "margins"), default="none",
                        help="margins: bounds on f_y - f_i for i != y (needs --label)")
    parser.add_argument("--label", type=int, nargs="+", default=None,
                        help="true class(es) for --spec margins (one, or one per input)")
    parser.add_argument("--memory-budget-mb", type=float, default=2048.0)
    parser.add_argument("--tolerance", type=float, default=1e-6,
                        help="--spec margins: 'certified' needs every float64 margin lower bound "
                             "above this plus 1e-9 times the computation's magnitude (as "
                             "absdsl certify)")


def _read_input(path: Path) -> torch.Tensor:
    obj = _torch_load(path, "--input")
    if isinstance(obj, dict):
        obj = obj.get("x", obj.get("input"))
    if not isinstance(obj, torch.Tensor) or not obj.is_floating_point():
        raise InputError(f"--input: {path} must hold a floating-point tensor (or a dict with "
                         f"'x')")
    return obj


def run(args: argparse.Namespace) -> int:
    if args.eps < 0:
        raise InputError(f"--eps must be >= 0, got {args.eps}")
    model, ck_shape = load_model(args.model, args.weights)
    ref = next(iter(model.parameters()), None)
    dtype = ref.dtype if ref is not None else torch.float32
    if args.input is not None:
        x = _read_input(Path(args.input)).to(dtype)
    else:
        if args.random is not None:
            shape = parse_shape(args.random, "--random")
        elif ck_shape is not None:
            shape = ck_shape
        else:
            raise InputError("give --input FILE.pt or --random SHAPE")
        if args.batch < 1:
            raise InputError(f"--batch must be >= 1, got {args.batch}")
        gen = torch.Generator().manual_seed(args.seed)
        x = torch.rand(args.batch, *shape, generator=gen, dtype=dtype)
    if ck_shape is not None and tuple(x.shape[-len(ck_shape):]) != ck_shape:
        raise InputError(f"the input has shape {tuple(x.shape)} but the model takes "
                         f"[batch, {', '.join(map(str, ck_shape))}]")
    try:
        with torch.no_grad():
            out = model(x)
        batched = True
    except Exception:  # noqa: BLE001 - maybe an unbatched input: try adding the batch axis
        batched = False
        out = None
    if not batched:
        try:
            with torch.no_grad():
                out = model(x.unsqueeze(0))
            x = x.unsqueeze(0)
        except Exception as err:  # noqa: BLE001 - any failure means the shape does not fit
            raise InputError(f"the model does not accept an input of shape {tuple(x.shape)}: "
                             f"{type(err).__name__}: {str(err)[:200]}") from err
    assert out is not None
    if out.dim() != 2:
        raise InputError(f"the model's output has shape {tuple(out.shape)}; expected "
                         f"[batch, n_out]")
    n_out = out.shape[1]
    spec = None
    if args.spec == "margins":
        if args.label is None:
            raise InputError("--spec margins needs --label Y")
        labels = torch.tensor(args.label)
        if labels.numel() == 1:
            labels = labels.expand(x.shape[0])
        if labels.numel() != x.shape[0]:
            raise InputError(f"--label: {labels.numel()} labels for a batch of {x.shape[0]}")
        if bool(((labels < 0) | (labels >= n_out)).any()):
            raise InputError(f"--label must be in 0..{n_out - 1}, got {args.label}")
        spec = absdsl.margin_spec(labels, n_out).to(dtype)
    trust = None
    if spec is not None:  # the certification policy: float64 model and box, a threshold

        if args.tolerance <= 0:
            raise InputError(f"--tolerance must be > 0, got {args.tolerance}")
        trust = domain_trust(args.domain, uncertified_domain=True)
        model = copy.deepcopy(model).double()
        x, spec = x.double(), spec.double()
        with torch.no_grad():
            out = model(x)
    lo, hi = absdsl.linf_ball(x, args.eps, clip=None if args.no_clip else (0.0, 1.0))
    prog = absdsl.compile(model, args.domain, memory_budget_mb=args.memory_budget_mb)
    with torch.no_grad():
        lb, ub = prog(lo, hi, spec=spec)
    print(f"# {prog.domain} bounds, eps {args.eps:g}, input {tuple(x.shape)}"
          + (", margins f_y - f_i, float64" if spec is not None else ""))
    if trust is not None:

        threshold = certificate_threshold(prog, lo, hi, lb, ub, args.tolerance)
        print(f"# certified iff every margin lower bound > {args.tolerance:g} + 1e-9 * M (M: "
              f"the largest magnitude in the input's bound computation); domain "
              f"{trust.trust} (sha256 {trust.sha256[:16]})")
    for b in range(x.shape[0]):
        pred = int(out[b].argmax())
        if spec is not None:
            y = int(labels[b])
            others = [i for i in range(n_out) if i != y]
            cert = bool((lb[b] > threshold[b]).all()) and pred == y
            verdict = "certified" if cert else "not certified"
            if cert and trust is not None and trust.trust == "uncertified-domain":
                verdict = ("margins above the threshold, but the domain file has not passed "
                           "absdsl check: not certified")
            print(f"input {b}: label {y}, predicted {pred}, {verdict} "
                  f"(threshold {float(threshold[b]):.3g})")
            for j, i in enumerate(others):
                print(f"  f_{y} - f_{i}: [{float(lb[b, j]):+.6f}, {float(ub[b, j]):+.6f}]")
        else:
            print(f"input {b}: predicted {pred}")
            for i in range(n_out):
                print(f"  out {i}: [{float(lb[b, i]):+.6f}, {float(ub[b, i]):+.6f}]  "
                      f"(f(x) = {float(out[b, i]):+.6f})")
    return 0


__all__ = ["register", "run", "load_model", "parse_shape", "AbsdslError"]
