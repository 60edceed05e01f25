"""``absdsl paradox``: the paradox of certified training, measured on one architecture.

One network is PGD-trained (the shared start); then, from that same checkpoint, it is
fine-tuned with each domain (box, hbox, crown-ibp, deeppoly) under GRAD and under PGPE. Every
network is certified by the same cascade (``certify_model`` with domain "tightest", same eps,
same test inputs), and each domain's tightness (the AUC of certified accuracy vs eps,
``analysis/tightness.py``) is measured on every network. The result is laid out like Table 1
of the smoothing paper (papers/004): rows are domains, columns natural / certified /
adversarial accuracy under GRAD and PGPE, plus tightness; written as ``paradox.json`` and
``paradox.png``.

Every training goes through ``run_training`` (what ``absdsl train`` runs) into its own folder
``OUT/runs/<optimizer>-<domain>`` (``OUT/runs/pgd`` for the start). Running the command again
resumes: a finished run (marker written, final checkpoint present, config equal) is skipped, a
partial one continues from its newest checkpoint through the loop's resume support, and
certification and tightness results are cached per run, keyed by the checkpoint's hash.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from absdsl.errors import AbsdslError

from .data import DatasetInfo

FORMAT = "absdsl-paradox"
VERSION = 1
CONFIG_FILE = "paradox_config.json"
RUN_MARKER = "paradox_run.json"  # in each run folder: status and the expected config
CERTIFY_CACHE = "paradox_certify.json"
TIGHTNESS_CACHE = "paradox_tightness.json"
OPTIMIZERS = ("grad", "pgpe")
TABLE_DOMAINS = ("box", "hbox", "zonotope", "crown-ibp", "deeppoly")
METRICS = ("natural", "certified", "adversarial")
# settings that change where or how fast the experiment runs, not what it measures
NOT_COMPARED = ("device", "data_root", "download", "pgpe_memory_mib")
# settings added after a saved paradox_config.json may have been written: a saved config
# without them ran with these values
ADDED_DEFAULTS: dict[str, Any] = {"complete": False, "milp_time_limit": 30.0}


class ParadoxError(AbsdslError):
    """Bad input to ``absdsl paradox``: preset, domain, optimizer, eps, or output folder."""


# ---- models of the presets ----------------------------------------------------------------
def _fc(info: DatasetInfo, widths: tuple[int, ...]) -> nn.Sequential:
    from .models import Normalize

    c, h, w = info.shape
    layers: list[nn.Module] = [Normalize(info.mean, info.std), nn.Flatten()]
    sizes = (c * h * w, *widths)
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(sizes[-1], info.num_classes))
    return nn.Sequential(*layers)


def quick_fc(info: DatasetInfo) -> nn.Sequential:
    """784-32-32-10 ReLU network: small enough that HBox and DeepPoly, under GRAD and PGPE,
    fit the quick preset's 15 minutes on 2 CPU cores; per bound call CNN3 costs 7x (HBox) to
    100x (DeepPoly) more than even a 784-64-32-10 network (measured in docs/paradox.md)."""
    return _fc(info, (32, 32))


def micro_fc(info: DatasetInfo) -> nn.Sequential:
    """784-16-10: the test preset's network (seconds per run)."""
    return _fc(info, (16,))


# ---- configuration ------------------------------------------------------------------------
@dataclass
class ParadoxConfig:
    """Everything that determines the experiment (one file: OUT/paradox_config.json)."""

    preset: str
    dataset: str
    model: str
    eps: list[float]
    domains: list[str]
    optimizers: list[str]
    batch_size: int  # PGD and GRAD
    pgd_epochs: int
    pgd_lr: float
    pgd_steps: int  # PGD steps for the training points of the start
    grad_epochs: int
    grad_lr: float
    grad_milestones: list[int]
    grad_decay: float
    grad_ramp_epochs: dict[str, int]  # per eps (as text): epochs of the eps ramp
    pgpe_epochs: int
    pgpe_lr: float
    pgpe_milestones: list[int]
    pgpe_decay: float
    pgpe_ramp_epochs: dict[str, int]
    pgpe_batch_size: int
    popsize: int
    sigma: float
    train_subset: int | None  # None: the whole training split
    test_subset: int | None  # certification inputs (the same for every network)
    tightness_subset: int  # inputs of the tightness curves (the first of the test split)
    tightness_eps_max: float  # the curve runs over [0, factor * eps]
    tightness_n_eps: int
    eval_pgd_steps: int
    eval_pgd_restarts: int
    tolerance: float = 1e-6
    complete: bool = False  # add the exact MILP stage (HiGHS) to the certification cascade
    milp_time_limit: float = 30.0  # seconds per input for the MILP stage
    seed: int = 0
    device: str = "cpu"
    pgpe_memory_mib: float | None = None  # PGPE's memory_budget_mib (None: its default)
    data_root: str | None = None
    download: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def compared(self) -> dict[str, Any]:
        """The part of the config two runs of the same experiment must agree on."""
        return {k: v for k, v in self.to_dict().items() if k not in NOT_COMPARED}


