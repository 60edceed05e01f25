"""The training loop: run folder, resume equality, NaN stop, every domain and method."""

from __future__ import annotations

import io
import json
import textwrap

import pytest
import torch

from absdsl.errors import AbsdslError
from absdsl.training.checkpoint import list_checkpoints, load_checkpoint
from absdsl.training.loop import Interrupted, run_training


def _weights(run_dir):
    found = list_checkpoints(run_dir)
    return load_checkpoint(found[-1][2])["model"]


def test_run_folder_holds_config_metrics_and_checkpoints(tiny, tmp_path):
    result = run_training(tiny(epochs=2), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    assert "\neps = 0.1\n" in (run / "config.toml").read_text()
    lines = [json.loads(s) for s in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2] and lines[-1]["eps"] == pytest.approx(0.1)
    final = json.loads((run / "metrics.json").read_text())
    for key in ("natural_acc", "adversarial_acc", "certified_acc", "domain", "eps", "seconds"):
        assert key in final
    assert final["domain"] == result["domain"] == "box"
    assert final["certified_acc"] <= final["adversarial_acc"] <= final["natural_acc"]
    assert [(e, b) for e, b, _ in list_checkpoints(run)] == [(1, 0), (2, 0)]
    ckpt = torch.load(list_checkpoints(run)[-1][2], weights_only=True)
    assert ckpt["step"] == 8 and "optimizer" in ckpt["step_rule"] and "torch" in ckpt["rng"]


def test_existing_run_is_not_overwritten(tiny, tmp_path):
    run_training(tiny(epochs=1), tmp_path / "run", progress=False, final_eval=False)
    with pytest.raises(AbsdslError, match="--resume"):
        run_training(tiny(epochs=1), tmp_path / "run", progress=False, final_eval=False)


@pytest.mark.parametrize("stop_at", [3, 4])  # mid-epoch, and exactly at an epoch's end
def test_resumed_run_ends_with_the_same_weights(tiny, tmp_path, stop_at):
    # MTL-IBP exercises both the bound program and the random PGD starts (RNG state).
    cfg = dict(method="mtl-ibp", epochs=2)
    run_training(tiny(**cfg), tmp_path / "straight", progress=False, final_eval=False)

    def stop(trainer, step):
        if step == stop_at:
            trainer.request_stop()

    with pytest.raises(Interrupted, match="--resume"):
        run_training(tiny(**cfg), tmp_path / "split", progress=False, final_eval=False,
                     on_step=stop)
    run_training(None, tmp_path / "split", resume=True, progress=False, final_eval=False)
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    lines = (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1, 2]


def test_nan_loss_stops_naming_epoch_and_step_and_keeps_last_checkpoint(
    tiny, tmp_path, monkeypatch
):
    (tmp_path / "nan_net.py").write_text(textwrap.dedent("""
        import torch
        import torch.nn as nn

        class Flaky(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(784, 10)
                self.calls = 0

            def forward(self, x):
                out = self.fc(x.flatten(1))
                if self.training:
                    self.calls += 1
                    if self.calls > 5:
                        out = out * float("nan")
                return out

        def make():
            return Flaky()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tiny(model="nan_net:make", method="natural", epochs=3)
    with pytest.raises(AbsdslError, match=r"epoch 2, step 5"):
        run_training(cfg, tmp_path / "run", progress=False)
    assert [(e, b) for e, b, _ in list_checkpoints(tmp_path / "run")] == [(1, 0)]


def test_box_training_lowers_the_robust_loss(tiny, tmp_path):
    run_training(tiny(epochs=3, ramp_epochs=0, eps=0.05, lr=2e-3), tmp_path / "r",
                 progress=False, final_eval=False)
    lines = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["loss"] < lines[0]["loss"]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(domain="hbox"), dict(domain="zonotope"), dict(domain="deeppoly"),
        dict(domain="crown-ibp"), dict(domain="crown-ibp", beta_start=1.0, beta_end=1.0),
        dict(method="sabr"), dict(method="pgd"), dict(method="natural"),
        dict(kappa=0.5, kappa_start=1.0), dict(model="fc"),
    ],
    ids=lambda d: ",".join(f"{k}={v}" for k, v in d.items()),
)
def test_every_domain_and_method_trains(tiny, tmp_path, overrides):
    cfg = tiny(epochs=1, train_subset=16, batch_size=16, ramp_epochs=0, **overrides)
    run_training(cfg, tmp_path / "r", progress=False, final_eval=False)
    line = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert torch.isfinite(torch.tensor(line["loss"])) and line["loss"] > 0


def test_batch_norm_model_updates_running_stats(tiny, tmp_path):
    cfg = tiny(model="cnn7", epochs=1, train_subset=16, batch_size=8, ramp_epochs=0)
    run_training(cfg, tmp_path / "r", progress=False, final_eval=False)
    state = _weights(tmp_path / "r")
    assert float(state["2.running_mean"].abs().sum()) > 0  # natural forward ran in train mode
    assert int(state["2.num_batches_tracked"]) == 2


# -- step-rule hooks: learning rate, metric reductions, progress bar, close ---------------------
class _HookedRule:
    """GRAD plus every optional hook the loop reads, recording what the loop did."""

    name = "hooked"
    metric_reductions = {"probe_last": "last", "probe_sum": "sum", "probe_min": "min"}
    progress_metrics = ("probe_last",)

    def __init__(self, model, config, programs, fail_at: int | None = None) -> None:
        from absdsl.training.grad import GradStep

        self.inner = GradStep(model, config, programs)
        self.closes = 0
        self.calls = 0
        self.fail_at = fail_at

    def step(self, batch):
        metrics = self.inner.step(batch)
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt  # what a second Ctrl-C does inside a step
        value = float(self.calls)
        return metrics | {"probe_last": value, "probe_sum": value, "probe_min": value,
                          "probe_mean": value}

    def current_lr(self) -> float:
        return 0.125  # not the optimiser's lr: the loop must ask the rule

    def close(self) -> None:
        self.closes += 1

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)

    def on_epoch_end(self, epoch: int) -> None:
        self.inner.on_epoch_end(epoch)


@pytest.fixture
def hooked(monkeypatch):
    """Register the ``hooked`` rule for one test; the built rules land in the list."""
    from absdsl.training import steprule

    made: list[_HookedRule] = []
    options: dict = {}

    def factory(model, config, programs):
        made.append(_HookedRule(model, config, programs, **options))
        return made[-1]

    monkeypatch.setitem(steprule._REGISTRY, "hooked", factory)
    return made, options


def _small(tiny, **overrides):
    return tiny(optimizer="hooked", train_subset=64, batch_size=16, epochs=1, **overrides)


def test_loop_uses_the_rules_lr_and_metric_reductions(tiny, tmp_path, hooked, capsys):
    made, _ = hooked
    run_training(_small(tiny), tmp_path / "r", progress=True, final_eval=False)
    record = json.loads((tmp_path / "r" / "metrics.jsonl").read_text())
    assert record["lr"] == 0.125
    # 4 steps reporting 1, 2, 3, 4
    assert record["probe_last"] == 4.0 and record["probe_sum"] == 10.0
    assert record["probe_min"] == 1.0 and record["probe_mean"] == pytest.approx(2.5)
    assert made[0].closes == 1
    # not a terminal (captured): no bar, the rule's metrics are on the per-epoch line
    captured = capsys.readouterr()
    assert "probe_last" in captured.out and "\r" not in captured.err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal():
    from absdsl.training.progress import progress_bar

    assert progress_bar(10, "epoch 1/2", stream=io.StringIO()) is None
    screen = _Terminal()
    bar = progress_bar(10, "epoch 1/2", stream=screen)
    assert bar is not None
    bar.update(3)
    bar.set_postfix(probe_last="4")
    bar.close()
    assert "epoch 1/2" in screen.getvalue() and "probe_last=4" in screen.getvalue()


def test_a_log_file_gets_one_line_per_epoch(tiny, tmp_path, capfd):
    run_training(tiny(train_subset=64, batch_size=16, epochs=3), tmp_path / "r", progress=True,
                 final_eval=False)
    out, err = capfd.readouterr()
    epoch_lines = [s for s in out.splitlines() if s.startswith("{") and '"epoch"' in s]
    assert [json.loads(s)["epoch"] for s in epoch_lines] == [1, 2, 3]
    assert "\r" not in out + err


def test_rule_is_closed_after_a_stop_and_after_a_hard_ctrl_c(tiny, tmp_path, hooked):
    made, options = hooked

    def stop(trainer, step):
        if step == 2:
            trainer.request_stop()

    with pytest.raises(Interrupted):
        run_training(_small(tiny), tmp_path / "a", progress=False, final_eval=False,
                     on_step=stop)
    assert made[-1].closes == 1
    options["fail_at"] = 2
    with pytest.raises(KeyboardInterrupt):
        run_training(_small(tiny), tmp_path / "b", progress=False, final_eval=False)
    assert made[-1].closes == 1 and made[-1].calls == 2


def test_grad_rule_logs_its_learning_rate(tiny, tmp_path):
    run_training(tiny(epochs=2, train_subset=64, batch_size=32, lr=2e-3, lr_milestones=[1],
                      lr_decay=0.5), tmp_path / "r", progress=False, final_eval=False)
    lines = [json.loads(s) for s in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    # logged after on_epoch_end: the rate the next epoch will use
    assert [r["lr"] for r in lines] == [pytest.approx(1e-3), pytest.approx(1e-3)]
