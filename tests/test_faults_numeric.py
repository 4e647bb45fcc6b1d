"""Numerical faults (issue 8.3): a NaN/Inf loss stops the run naming the step and the last good
checkpoint (kept), or skips the update up to max_skipped_steps.  NaNs are injected with the
EFFNETS_TEST_INJECT_NAN testing hook."""
import pytest
import torch

from effnets.cli import main
from effnets.errors import TrainingError
from effnets.train import fit
from effnets.train.checkpoint import read_checkpoint

TINY = {"data": "synthetic", "synthetic_samples": 32, "batch_size": 8, "epochs": 2, "workers": 0,
        "model_args": {"width": 0.25, "depth": 0.34}, "train_size": 32, "eval_size": 32, "checkpoint_every": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


def _fit(out, **over):
    return fit("efficientnet_b0", "demo", out_dir=str(out), overrides={**TINY, **over}, echo=lambda *a: None,
               progress=False, tensorboard=False)


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_nonfinite_loss_stops_naming_step_and_last_good_checkpoint(tmp_path, monkeypatch, value):
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", f"3={value}")
    with pytest.raises(TrainingError) as e:
        _fit(tmp_path)
    msg = str(e.value)
    assert f"non-finite loss ({value})" in msg and "at step 3 (epoch 1, batch 3)" in msg
    last = str(tmp_path / "last.safetensors")
    assert f"last good checkpoint: {last} (step 2)" in msg and "nan_policy=skip" in msg
    t, info = read_checkpoint(last)  # kept, finite, from step 2
    assert info["meta"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for k, v in t.items() if v.is_floating_point())


def test_nonfinite_before_any_checkpoint_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", "1")
    with pytest.raises(TrainingError, match="at step 1 .*no checkpoint had been written yet"):
        _fit(tmp_path)


def test_skip_policy_skips_updates_up_to_the_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", "2,5")
    r = _fit(tmp_path / "ok", nan_policy="skip", max_skipped_steps=2)
    assert r.completed and r.skipped_steps == 2 and r.global_step == 8
    t, _ = read_checkpoint(r.checkpoint)
    assert all(torch.isfinite(v).all() for v in t.values() if v.is_floating_point())
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", "2,3,4")
    with pytest.raises(TrainingError, match=r"3 updates skipped, over max_skipped_steps=2.*last good checkpoint"):
        _fit(tmp_path / "over", nan_policy="skip", max_skipped_steps=2)


def test_skipped_step_leaves_weights_unchanged(tmp_path, monkeypatch):
    """A skipped step changes no weight (compare with a run stopped just before it)."""
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", "3")
    a = _fit(tmp_path / "a", nan_policy="skip", max_steps=3, checkpoint_every=0, ema_decay=0.0, best_metric="top1")
    monkeypatch.delenv("EFFNETS_TEST_INJECT_NAN")
    b = _fit(tmp_path / "b", max_steps=2, checkpoint_every=0, ema_decay=0.0, best_metric="top1")
    ta, _ = read_checkpoint(a.checkpoint)
    tb, _ = read_checkpoint(b.checkpoint)
    params = [k for k in ta if k.startswith("model.") and "running" not in k and "num_batches" not in k]
    assert params and all(torch.equal(ta[k], tb[k]) for k in params)


def test_cli_nan_exits_1_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EFFNETS_TEST_INJECT_NAN", "2")
    code = main(["train", "--recipe", "demo", "--data", "synthetic", "--out", str(tmp_path), "--no-progress",
                 "--set", "synthetic_samples=32", "--set", "batch_size=8", "--set", "epochs=1",
                 "--set", "model_args.width=0.25", "--set", "model_args.depth=0.34"])
    assert code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite loss" in err[0] and "step 2" in err[0]


def test_nan_policy_settings_are_validated():
    from effnets.errors import ConfigError
    from effnets.train.recipe import load_recipe
    with pytest.raises(ConfigError, match="nan_policy must be one of stop, skip"):
        load_recipe("demo", ["nan_policy=ignore"])
    with pytest.raises(ConfigError, match="max_skipped_steps must be in"):
        load_recipe("demo", ["max_skipped_steps=-1"])
