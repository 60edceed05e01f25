"""Train, resume or skip each run; certify it and measure its tightness (cached)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.errors import AbsdslError
from absdsl.training import loop
from absdsl.training.analysis.tightness import (
    certified_auc,
    compile_domain,
    float64_copy,
    propagation_tightness,
)
from absdsl.training.certify import CertifyOptions, certify_model
from absdsl.training.checkpoint import (
    CheckpointError,
    atomic_write_text,
    checkpoint_name,
    list_checkpoints,
    load_checkpoint,
)
from absdsl.training.cli_certify import load_complete_stage
from absdsl.training.config import load_toml, resolve
from absdsl.training.data import DatasetInfo, Split, dataset_info
from absdsl.training.loop import Interrupted, Trainer, prepare_run_dir
from absdsl.training.models import build_model

from .config import (
    ADDED_DEFAULTS,
    CERTIFY_CACHE,
    CONFIG_FILE,
    FORMAT,
    NOT_COMPARED,
    RUN_MARKER,
    TIGHTNESS_CACHE,
    VERSION,
    ParadoxConfig,
    ParadoxError,
    compared_settings,
    complete_stage,
)
from .plan import RunSpec, train_config


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict without what may differ between resumes of the same run."""
    out = {k: v for k, v in cfg_dict.items() if k not in NOT_COMPARED}
    options = dict(out.get("options") or {})
    options.pop("init_checkpoint", None)  # the start is compared by its hash instead
    for key in ("memory_budget_mib", "population_eval", "chunk_size"):
        options.pop(key, None)  # chunking changes speed, not results
    out["options"] = options
    return json.loads(json.dumps(out))


# ---- files --------------------------------------------------------------------------------
def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Any) -> None:
    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def final_checkpoint(run_dir: Path, epochs: int) -> Path:
    return run_dir / "checkpoints" / checkpoint_name(epochs)


