"""Config: precedence, TOML round trip, and range checks with clear messages."""

from __future__ import annotations

import pytest

from absdsl.errors import AbsdslError
from absdsl.training.config import dump_toml, load_toml, parse_option, resolve


def test_preset_fills_what_was_not_given():
    cfg = resolve({"dataset": "mnist", "lr": 1e-3})
    assert cfg.lr == 1e-3 and cfg.epochs == 70 and cfg.lr_milestones == [50, 60]
    assert cfg.train_eps == cfg.eps == 0.1
    assert resolve({"dataset": "cifar10"}).epochs == 160


def test_toml_round_trip(tmp_path):
    cfg = resolve({"eps": 0.2, "domain": "deeppoly", "options": {"popsize": 8, "sigma": 1e-3}})
    path = tmp_path / "c.toml"
    path.write_text(dump_toml(cfg))
    assert resolve(load_toml(path)) == cfg


def test_step_rule_tables_become_options(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('optimizer = "pgpe"\nbatch-size = 32\n[pgpe]\npopsize = 16\n')
    raw = load_toml(path)
    assert raw == {"optimizer": "pgpe", "batch_size": 32, "options": {"popsize": 16}}


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"eps": 1.5}, r"eps must lie in \[0, 1\]"),
        ({"eps": -0.1}, r"eps must lie in \[0, 1\]"),
        ({"dataset": "imagenet"}, "unknown dataset"),
        ({"method": "magic"}, "unknown method"),
        ({"epochs": 0}, "epochs must be >= 1"),
        ({"kappa": 2.0}, r"kappa must lie in \[0, 1\]"),
        ({"colour": "red"}, "unknown config keys: colour"),
    ],
)
def test_bad_settings_are_named(overrides, message):
    with pytest.raises(AbsdslError, match=message):
        resolve(overrides)


def test_bad_toml(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("eps = = 3")
    with pytest.raises(AbsdslError, match="not valid TOML"):
        load_toml(path)
    path.write_text("epsilon = 0.3")
    with pytest.raises(AbsdslError, match="unknown key 'epsilon'"):
        load_toml(path)


def test_parse_option_reads_toml_values():
    assert parse_option("popsize=64") == ("popsize", 64)
    assert parse_option("symmetric=true") == ("symmetric", True)
    assert parse_option("ranking=centered") == ("ranking", "centered")