# Paper (004, section 4 and appendix B): full MNIST, CNN3, eps 0.1 and 0.3; GRAD 70 epochs,
# lr 5e-5, decay 0.2 after 50 and 60, 20 ramp epochs; PGPE 150 epochs, batch 512, lr 3e-4,
# decay 0.4 after 110 and 130, popsize 256, sigma 1e-3, a 50-epoch ramp only at eps 0.3.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(
        dataset="mnist", model="cnn3", eps=[0.1, 0.3],
        domains=["box", "hbox", "crown-ibp", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=256, pgd_epochs=70, pgd_lr=5e-4, pgd_steps=8,
        grad_epochs=70, grad_lr=5e-5, grad_milestones=[50, 60], grad_decay=0.2,
        grad_ramp_epochs={"0.1": 20, "0.3": 20},
        pgpe_epochs=150, pgpe_lr=3e-4, pgpe_milestones=[110, 130], pgpe_decay=0.4,
        pgpe_ramp_epochs={"0.1": 0, "0.3": 50}, pgpe_batch_size=512, popsize=256, sigma=1e-3,
        train_subset=None, test_subset=None, tightness_subset=1000, tightness_eps_max=2.0,
        tightness_n_eps=11, eval_pgd_steps=50, eval_pgd_restarts=5,
    ),
    # mnist5k on 2 CPU cores in at most 15 minutes (measured: docs/paradox.md)
    "quick": dict(
        dataset="mnist5k", model="absdsl.training.paradox:quick_fc", eps=[0.1],
        domains=["box", "hbox", "crown-ibp", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=64, pgd_epochs=3, pgd_lr=1e-3, pgd_steps=5,
        grad_epochs=2, grad_lr=5e-4, grad_milestones=[], grad_decay=1.0,
        grad_ramp_epochs={}, pgpe_epochs=3, pgpe_lr=1e-3, pgpe_milestones=[],
        pgpe_decay=1.0, pgpe_ramp_epochs={}, pgpe_batch_size=128, popsize=16, sigma=1e-3,
        train_subset=None, test_subset=300, tightness_subset=100, tightness_eps_max=3.0,
        tightness_n_eps=6, eval_pgd_steps=20, eval_pgd_restarts=2,
        pgpe_memory_mib=2048.0,  # one HBox member at batch 128 needs ~760 MiB
    ),
    # the tests' preset: a 784-16-10 network, a few steps per run
    "micro": dict(
        dataset="mnist5k", model="absdsl.training.paradox:micro_fc", eps=[0.1],
        domains=["box", "deeppoly"], optimizers=["grad", "pgpe"],
        batch_size=32, pgd_epochs=1, pgd_lr=1e-3, pgd_steps=2,
        grad_epochs=1, grad_lr=1e-3, grad_milestones=[], grad_decay=1.0,
        grad_ramp_epochs={}, pgpe_epochs=1, pgpe_lr=1e-3, pgpe_milestones=[],
        pgpe_decay=1.0, pgpe_ramp_epochs={}, pgpe_batch_size=32, popsize=4, sigma=1e-3,
        train_subset=64, test_subset=20, tightness_subset=10, tightness_eps_max=2.0,
        tightness_n_eps=2, eval_pgd_steps=2, eval_pgd_restarts=1,
    ),
}
FIELDS = {f.name for f in fields(ParadoxConfig)}


def _parse_list(text: str, what: str) -> list[str]:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ParadoxError(f"--{what} needs at least one value (comma separated)")
    return items


def _canonical_domain(name: str) -> str:
    from .programs import DOMAIN_ALIASES

    key = name.strip().lower()
    key = DOMAIN_ALIASES.get(key, key)
    if key not in TABLE_DOMAINS:
        raise ParadoxError(
            f"unknown domain {name!r}; choose from {', '.join(TABLE_DOMAINS)} "
            f"(aliases {', '.join(DOMAIN_ALIASES)})"
        )
    return key


def _unique(items: list[str]) -> list[str]:
    return list(dict.fromkeys(items))


def eps_key(eps: float) -> str:
    """An eps as text for folder names and JSON keys: 0.1 -> '0.1'."""
    return f"{eps:g}"