def prepare_out(out: Path, cfg: ParadoxConfig, overwrite: bool) -> None:
    """Refuse an OUT holding another experiment (or foreign files) unless --overwrite."""
    saved_path = out / CONFIG_FILE
    if out.exists() and not out.is_dir():
        raise ParadoxError(f"--out {out} exists and is not a folder")
    if saved_path.is_file():
        saved = _read_json(saved_path)
        if saved is None or saved.get("format") != FORMAT:
            raise ParadoxError(f"{saved_path} is not a readable paradox configuration; "
                               "remove it or choose another --out")
        old = dict(saved.get("config", {}))
        for key, value in ADDED_DEFAULTS.items():
            old.setdefault(key, value)
        old = compared_settings(old)
        if old != cfg.compared():
            if not overwrite:
                diff = sorted(k for k in set(old) | set(cfg.compared())
                              if old.get(k) != cfg.compared().get(k))
                raise ParadoxError(
                    f"{out} holds a paradox run with a different configuration (differs in: "
                    f"{', '.join(diff)}); pass --overwrite to start over there, or choose "
                    "another --out"
                )
            _clear_out(out)
    elif out.is_dir() and any(out.iterdir()):
        raise ParadoxError(f"--out {out} is not empty and holds no paradox run "
                           f"(no {CONFIG_FILE}); choose an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(saved_path, {"format": FORMAT, "version": VERSION, "config": cfg.to_dict()})


def _clear_out(out: Path) -> None:
    """--overwrite: remove what this command wrote (runs, results), nothing else."""
    shutil.rmtree(out / "runs", ignore_errors=True)
    for name in (CONFIG_FILE, "paradox.json", "paradox.png", "paradox.txt"):
        (out / name).unlink(missing_ok=True)


# ---- running ------------------------------------------------------------------------------
@dataclass
class RunOutcome:
    spec: RunSpec
    run_dir: Path
    checkpoint: Path
    sha256: str
    status: str  # trained | resumed | skipped
    wall_seconds: float
    train_seconds: float


def _log(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, flush=True)


def ensure_run(spec: RunSpec, out: Path, start: RunOutcome | None, *, quiet: bool,
               progress: bool) -> RunOutcome:
    """Train, resume or skip one run; returns where its final checkpoint is."""

    run_dir = out / "runs" / spec.name
    init = start.checkpoint if start is not None else None
    cfg = train_config(spec, init)
    expected = _comparable(cfg.to_dict())
    init_sha = start.sha256 if start is not None else None
    final = final_checkpoint(run_dir, int(cfg.epochs or 0))
    marker = _read_json(run_dir / RUN_MARKER)
    wall = time.perf_counter()

    if (marker is not None and marker.get("finished") and marker.get("config") == expected
            and marker.get("init_sha256") == init_sha and final.is_file()):
        _log(quiet, f"  {spec.name}: finished earlier, skipped")
        return RunOutcome(spec, run_dir, final, file_sha256(final), "skipped", 0.0,
                          float(marker.get("train_seconds", 0.0)))

    resumable = False
    if list_checkpoints(run_dir) and (run_dir / "config.toml").is_file():
        try:
            saved = _comparable(resolve(load_toml(run_dir / "config.toml")).to_dict())
        except AbsdslError:
            saved = None
        same_start = marker is None or marker.get("init_sha256") == init_sha
        resumable = saved == expected and same_start
    if resumable:
        _log(quiet, f"  {spec.name}: resuming from {run_dir / 'checkpoints'}")
        status = "resumed"
        result = _train(lambda: loop.run_training(None, run_dir, resume=True, progress=progress,
                                             final_eval=False), run_dir, out)
    else:
        _log(quiet, f"  {spec.name}: training ({cfg.method}, {cfg.optimizer}, "
                    f"{cfg.domain if cfg.method != 'pgd' else 'PGD'}, eps {cfg.eps:g}, "
                    f"{cfg.epochs} epochs)")
        status = "trained"
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_json(run_dir / RUN_MARKER, {"finished": False, "config": expected,
                                           "init_sha256": init_sha})
        if spec.optimizer == "grad" and init is not None:
            seed_from_start(cfg, run_dir, init)
            result = _train(lambda: loop.run_training(None, run_dir, resume=True, progress=progress,
                                                 final_eval=False), run_dir, out)
        else:
            result = _train(lambda: loop.run_training(cfg, run_dir, overwrite=True,
                                                 progress=progress, final_eval=False),
                            run_dir, out)
    if not final.is_file():
        raise ParadoxError(f"run {run_dir} ended without its final checkpoint {final.name}")
    seconds = float(result.get("train_seconds", 0.0))
    _write_json(run_dir / RUN_MARKER, {"finished": True, "config": expected,
                                       "init_sha256": init_sha, "checkpoint": final.name,
                                       "train_seconds": seconds})
    elapsed = time.perf_counter() - wall
    _log(quiet, f"  {spec.name}: {status} in {elapsed:.1f} s")
    return RunOutcome(spec, run_dir, final, file_sha256(final), status, elapsed, seconds)


def _train(fn: Any, run_dir: Path, out: Path) -> dict[str, Any]:
    try:
        return fn()
    except Interrupted as err:
        raise ParadoxError(
            f"stopped in {run_dir} (checkpoint saved); run the same absdsl paradox command "
            f"(--out {out}) again to resume"
        ) from err


def seed_from_start(cfg: Any, run_dir: Path, init: Path) -> None:
    """Write RUN/checkpoints/epoch_0000.pt: the fresh run's state with the start's weights.

    GRAD fine-tuning then starts from the PGD checkpoint through the loop's ordinary resume
    (PGPE takes the start as its ``init_checkpoint`` option instead).
    """

    prepare_run_dir(run_dir, cfg, overwrite=True)
    trainer = Trainer(cfg, run_dir, progress=False)
    trainer.setup(None)
    try:
        trainer.model.load_state_dict(load_checkpoint(init)["model"])
    except RuntimeError as err:
        raise CheckpointError(f"the start {init} does not fit model {cfg.model!r}: {err}") from err
    trainer.save()
    close = getattr(trainer, "close", None)
    if callable(close):
        close()


def spread_subset(split: Any, n: int | None) -> Any:
    """n examples spread evenly over the split, the same for every network (balanced for a
    split in any order, not only the class-interleaved mnist5k splits)."""

    if n is None or n >= len(split):
        return split
    idx = torch.linspace(0, len(split) - 1, n).round().long().unique()
    return Split(split.images[idx], split.labels[idx])


def load_network(run_dir: Path, checkpoint: Path) -> tuple[nn.Module, DatasetInfo]:
    """The trained network of a run, on the CPU in eval mode (weights-only load)."""

    ckpt = load_checkpoint(checkpoint)
    info = dataset_info(ckpt["config"]["dataset"])
    model = build_model(ckpt["config"]["model"], info)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as err:
        raise CheckpointError(f"{checkpoint}: weights do not fit model "
                              f"{ckpt['config']['model']!r}: {err}") from err
    return model.cpu().eval(), info


def check_domains(cfg: ParadoxConfig) -> None:
    """Compile every domain (and, with ``complete``, the MILP encoding) for the model now.

    A domain without a rule for one of the model's ops then fails before the first training
    instead of after the PGD start has been trained and certified.
    """

    info = dataset_info(cfg.dataset)
    model = float64_copy(build_model(cfg.model, info))
    shape = tuple(info.shape)
    for name in cfg.domains:
        try:
            compile_domain(model, name, shape)
        except AbsdslError as err:
            raise ParadoxError(f"domain {name!r} cannot train or bound model {cfg.model!r}: "
                               f"{str(err).splitlines()[0]}") from err
    if complete_stage(cfg) == "milp":
        # lazy: heavy dependency scipy (training.milp), off the CLI start
        from absdsl.training.milp import NetworkMilp

        try:
            NetworkMilp(model, shape)
        except AbsdslError as err:
            raise ParadoxError(f"--complete: {str(err).splitlines()[0]}") from err


def certify_run(outcome: RunOutcome, cfg: ParadoxConfig, test_split: Any,
                quiet: bool) -> dict[str, Any]:
    """The cascade on the run's network (cached in the run folder by checkpoint hash)."""

    key: dict[str, Any] = {
        "checkpoint_sha256": outcome.sha256, "eps": outcome.spec.eps, "domain": "tightest",
        "n": len(test_split), "pgd_steps": cfg.eval_pgd_steps,
        "pgd_restarts": cfg.eval_pgd_restarts, "tolerance": cfg.tolerance, "seed": cfg.seed,
        # summaries from before the scaled threshold and PGD on certified inputs are not reused
        "policy": "scaled-threshold+pgd-on-certified"}
    stage = complete_stage(cfg)
    if stage is not None:  # (without it the key is the one earlier versions wrote)
        key.update(stages=[stage], milp_time_limit=cfg.milp_time_limit)
    cache = outcome.run_dir / CERTIFY_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["summary"]
    model, info = load_network(outcome.run_dir, outcome.checkpoint)
    if stage is not None:
        load_complete_stage(stage)  # registers the stage (scipy, verification: lazily)
    opts = CertifyOptions(eps=outcome.spec.eps, domain="tightest", tolerance=cfg.tolerance,
                          pgd_steps=cfg.eval_pgd_steps, pgd_restarts=cfg.eval_pgd_restarts,
                          seed=cfg.seed, extra_stages=[stage] if stage is not None else [],
                          milp_time_limit=cfg.milp_time_limit)
    report = certify_model(model, info, test_split, opts)
    summary = report.summary()
    if report.skipped_domains:
        summary["skipped_domains"] = report.skipped_domains
    _write_json(cache, {"key": key, "summary": summary})
    _log(quiet, f"  {outcome.spec.name}: certified {summary['certified_acc']:.3f} "
                f"(natural {summary['natural_acc']:.3f}, adversarial "
                f"{summary['adversarial_acc']:.3f}) in {summary['certify_seconds']:.1f} s")
    return summary


def tightness_domains(spec: RunSpec, cfg: ParadoxConfig) -> list[str]:
    """The domains whose tightness is measured on a run's network."""
    if spec.is_start or cfg.tightness_scope == "all" or spec.domain is None:
        return list(cfg.domains)
    return [spec.domain]


def tightness_run(outcome: RunOutcome, cfg: ParadoxConfig, x: torch.Tensor, y: torch.Tensor,
                  quiet: bool) -> dict[str, Any]:
    """Each domain's certified-accuracy curve and AUC on the run's network (cached).

    With ``tightness_scope = "own"`` a trained network is measured with its own domain only
    (what the table shows); the start is always measured with every domain.
    """

    eps_max = cfg.tightness_eps_max * outcome.spec.eps
    domains = tightness_domains(outcome.spec, cfg)
    key = {"checkpoint_sha256": outcome.sha256, "domains": domains,
           "eps_max": eps_max, "n_eps": cfg.tightness_n_eps, "n": int(y.shape[0]),
           "tolerance": cfg.tolerance}
    cache = outcome.run_dir / TIGHTNESS_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["result"]
    start = time.perf_counter()
    model, _ = load_network(outcome.run_dir, outcome.checkpoint)
    curves = {}
    for domain in domains:
        res = certified_auc(model, x, y, domain, eps_max, cfg.tightness_n_eps,
                            tolerance=cfg.tolerance)
        curves[domain] = asdict(res)
    try:
        tau: float | None = propagation_tightness(model, x, y, outcome.spec.eps)
        tau_note = "Mao et al. propagation tightness at the run's eps, mean over inputs and margins"
    except AbsdslError as err:
        tau, tau_note = None, f"not available: {str(err).splitlines()[0]}"
    result: dict[str, Any] = {
        "auc": {d: c["auc"] for d, c in curves.items()}, "curves": curves,
        "propagation_tightness": tau, "propagation_tightness_note": tau_note,
        "seconds": time.perf_counter() - start}
    _write_json(cache, {"key": key, "result": result})
    aucs = ", ".join(f"{d} {a:.3f}" for d, a in result["auc"].items())
    _log(quiet, f"  {outcome.spec.name}: tightness AUC {aucs} in {result['seconds']:.1f} s")
    return result
