"""Where the GRAD step (bounds + backward of the robust loss) spends its time.

    python benchmarks/profile_grad.py --model cnn3 --domain deeppoly
    python benchmarks/profile_grad.py --model cnn3 --domain crown-ibp \
        --checkpoint RUN/checkpoints/epoch_0006.pt

Builds the model as ``absdsl train`` does (Shi et al. initialisation, or the weights of a
checkpoint of an actual certified training run), takes the first batches of mnist5k at the
given eps, runs ``--steps`` GRAD steps under ``torch.profiler`` (after two untimed ones) and
prints the operators by self CPU time, the share of stable neurons per activation, and the
step's wall time next to a natural step's, measured alternately in the same process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from absdsl import cpu_memory  # noqa: E402


def setup(model_name: str, domain: str, checkpoint: str | None, eps: float, batch: int,
          beta: float = 1.0):
    """The model (initialised or loaded), its compiled programs and a GRAD step closure."""
    from absdsl.training.config import resolve
    from absdsl.training.data import load_dataset, train_batches
    from absdsl.training.models import build_model, ibp_init
    from absdsl.training.objective import batch_loss
    from absdsl.training.programs import compile_programs, required_domains
    from absdsl.training.steprule import TrainBatch

    cfg = resolve(dict(dataset="mnist5k", model=model_name, domain=domain, eps=eps,
                       batch_size=batch, epochs=1, warmup_epochs=0, ramp_epochs=0))
    info, train, _ = load_dataset(cfg.dataset, cfg.data_root, False)
    torch.manual_seed(0)
    model = build_model(cfg.model, info)
    if checkpoint:
        state = torch.load(checkpoint, weights_only=True)
        model.load_state_dict(state["model"])
    else:
        ibp_init(model)
    programs = compile_programs(model, required_domains(cfg.domain, cfg.method))
    batches = [TrainBatch(x, y, eps, 0, i, beta=beta)
               for i, (x, y, _) in zip(range(8), train_batches(train, batch, 0, 0), strict=False)]

    def grad_step(i: int) -> None:
        model.train()
        model.zero_grad(set_to_none=True)
        loss, _ = batch_loss(model, programs, cfg, batches[i % len(batches)],
                             num_classes=info.num_classes)
        loss.backward()

    def natural_step(i: int) -> None:
        b = batches[i % len(batches)]
        model.train()
        model.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(b.x), b.y).backward()

    return model, programs, batches, grad_step, natural_step


def stable_shares(prog, batches) -> dict[str, float]:
    """Per pre-activation node, the share of neurons whose bounds do not straddle 0."""
    b = batches[0]
    lo, hi = torch.clamp(b.x - b.eps, 0, 1), torch.clamp(b.x + b.eps, 0, 1)
    with torch.no_grad():
        bounds = prog.intermediate_bounds(lo, hi)
    return {name: float(((lb >= 0) | (ub <= 0)).float().mean()) for name, (lb, ub) in
            bounds.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="cnn3")
    parser.add_argument("--domain", default="deeppoly")
    parser.add_argument("--checkpoint", default=None, help="weights of a training run")
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--beta", type=float, default=1.0, help="CROWN-IBP mixing weight")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=25, help="operators to print")
    parser.add_argument("--shapes", action="store_true", help="group operators by shape")
    args = parser.parse_args(argv)
    cpu_memory.apply_default()  # as the absdsl command does: freed tensors stay mapped
    torch.set_num_threads(args.threads)
    model, programs, batches, grad_step, natural_step = setup(
        args.model, args.domain, args.checkpoint, args.eps, args.batch_size, args.beta)
    print(f"{args.model} {args.domain} eps {args.eps} batch {args.batch_size} "
          f"({'checkpoint ' + args.checkpoint if args.checkpoint else 'initialisation'})")
    with torch.no_grad():
        model.eval()
        for name, share in stable_shares(programs[args.domain], batches).items():
            print(f"  stable neurons at %{name}: {100 * share:.1f} %")
    for i in range(2):
        grad_step(i)
        natural_step(i)
    grad_t, nat_t = [], []
    for i in range(args.steps):
        t0 = time.perf_counter()
        grad_step(i)
        t1 = time.perf_counter()
        natural_step(i)
        t2 = time.perf_counter()
        grad_t.append(t1 - t0)
        nat_t.append(t2 - t1)
    g, n = statistics.median(grad_t), statistics.median(nat_t)
    print(f"GRAD step {1e3 * g:.1f} ms, natural step {1e3 * n:.2f} ms: {g / n:.1f}x")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for i in range(args.steps):
            grad_step(i)
    table = prof.key_averages(group_by_input_shape=args.shapes).table(
        sort_by="self_cpu_time_total", row_limit=args.rows)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
