"""A fingerprint of the bounds absdsl computes, to show that a refactoring changed none of them.

    PYTHONPATH=/path/to/tree python3 benchmarks/bounds_fingerprint.py --out before.json
    PYTHONPATH=/path/to/other python3 benchmarks/bounds_fingerprint.py --out after.json
    python3 benchmarks/bounds_fingerprint.py --compare before.json after.json

Compiles small zoo models (tests/zoo/models.py, one of each family and op kind) in every
built-in domain in float64 with fixed seeds and hashes the exact bytes of every bound: the
plain bounds, the bounds of a margin spec, lower bounds alone (``upper=False``), the
intermediate bounds, and, for the back-substitution domains, the same under each engine
variant (dense rows instead of patch rows, dense generators, zero-column and sparse-line
shortcuts off). Two trees agree when every hash agrees (bit-identical in float64).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "zoo"))

import models as zoo  # noqa: E402

import absdsl  # noqa: E402

DOMAINS = ("box", "hbox", "zonotope", "deeppoly", "crown-ibp")
BACKSUB = ("deeppoly", "crown-ibp")
# the default models: each family and op kind of the zoo once, small enough for a few minutes
MODELS = ("cnn_4layer", "cnn_7layer_bn", "resnet_cifar", "cresnet5", "mlp_relu", "mlp_sigmoid",
          "mlp_tanh", "mlp_leaky_relu", "cnn_maxpool", "cnn_zeropad", "cnn_gelu", "cnn_silu",
          "squeeze_excite", "vit_tiny")
# engine variants: name -> the engine settings changed from the defaults
VARIANTS: dict[str, dict[str, float | bool]] = {
    "default": {},
    "dense_rows": {"patch_saving": -1.0},
    "dense_gens": {"gens_patches": False},
    "zero_columns_off": {"zero_columns": -1.0},
    "sparse_lines_off": {"sparse_lines": -1.0},
    "shortcuts_always": {"zero_columns": 1.0, "sparse_lines": 1.0},
}
_GLOBALS = {  # where trees without engine options keep each setting
    "patch_saving": ("absdsl.compiler.codegen", "PATCH_SAVING"),
    "gens_patches": ("absdsl.compiler.gens", "PATCHES"),
    "zero_columns": ("absdsl.compiler.runtime", "ZERO_COLUMNS"),
    "sparse_lines": ("absdsl.compiler.runtime", "SPARSE_LINES"),
}


@contextmanager
def engine(settings: dict[str, float | bool]) -> Iterator[dict]:
    """Keyword arguments of ``absdsl.compile`` selecting ``settings``: engine options where
    the tree has them, else its module globals, set for the block's duration."""
    try:
        from absdsl.compiler.context import EngineOptions
    except ImportError:
        EngineOptions = None  # noqa: N806 - a tree from before engine options
    if EngineOptions is not None:
        yield {"options": EngineOptions(**settings)} if settings else {}
        return
    import importlib

    saved = []
    for key, value in settings.items():
        module = importlib.import_module(_GLOBALS[key][0])
        saved.append((module, _GLOBALS[key][1], getattr(module, _GLOBALS[key][1])))
        setattr(module, _GLOBALS[key][1], value)
    try:
        yield {}
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _digest(*tensors: torch.Tensor | None) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(b"none" if t is None else t.detach().contiguous().cpu().numpy().tobytes())
    return h.hexdigest()[:20]


def fingerprint(entry: zoo.ZooModel, domain: str, variant: str) -> dict[str, str]:
    """Hashes of every bound of one (model, domain, variant)."""
    model = zoo.build(entry).double()
    _, lo, hi = zoo.boxes(entry)
    lo, hi = lo.double(), hi.double()
    with torch.no_grad():
        n_out = model(lo[:1]).shape[-1]
    spec = absdsl.margin_spec(torch.tensor([1, 3]), n_out).double()
    found: dict[str, str] = {}
    with engine(VARIANTS[variant]) as kwargs:
        try:
            prog = absdsl.compile(model, domain, **kwargs)
            with torch.no_grad():
                found["plain"] = _digest(*prog(lo, hi))
                found["spec"] = _digest(*prog(lo, hi, spec=spec))
                found["lower"] = _digest(*prog(lo, hi, spec=spec, upper=False))
                inter = prog.intermediate_bounds(lo, hi)
                found["intermediate"] = _digest(*(t for k in sorted(inter) for t in inter[k]))
                params = {k: v * 1.01 for k, v in prog.params().items()
                          if v.is_floating_point()}
                found["functional"] = _digest(*prog.functional(params, lo, hi, spec))
        except absdsl.AbsdslError as err:  # a refusal is part of the behaviour, too
            found["refused"] = f"{type(err).__name__}: {err}"[:200]
    return found


def run(names: list[str] | None, out: Path | None = None) -> dict[str, dict[str, str]]:
    """Every case's hashes; written to ``out`` after each case (a cut-short run still
    leaves what it found)."""
    torch.set_num_threads(1)
    entries = [e for e in zoo.ZOO if e.name in (names or MODELS)]
    result: dict[str, dict[str, str]] = {}
    for entry in entries:
        for domain in DOMAINS:
            for variant in VARIANTS if domain in BACKSUB or domain == "zonotope" else ["default"]:
                if domain == "zonotope" and variant not in ("default", "dense_gens"):
                    continue
                key = f"{entry.name}/{domain}/{variant}"
                result[key] = fingerprint(entry, domain, variant)
                print(key, result[key].get("plain", result[key].get("refused")), flush=True)
                if out is not None:
                    out.write_text(json.dumps(result, indent=1, sort_keys=True))
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write the hashes here (JSON)")
    ap.add_argument("--models", nargs="*", help=f"zoo model names (default: {', '.join(MODELS)})")
    ap.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                    help="compare two written fingerprints and exit")
    args = ap.parse_args()
    if args.compare:
        a, b = (json.loads(p.read_text()) for p in args.compare)
        both = set(a) & set(b)  # a cut-short run compares what it reached
        differ = sorted(k for k in both if a[k] != b[k])
        for key in differ:
            print("DIFFERS", key, a[key], b[key])
        print(f"{len(a)} vs {len(b)} cases, {len(both)} in both, {len(differ)} differ")
        sys.exit(1 if differ else 0)
    result = run(args.models, args.out)
    print("total", hashlib.sha256(json.dumps(result, sort_keys=True).encode()).hexdigest()[:20])


if __name__ == "__main__":
    main()
