"""``absdsl paradox``: the paradox of certified training, measured on one architecture.

The protocol of the smoothing paper's section 4.1 ("Gaussian Loss Smoothing"): GRAD trains
the network with each domain (box, hbox, crown-ibp, deeppoly) from scratch (torch's Kaiming
uniform init, the eps ramp, Adam, gradient clipping; ``grad_start = "pgd"`` fine-tunes from
the PGD start instead); one network is PGD-trained (the shared start) and, from that
checkpoint, fine-tuned with each domain under PGPE and under RGS (the first-order estimate of
the same smoothed gradient). Every network is certified by the same cascade
(``certify_model`` with domain "tightest", same eps, same test inputs), and each domain's
tightness (the AUC of certified accuracy vs eps, ``training/analysis/tightness.py``) is
measured on the start and on the network the domain trained (``tightness_scope = "all"``: on every
network). The result is laid out like Table 1 of the paper: rows are domains, columns
natural / certified / adversarial accuracy per optimiser, plus tightness; written as
``paradox.json`` and ``paradox.png``. ``--estimate`` times a few steps of every run and
projects the experiment's wall time before it is started.

Every training goes through ``run_training`` (what ``absdsl train`` runs) into its own folder
``OUT/runs/<optimizer>-<domain>`` (``OUT/runs/pgd`` for the start). Running the command again
resumes: a finished run (marker written, final checkpoint present, config equal) is skipped, a
partial one continues from its newest checkpoint through the loop's resume support, and
certification and tightness results are cached per run, keyed by the checkpoint's hash.

The package: ``config`` (settings, presets, checks), ``plan`` (the runs), ``runs`` (train,
resume, certify, measure tightness), ``report`` (tables, findings, figure), ``estimate``,
``experiment`` (all of it into one folder) and ``cli`` (the command).
"""

from __future__ import annotations

from .cli import config_from_args, register, run
from .config import (
    ADDED_DEFAULTS,
    CERTIFY_CACHE,
    CONFIG_FILE,
    FORMAT,
    PRESETS,
    RUN_MARKER,
    STAGE_FIELDS,
    ParadoxConfig,
    ParadoxError,
    make_config,
    micro_fc,
    quick_fc,
)
from .estimate import estimate, format_estimate
from .experiment import experiment
from .plan import RunSpec, plan, train_config
from .report import findings, format_tables
from .runs import file_sha256, load_network, prepare_out

__all__ = ["ADDED_DEFAULTS", "CERTIFY_CACHE", "CONFIG_FILE", "FORMAT", "PRESETS", "RUN_MARKER",
           "STAGE_FIELDS", "ParadoxConfig", "ParadoxError", "RunSpec", "config_from_args",
           "estimate", "experiment", "file_sha256", "findings", "format_estimate",
           "format_tables", "load_network", "make_config", "micro_fc", "plan", "prepare_out",
           "quick_fc", "register", "run", "train_config"]
