"""A/B of the GRAD step (bounds + backward) between a git revision and the working tree.

    python benchmarks/ab_grad.py --model cnn3 --domain deeppoly --base HEAD
    python benchmarks/ab_grad.py --model cnn3 --domain crown-ibp --base e418d93 \
        --checkpoint RUN/checkpoints/epoch_0006.pt

The bound compiler (``compiler/runtime.py``, ``codegen.py``, ``program.py``) and the loss
(``training/objective.py``, ``losses.py``) of ``--base`` are loaded from git next to the
working tree's, in the same process, and both compile the same model. GRAD steps of the two
alternate on the same batches (so both see the same machine load); the script prints both
medians, their ratio, and how far apart the margin lower bounds, losses and gradients are (a
change that only removes work must leave them equal to rounding).

The base's files are loaded into the working tree's packages, so both must have the same
module layout (the modules above, and what they import). Across a change of layout (the house
redesign: 88194b1 against main) use ``benchmarks/ab_revisions.py``, which imports each
revision whole in its own process.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
import types
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import absdsl  # noqa: E402,F401
import absdsl.compiler  # noqa: E402
import absdsl.training  # noqa: E402
from absdsl import cpu_memory  # noqa: E402

# (package, module, file): loaded in this order, each seeing the earlier ones
_MODULES = [("absdsl.compiler", "runtime", "compiler/runtime.py"),
            ("absdsl.compiler", "codegen", "compiler/codegen.py"),
            ("absdsl.compiler", "program", "compiler/program.py"),
            ("absdsl.training", "losses", "training/losses.py"),
            ("absdsl.training", "objective", "training/objective.py")]


@contextmanager
def _swapped(replaced: dict[str, types.ModuleType]):
    """sys.modules and package attributes pointing at ``replaced`` modules, then restored."""
    saved = {}
    for full, mod in replaced.items():
        pkg_name, _, attr = full.rpartition(".")
        pkg = sys.modules[pkg_name]
        saved[full] = (sys.modules.get(full), getattr(pkg, attr, None))
        sys.modules[full] = mod
        setattr(pkg, attr, mod)
    try:
        yield
    finally:
        for full, (mod, attr_value) in saved.items():
            pkg_name, _, attr = full.rpartition(".")
            if mod is None:
                sys.modules.pop(full, None)
            else:
                sys.modules[full] = mod
            setattr(sys.modules[pkg_name], attr, attr_value)


def load_base(rev: str) -> dict[str, types.ModuleType]:
    """The modules of ``_MODULES`` as they are at git revision ``rev`` (new module objects)."""
    loaded: dict[str, types.ModuleType] = {}
    folder = Path(tempfile.mkdtemp(prefix="ab_grad_"))
    for pkg, name, path in _MODULES:
        source = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True,
                                capture_output=True, text=True).stdout
        full = f"{pkg}.{name}"
        file = folder / f"{name}.py"  # the revision's file, imported like any module
        file.write_text(source)
        spec = importlib.util.spec_from_file_location(full, file)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        mod.__package__ = pkg
        with _swapped(loaded | {full: mod}):
            spec.loader.exec_module(mod)
        loaded[full] = mod
    return loaded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against")
    parser.add_argument("--model", default="cnn3")
    parser.add_argument("--domain", default="deeppoly")
    parser.add_argument("--checkpoint", default=None, help="weights of a training run")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beta", type=float, default=1.0, help="CROWN-IBP mixing weight")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-backward", action="store_true", help="time the bounds only")
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    torch.set_num_threads(args.threads)

    from absdsl.training.config import resolve
    from absdsl.training.data import load_dataset, train_batches
    from absdsl.training.models import build_model, ibp_init
    from absdsl.training.objective import batch_loss, input_box, mixed_margin
    from absdsl.training.programs import required_domains
    from absdsl.training.steprule import TrainBatch

    base = load_base(args.base)
    cfg = resolve(dict(dataset="mnist5k", model=args.model, domain=args.domain, eps=args.eps,
                       batch_size=args.batch_size, epochs=1, warmup_epochs=0, ramp_epochs=0))
    info, train, _ = load_dataset(cfg.dataset, cfg.data_root, False)
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    if args.checkpoint:
        model.load_state_dict(torch.load(args.checkpoint, weights_only=True)["model"])
    else:
        ibp_init(model)
    model.eval()
    names = required_domains(cfg.domain, cfg.method)
    progs = {"base": {d: base["absdsl.compiler.program"].BoundProgram(model, d) for d in names},
             "new": {d: absdsl.compile(model, domain=d) for d in names}}
    losses = {"base": base["absdsl.training.objective"].batch_loss, "new": batch_loss}
    batches = [TrainBatch(x, y, args.eps, 0, i, beta=args.beta)
               for i, (x, y, _) in zip(range(4), train_batches(train, args.batch_size, 0, 0),
                                       strict=False)]

    def step(side: str, i: int) -> tuple[float, list[torch.Tensor]]:
        model.train()
        model.zero_grad(set_to_none=True)
        b = batches[i % len(batches)]
        if args.no_backward:
            with torch.no_grad():
                model.eval()
                loss, _ = losses[side](model, progs[side], cfg, b, num_classes=10)
            return float(loss.detach()), []
        loss, _ = losses[side](model, progs[side], cfg, b, num_classes=10)
        loss.backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        return float(loss.detach()), grads

    # agreement on every batch: margins, loss and gradients
    worst_margin = worst_loss = worst_grad = 0.0
    for i, b in enumerate(batches):
        model.eval()
        with torch.no_grad():
            lo, hi = input_box(b.x, b.eps)
            m_new = mixed_margin(progs["new"], cfg.domain, None, lo, hi, b.y, 10, b.beta)
            m_base = base["absdsl.training.objective"].mixed_margin(
                progs["base"], cfg.domain, None, lo, hi, b.y, 10, b.beta)
        worst_margin = max(worst_margin, float((m_new - m_base).abs().max()))
        l_new, g_new = step("new", i)
        l_base, g_base = step("base", i)
        worst_loss = max(worst_loss, abs(l_new - l_base))
        for a, c in zip(g_new, g_base, strict=True):
            scale = c.abs().max().clamp_min(1e-30)
            worst_grad = max(worst_grad, float((a - c).abs().max() / scale))
    times: dict[str, list[float]] = {"base": [], "new": []}
    for i in range(args.repeats):
        for side in (("base", "new") if i % 2 == 0 else ("new", "base")):
            t0 = time.perf_counter()
            step(side, i)
            times[side].append(time.perf_counter() - t0)
    tb, tn = statistics.median(times["base"]), statistics.median(times["new"])
    what = "bounds" if args.no_backward else "GRAD step"
    print(f"{args.model} {args.domain} eps {args.eps} batch {args.batch_size} "
          f"({'checkpoint' if args.checkpoint else 'initialisation'}), {what}:")
    print(f"  base {args.base}: {1e3 * tb:.1f} ms   working tree: {1e3 * tn:.1f} ms   "
          f"speed-up {tb / tn:.2f}x")
    print(f"  largest differences: margin {worst_margin:.2e}, loss {worst_loss:.2e}, "
          f"gradient (relative to its largest entry) {worst_grad:.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