def make_config(preset: str, overrides: dict[str, Any] | None = None) -> ParadoxConfig:
    """The preset's settings with ``overrides`` (None values ignored), validated."""
    if preset not in PRESETS:
        raise ParadoxError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values: dict[str, Any] = json.loads(json.dumps(PRESETS[preset]))  # a deep copy
    for key, value in (overrides or {}).items():
        if key not in FIELDS:
            raise ParadoxError(f"unknown paradox setting {key!r}")
        if value is not None:
            values[key] = value
    cfg = ParadoxConfig(preset=preset, **values)
    validate(cfg)
    return cfg


def validate(cfg: ParadoxConfig) -> None:
    """Range and name checks with messages naming the setting; no work is done."""
    from .data import dataset_info

    cfg.domains = _unique([_canonical_domain(d) for d in cfg.domains])
    opts = [o.strip().lower() for o in cfg.optimizers]
    for o in opts:
        if o not in OPTIMIZERS:
            raise ParadoxError(f"unknown optimizer {o!r}; choose from {', '.join(OPTIMIZERS)}")
    cfg.optimizers = _unique(opts)
    eps_values: list[float] = []
    for e in cfg.eps:
        try:
            value = float(e)
        except (TypeError, ValueError) as err:
            raise ParadoxError(f"eps {e!r} is not a number") from err
        if not (math.isfinite(value) and 0.0 < value <= 1.0):
            raise ParadoxError(f"eps must lie in (0, 1] (pixel units), got {e}")
        eps_values.append(value)
    if not eps_values:
        raise ParadoxError("at least one eps is needed")
    cfg.eps = sorted(set(eps_values))
    try:
        dataset_info(cfg.dataset)
    except AbsdslError as err:
        raise ParadoxError(str(err)) from err
    for name in ("batch_size", "pgd_epochs", "grad_epochs", "pgpe_epochs", "pgpe_batch_size",
                 "tightness_subset", "eval_pgd_steps", "eval_pgd_restarts"):
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ParadoxError(f"{name} must be an integer >= 1, got {value!r}")
    if isinstance(cfg.popsize, bool) or not isinstance(cfg.popsize, int) or cfg.popsize < 2 \
            or cfg.popsize % 2:
        raise ParadoxError(f"popsize must be an even integer >= 2 (PGPE samples +/- pairs), "
                           f"got {cfg.popsize!r}")
    for name in ("train_subset", "test_subset"):
        value = getattr(cfg, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ParadoxError(f"{name} must be an integer >= 1 (or absent), got {value!r}")
    for name in ("pgd_lr", "grad_lr", "pgpe_lr", "sigma", "tolerance", "tightness_eps_max"):
        value = getattr(cfg, name)
        if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
            raise ParadoxError(f"{name} must be a number > 0, got {value!r}")
    if cfg.tightness_n_eps < 2:
        raise ParadoxError(f"tightness_n_eps must be >= 2, got {cfg.tightness_n_eps}")
    if not isinstance(cfg.complete, bool):
        raise ParadoxError(f"complete must be true or false, got {cfg.complete!r}")
    from .milp import MilpError, check_time_limit

    try:
        check_time_limit(cfg.milp_time_limit)
    except MilpError as err:
        raise ParadoxError(str(err)) from err
    if max(cfg.eps) * cfg.tightness_eps_max > 1.0:
        cfg.tightness_eps_max = 1.0 / max(cfg.eps)  # the curve stops at eps 1


def check_data_available(cfg: ParadoxConfig) -> None:
    """Full data sets come from a data root: fail now, naming what is missing."""
    if cfg.dataset == "mnist5k":
        return
    root = Path(cfg.data_root) if cfg.data_root else Path("data")
    if cfg.download:
        return
    raw = root / {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}.get(cfg.dataset, "") / "raw"
    if cfg.dataset == "cifar10":
        raw = root / "cifar-10-batches-py"
    if not raw.is_dir():
        raise ParadoxError(
            f"preset {cfg.preset!r} needs the full {cfg.dataset} data set, which is not on this "
            f"machine (no folder {raw}); pass --data-root DIR holding it, or --download where "
            f"the machine is online (torchvision's layout), or use --preset quick (mnist5k)"
        )


# ---- the plan: which runs, with which training configs ------------------------------------
@dataclass
class RunSpec:
    """One training run of the experiment."""

    name: str  # folder name under OUT/runs (with an eps prefix when several eps are run)
    eps: float
    optimizer: str  # "pgd" for the shared start
    domain: str | None
    overrides: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields

    @property
    def is_start(self) -> bool:
        return self.optimizer == "pgd"


def run_name(eps: float, optimizer: str, domain: str | None, several_eps: bool) -> str:
    base = "pgd" if optimizer == "pgd" else f"{optimizer}-{domain}"
    return f"eps{eps_key(eps)}/{base}" if several_eps else base


def plan(cfg: ParadoxConfig) -> list[RunSpec]:
    """The PGD start and the fine-tunings, per eps, in the order they run."""
    several = len(cfg.eps) > 1
    common: dict[str, Any] = dict(
        dataset=cfg.dataset, data_root=cfg.data_root, download=cfg.download, model=cfg.model,
        seed=cfg.seed, device=cfg.device, train_subset=cfg.train_subset,
        eval_every=0, tolerance=cfg.tolerance,
        eval_pgd_steps=cfg.eval_pgd_steps, eval_pgd_restarts=cfg.eval_pgd_restarts,
        warmup_epochs=0, grad_clip=10.0, kappa=0.0,
        beta_start=1.0, beta_end=1.0,  # CROWN-IBP as itself ("CROWN-IBP (R)")
    )
    out: list[RunSpec] = []
    for eps in cfg.eps:
        key = eps_key(eps)
        start: dict[str, Any] = dict(
            common, method="pgd", optimizer="grad", domain="box", eps=eps,
            epochs=cfg.pgd_epochs, lr=cfg.pgd_lr, batch_size=cfg.batch_size,
            lr_milestones=[], lr_decay=1.0, ramp_epochs=0, pgd_steps=cfg.pgd_steps)
        out.append(RunSpec(run_name(eps, "pgd", None, several), eps, "pgd", None, start))
        for opt in cfg.optimizers:
            for domain in cfg.domains:
                if opt == "grad":
                    o = dict(common, method="certified", optimizer="grad", domain=domain,
                             eps=eps, epochs=cfg.grad_epochs, lr=cfg.grad_lr,
                             batch_size=cfg.batch_size, lr_milestones=list(cfg.grad_milestones),
                             lr_decay=cfg.grad_decay,
                             ramp_epochs=int(cfg.grad_ramp_epochs.get(key, 0)))
                else:
                    o = dict(common, method="certified", optimizer="pgpe", domain=domain,
                             eps=eps, epochs=cfg.pgpe_epochs, lr=cfg.pgpe_lr,
                             batch_size=cfg.pgpe_batch_size,
                             lr_milestones=list(cfg.pgpe_milestones), lr_decay=cfg.pgpe_decay,
                             ramp_epochs=int(cfg.pgpe_ramp_epochs.get(key, 0)),
                             options={"popsize": cfg.popsize, "sigma": cfg.sigma})
                    if cfg.pgpe_memory_mib is not None:
                        o["options"]["memory_budget_mib"] = float(cfg.pgpe_memory_mib)
                out.append(RunSpec(run_name(eps, opt, domain, several), eps, opt, domain, o))
    return out


def train_config(spec: RunSpec, init_checkpoint: Path | None = None) -> Any:
    """The resolved TrainConfig of a run (PGPE's start goes in as ``init_checkpoint``)."""
    from .config import resolve

    overrides = json.loads(json.dumps(spec.overrides))
    if spec.optimizer == "pgpe" and init_checkpoint is not None:
        overrides["options"] = dict(overrides["options"], init_checkpoint=str(init_checkpoint))
    return resolve(overrides)


def _comparable(cfg_dict: dict[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict without what may differ between resumes of the same run."""
    out = {k: v for k, v in cfg_dict.items() if k not in NOT_COMPARED}
    options = dict(out.get("options") or {})
    options.pop("init_checkpoint", None)  # the start is compared by its hash instead
    options.pop("memory_budget_mib", None)  # chunking changes speed, not results
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
    from .checkpoint import atomic_write_text

    atomic_write_text(json.dumps(data, indent=2) + "\n", path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def final_checkpoint(run_dir: Path, epochs: int) -> Path:
    from .checkpoint import checkpoint_name

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
        old = {k: v for k, v in saved.get("config", {}).items() if k not in NOT_COMPARED}
        for key, value in ADDED_DEFAULTS.items():
            old.setdefault(key, value)
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
    from .checkpoint import list_checkpoints
    from .config import load_toml, resolve
    from .loop import run_training

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
        result = _train(lambda: run_training(None, run_dir, resume=True, progress=progress,
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
            result = _train(lambda: run_training(None, run_dir, resume=True, progress=progress,
                                                 final_eval=False), run_dir, out)
        else:
            result = _train(lambda: run_training(cfg, run_dir, overwrite=True,
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
    from .loop import Interrupted

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
    from .checkpoint import CheckpointError, load_checkpoint
    from .loop import Trainer, prepare_run_dir

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
    from .data import Split

    if n is None or n >= len(split):
        return split
    idx = torch.linspace(0, len(split) - 1, n).round().long().unique()
    return Split(split.images[idx], split.labels[idx])


def load_network(run_dir: Path, checkpoint: Path) -> tuple[nn.Module, DatasetInfo]:
    """The trained network of a run, on the CPU in eval mode (weights-only load)."""
    from .checkpoint import CheckpointError, load_checkpoint
    from .data import dataset_info
    from .models import build_model

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
    from .analysis.tightness import compile_domain, float64_copy
    from .data import dataset_info
    from .models import build_model

    info = dataset_info(cfg.dataset)
    model = float64_copy(build_model(cfg.model, info))
    shape = tuple(info.shape)
    for name in cfg.domains:
        try:
            compile_domain(model, name, shape)
        except AbsdslError as err:
            raise ParadoxError(f"domain {name!r} cannot train or bound model {cfg.model!r}: "
                               f"{str(err).splitlines()[0]}") from err
    if cfg.complete:
        from .milp import NetworkMilp

        try:
            NetworkMilp(model, shape)
        except AbsdslError as err:
            raise ParadoxError(f"--complete: {str(err).splitlines()[0]}") from err


def certify_run(outcome: RunOutcome, cfg: ParadoxConfig, test_split: Any,
                quiet: bool) -> dict[str, Any]:
    """The cascade on the run's network (cached in the run folder by checkpoint hash)."""
    from .certify import CertifyOptions, certify_model

    key: dict[str, Any] = {
        "checkpoint_sha256": outcome.sha256, "eps": outcome.spec.eps, "domain": "tightest",
        "n": len(test_split), "pgd_steps": cfg.eval_pgd_steps,
        "pgd_restarts": cfg.eval_pgd_restarts, "tolerance": cfg.tolerance, "seed": cfg.seed}
    if cfg.complete:  # (without it the key is the one earlier versions wrote)
        key.update(stages=["milp"], milp_time_limit=cfg.milp_time_limit)
    cache = outcome.run_dir / CERTIFY_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["summary"]
    model, info = load_network(outcome.run_dir, outcome.checkpoint)
    if cfg.complete:
        import importlib

        importlib.import_module(f"{__package__}.milp")  # registers the "milp" stage
    opts = CertifyOptions(eps=outcome.spec.eps, domain="tightest", tolerance=cfg.tolerance,
                          pgd_steps=cfg.eval_pgd_steps, pgd_restarts=cfg.eval_pgd_restarts,
                          seed=cfg.seed, extra_stages=["milp"] if cfg.complete else [],
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


def tightness_run(outcome: RunOutcome, cfg: ParadoxConfig, x: torch.Tensor, y: torch.Tensor,
                  quiet: bool) -> dict[str, Any]:
    """Each domain's certified-accuracy curve and AUC on the run's network (cached)."""
    from .analysis.tightness import certified_auc, propagation_tightness

    eps_max = cfg.tightness_eps_max * outcome.spec.eps
    key = {"checkpoint_sha256": outcome.sha256, "domains": list(cfg.domains),
           "eps_max": eps_max, "n_eps": cfg.tightness_n_eps, "n": int(y.shape[0]),
           "tolerance": cfg.tolerance}
    cache = outcome.run_dir / TIGHTNESS_CACHE
    cached = _read_json(cache)
    if cached is not None and cached.get("key") == key:
        return cached["result"]
    start = time.perf_counter()
    model, _ = load_network(outcome.run_dir, outcome.checkpoint)
    curves = {}
    for domain in cfg.domains:
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


# ---- the table ----------------------------------------------------------------------------
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"


def build_tables(cfg: ParadoxConfig, certs: dict[str, dict[str, Any]],
                 tight: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per eps: Table 1's rows (PGD start, then one per domain) and the findings."""
    several = len(cfg.eps) > 1
    tables = []
    for eps in cfg.eps:
        start = run_name(eps, "pgd", None, several)
        rows = []
        pgd_cert = certs[start]
        rows.append({
            "domain": "PGD",
            "grad": {m: pgd_cert[f"{m}_acc"] for m in METRICS}, "pgpe": None,
            "tightness": None,
        })
        for domain in cfg.domains:
            row: dict[str, Any] = {"domain": domain}
            for opt in OPTIMIZERS:
                name = run_name(eps, opt, domain, several)
                row[opt] = ({m: certs[name][f"{m}_acc"] for m in METRICS}
                            if name in certs else None)
                row[f"tightness_{opt}"] = (tight[name]["auc"][domain] if name in tight
                                           else None)
            row["tightness"] = tight[start]["auc"][domain]  # on the shared PGD start
            rows.append(row)
        prefix = f"eps{eps_key(eps)}/" if several else ""
        networks = {name: {"auc": t["auc"],
                           "propagation_tightness": t["propagation_tightness"]}
                    for name, t in tight.items() if name.startswith(prefix)}
        tables.append({"eps": eps, "rows": rows, "tightness_by_network": networks,
                       "findings": findings([r for r in rows if r["domain"] != "PGD"])})
    return tables


def _spearman(a: list[float], b: list[float]) -> float | None:
    """Rank correlation (average ranks for ties); None if either side is constant."""
    def ranks(v: list[float]) -> list[float]:
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    if len(a) < 2:
        return None
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    va = sum((x - ma) ** 2 for x in ra)
    vb = sum((y - mb) ** 2 for y in rb)
    if va == 0 or vb == 0:
        return None
    return cov / math.sqrt(va * vb)


def findings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Does the paradox (GRAD: tighter trains worse) and its reversal (PGPE) show here?

    Measured as the rank correlation between a domain's tightness on the shared start and
    the certified accuracy it trains to: negative under GRAD is the paradox, positive under
    PGPE the reversal; also whether the loosest domain beats the tightest under each.
    """
    out: dict[str, Any] = {}
    tight = [r["tightness"] for r in rows]
    loosest = rows[min(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    tightest = rows[max(range(len(rows)), key=lambda i: tight[i])]["domain"] if rows else None
    out["loosest_domain"], out["tightest_domain"] = loosest, tightest
    for opt in OPTIMIZERS:
        have = [r for r in rows if r.get(opt) is not None]
        if len(have) < 2:
            continue
        cert = [r[opt]["certified"] for r in have]
        rho = _spearman([r["tightness"] for r in have], cert)
        by = {r["domain"]: r[opt]["certified"] for r in have}
        out[opt] = {
            "rank_correlation_tightness_vs_certified": rho,
            "loosest_minus_tightest_certified": (
                by[loosest] - by[tightest] if loosest in by and tightest in by else None),
            "best_domain": max(by, key=lambda d: by[d]),
        }
    g, p = out.get("grad"), out.get("pgpe")
    out["paradox_under_grad"] = None if g is None or g[
        "rank_correlation_tightness_vs_certified"] is None else bool(
        g["rank_correlation_tightness_vs_certified"] < 0)
    out["reversal_under_pgpe"] = None if p is None or p[
        "rank_correlation_tightness_vs_certified"] is None else bool(
        p["rank_correlation_tightness_vs_certified"] > 0)
    return out


def format_tables(tables: list[dict[str, Any]], dataset: str) -> str:
    """The paper's Table 1 layout as text (accuracies in %, tightness as AUC)."""
    lines: list[str] = []
    head1 = (f"{'Dataset':<10}{'eps':<6}{'Relaxation':<12}{'Nat. Acc. [%]':^16}"
             f"{'Cert. Acc. [%]':^16}{'Adv. Acc. [%]':^16}{'Tightness (AUC)':^24}")
    head2 = (f"{'':<28}" + f"{'GRAD':>8}{'PGPE':>8}" * 3
             + f"{'start':>8}{'GRAD':>8}{'PGPE':>8}")
    lines += [head1, head2, "-" * len(head1)]
    for t in tables:
        for i, r in enumerate(t["rows"]):
            name = {"box": "IBP (box)", "hbox": "HBox", "zonotope": "Zonotope",
                    "crown-ibp": "CROWN-IBP", "deeppoly": "DeepPoly"}.get(r["domain"],
                                                                         r["domain"])
            cells = []
            for m in METRICS:
                for opt in OPTIMIZERS:
                    cells.append(_pct(r[opt][m]) if r.get(opt) else "-")
            tights = [r.get("tightness"), r.get("tightness_grad"), r.get("tightness_pgpe")]
            tcells = ["-" if v is None else f"{v:.3f}" for v in tights]
            lines.append(f"{dataset if i == 0 else '':<10}"
                         f"{eps_key(t['eps']) if i == 0 else '':<6}{name:<12}"
                         + "".join(f"{c:>8}" for c in cells)
                         + "".join(f"{c:>8}" for c in tcells))
        f = t["findings"]
        for opt, what in (("grad", "paradox_under_grad"), ("pgpe", "reversal_under_pgpe")):
            if opt in f:
                rho = f[opt]["rank_correlation_tightness_vs_certified"]
                rho_s = "n/a" if rho is None else f"{rho:+.2f}"
                lines.append(f"  {opt.upper()}: rank corr(tightness, certified) = {rho_s}; "
                             f"best {f[opt]['best_domain']}; {what.replace('_', ' ')}: "
                             f"{f.get(what)}")
        lines.append("")
    lines.append("Tightness: AUC of the domain's certified accuracy over eps in [0, eps_max] "
                 "divided by eps_max; 'start' on the shared PGD network, GRAD/PGPE on the "
                 "network the domain trained.")
    return "\n".join(lines)


def plot(tables: list[dict[str, Any]], path: Path, title: str) -> None:
    """Grouped bars per eps: natural / certified / adversarial (GRAD vs PGPE) and tightness."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(tables)
    fig, axes = plt.subplots(n, 4, figsize=(16, 3.6 * n), squeeze=False)
    colors = {"grad": "#4c72b0", "pgpe": "#dd8452"}
    for row_axes, t in zip(axes, tables, strict=True):
        rows = [r for r in t["rows"] if r["domain"] != "PGD"]
        pgd = t["rows"][0]["grad"]
        names = [r["domain"] for r in rows]
        xs = list(range(len(rows)))
        for ax, m in zip(row_axes[:3], METRICS, strict=True):
            for k, opt in enumerate(OPTIMIZERS):
                vals = [100 * r[opt][m] if r.get(opt) else 0.0 for r in rows]
                ax.bar([x + (k - 0.5) * 0.38 for x in xs], vals, width=0.38,
                       color=colors[opt], label=opt.upper())
            ax.axhline(100 * pgd[m], color="k", ls="--", lw=1, label="PGD start")
            ax.set_xticks(xs, names)
            ax.set_title(f"{m} accuracy, eps {eps_key(t['eps'])}")
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
        ax = row_axes[3]
        ax.bar(xs, [r["tightness"] for r in rows], color="#55a868")
        ax.set_xticks(xs, names)
        ax.set_title("tightness on the PGD start (AUC)")
        ax.set_ylim(0, 1)
        row_axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the command --------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {"platform": platform.platform(), "python": sys.version.split()[0],
            "torch": torch.__version__, "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average": load}


def experiment(cfg: ParadoxConfig, out: Path, *, overwrite: bool = False, quiet: bool = False,
               progress: bool = False) -> dict[str, Any]:
    """Run (or resume) the whole experiment into ``out``; returns what paradox.json holds."""
    from .data import load_dataset

    check_data_available(cfg)
    specs = plan(cfg)
    for spec in specs:  # every training config is checked before any work
        train_config(spec, Path("start.pt") if spec.optimizer == "pgpe" else None)
    check_domains(cfg)
    prepare_out(out, cfg, overwrite)
    wall = time.perf_counter()
    info_start = machine()
    _, _, test = load_dataset(cfg.dataset, cfg.data_root, cfg.download)
    test_split = spread_subset(test, cfg.test_subset)
    tight_split = spread_subset(test, cfg.tightness_subset)
    x_t, y_t = tight_split.as_float()

    outcomes: dict[str, RunOutcome] = {}
    certs: dict[str, dict[str, Any]] = {}
    tight: dict[str, dict[str, Any]] = {}
    timings: dict[str, dict[str, Any]] = {}
    for i, spec in enumerate(specs):
        _log(quiet, f"[{i + 1}/{len(specs)}] {spec.name}")
        start = None
        if not spec.is_start:
            start = outcomes[run_name(spec.eps, "pgd", None, len(cfg.eps) > 1)]
        outcome = ensure_run(spec, out, start, quiet=quiet, progress=progress)
        outcomes[spec.name] = outcome
        t0 = time.perf_counter()
        certs[spec.name] = certify_run(outcome, cfg, test_split, quiet)
        t1 = time.perf_counter()
        tight[spec.name] = tightness_run(outcome, cfg, x_t, y_t, quiet)
        t2 = time.perf_counter()
        timings[spec.name] = {"status": outcome.status, "train_wall_seconds": outcome.wall_seconds,
                              "train_seconds": outcome.train_seconds,
                              "certify_wall_seconds": t1 - t0, "tightness_wall_seconds": t2 - t1}
    tables = build_tables(cfg, certs, tight)
    total = time.perf_counter() - wall
    text = format_tables(tables, cfg.dataset)
    result = {
        "format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
        "table_layout": {
            "rows": "domain (PGD: the shared start, GRAD column only)",
            "columns": {m: list(OPTIMIZERS) for m in METRICS},
            "tightness": "AUC on the PGD start; tightness_grad / tightness_pgpe: AUC of the "
                         "domain on the network it trained",
        },
        "certification": {
            "domain": "tightest", "cascade": "clean -> box, hbox, zonotope, crown-ibp, "
            "deeppoly bounds (float64, margin > tolerance) -> PGD" + (
                f" -> exact MILP (HiGHS, {cfg.milp_time_limit:g} s per input)"
                if cfg.complete else ""),
            "complete": cfg.complete, "eps": cfg.eps,
            "n_test": len(test_split), "tolerance": cfg.tolerance,
        },
        "tightness": {"eps_max_factor": cfg.tightness_eps_max, "n_eps": cfg.tightness_n_eps,
                      "n": int(y_t.shape[0]),
                      "normalisation": _normalisation()},
        "tables": tables,
        "runs": {name: {"certify": certs[name], "tightness": tight[name],
                        "run_dir": str(outcomes[name].run_dir),
                        "checkpoint": str(outcomes[name].checkpoint)} for name in outcomes},
        "timings": {"runs": timings, "total_wall_seconds": total},
        "machine": {"start": info_start, "end": machine()},
        "text": text,
    }
    _write_json(out / "paradox.json", result)
    (out / "paradox.txt").write_text(text + "\n", encoding="utf-8")
    plot(tables, out / "paradox.png",
         f"absdsl paradox: {cfg.preset} preset, {cfg.dataset}, {cfg.model}")
    return result


def _normalisation() -> str:
    from .analysis.tightness import AUC_NORMALISATION

    return AUC_NORMALISATION


def register(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="quick",
                        help=f"settings to start from: {', '.join(PRESETS)} (default quick)")
    parser.add_argument("--out", default=None,
                        help="output folder (default paradox-<preset>); run again to resume")
    parser.add_argument("--domains", default=None,
                        help="comma-separated domains (box, hbox, zonotope, crown-ibp, deeppoly)")
    parser.add_argument("--optimizers", default=None, help="comma-separated: grad, pgpe")
    parser.add_argument("--eps", default=None, help="comma-separated eps in (0, 1]")
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs (GRAD and PGPE)")
    parser.add_argument("--pgd-epochs", type=int, default=None, help="epochs of the PGD start")
    parser.add_argument("--popsize", type=int, default=None, help="PGPE population size")
    parser.add_argument("--model", default=None,
                        help="cnn3, cnn5, cnn7, fc or module:factory")
    parser.add_argument("--train-subset", type=int, default=None,
                        help="train on the first N training examples")
    parser.add_argument("--test-subset", type=int, default=None,
                        help="certify the first N test examples")
    parser.add_argument("--device", default=None, help="training device (cpu, cuda, ...)")
    parser.add_argument("--complete", action="store_true", default=None,
                        help="certify with the exact MILP stage too (as absdsl certify "
                             "--complete): every network, the same cascade")
    parser.add_argument("--milp-time-limit", type=float, default=None, metavar="SECONDS",
                        help="HiGHS time per input with --complete (default 30)")
    parser.add_argument("--data-root", default=None, help="folder of the full data sets")
    parser.add_argument("--download", action="store_true", default=None,
                        help="download the data set where the machine is online")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds a different paradox run")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved settings and runs, and stop")
    parser.add_argument("--progress", action="store_true",
                        help="show the training loop's progress bars and epoch lines")
    parser.add_argument("--quiet", action="store_true", help="print only the table")


def config_from_args(args: argparse.Namespace) -> ParadoxConfig:
    overrides: dict[str, Any] = {
        "epochs": None,
        "domains": _parse_list(args.domains, "domains") if args.domains is not None else None,
        "optimizers": (_parse_list(args.optimizers, "optimizers")
                       if args.optimizers is not None else None),
        "eps": _parse_list(args.eps, "eps") if args.eps is not None else None,
        "pgd_epochs": args.pgd_epochs, "popsize": args.popsize, "model": args.model,
        "train_subset": args.train_subset, "test_subset": args.test_subset,
        "device": args.device, "data_root": args.data_root, "download": args.download,
        "complete": args.complete, "milp_time_limit": args.milp_time_limit,
    }
    overrides.pop("epochs")
    epochs = args.epochs
    if epochs is not None:
        overrides["grad_epochs"] = overrides["pgpe_epochs"] = epochs
    return make_config(args.preset, overrides)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    out = Path(args.out if args.out is not None else f"paradox-{cfg.preset}")
    if args.dry_run:
        print(json.dumps({"out": str(out), "config": cfg.to_dict(),
                          "runs": [{"name": s.name, **s.overrides} for s in plan(cfg)]},
                         indent=2))
        return 0
    if not args.quiet:
        print(f"absdsl paradox: preset {cfg.preset}, {cfg.dataset}, model {cfg.model}, eps "
              f"{', '.join(map(eps_key, cfg.eps))}, domains {', '.join(cfg.domains)}, "
              f"optimizers {', '.join(cfg.optimizers)} -> {out}", flush=True)
    result = experiment(cfg, out, overwrite=args.overwrite, quiet=args.quiet,
                        progress=args.progress)
    print(result["text"])
    if not args.quiet:
        print(f"wrote {out / 'paradox.json'} and {out / 'paradox.png'} "
              f"({result['timings']['total_wall_seconds']:.0f} s)")
    return 0


__all__ = ["ParadoxConfig", "ParadoxError", "PRESETS", "experiment", "make_config", "plan",
           "register", "run"]
