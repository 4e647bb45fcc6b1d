"""End-to-end training: logs and outputs, progressive stages, exact resume, eval, teacher, DDP."""
import os
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from effnets.cli import main
from effnets.train import fit
from effnets.train.checkpoint import read_checkpoint

TINY = {"data": "synthetic", "synthetic_samples": 48, "batch_size": 8, "epochs": 2, "workers": 0,
        "model_args": {"width": 0.25, "depth": 0.34}, "train_size": 32, "eval_size": 32}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise-stable and fast for tiny models
    yield
    torch.set_num_threads(n)


def _fit(out, **over):
    lines = []
    r = fit("efficientnet_b0", "demo", out_dir=str(out), overrides={**TINY, **over}, echo=lines.append,
            progress=False, tensorboard=False)
    return r, "\n".join(lines)


def test_fit_outputs_progressive_log_and_config(tmp_path):
    r, log = _fit(tmp_path, epochs=3, augment="randaugment", weight_decay=0.0123, ema_decay=0.9,
                  progressive={"stages": 3, "image_size": [24, 32], "randaug_magnitude": [1, 7],
                               "dropout": [0.0, 0.2], "mixup_alpha": [0.0, 0.4]})
    # the log shows each stage's image size and regularisation
    assert "stage 1/3 (epochs 1-1): image size 24, RandAugment magnitude 1, mixup alpha 0, dropout 0" in log
    assert "stage 2/3 (epochs 2-2): image size 28, RandAugment magnitude 4, mixup alpha 0.2, dropout 0.1" in log
    assert "stage 3/3 (epochs 3-3): image size 32, RandAugment magnitude 7, mixup alpha 0.4, dropout 0.2" in log
    assert [h["image_size"] for h in r.history] == [24, 28, 32]
    assert r.model.dropout.p == pytest.approx(0.2)
    # the saved run config holds the recipe's values
    recipe, resolved = list(yaml.safe_load_all(open(r.config)))
    assert recipe["weight_decay"] == 0.0123 and recipe["optimizer"] == "adamw" and recipe["progressive"]["stages"] == 3
    assert resolved["lr"] == pytest.approx(0.01 * 8 / 64) and resolved["train_size"] == 32
    for p in (r.checkpoint, r.best_checkpoint, r.log_csv, r.plot):
        assert os.path.getsize(p) > 0
    assert "val_ema_top1" in open(r.log_csv).readline()
    assert r.completed and r.global_step == 3 * 6


def test_bf16_autocast_training_on_cpu_runs_the_memory_efficient_blocks(tmp_path):
    """precision: bf16 on CPU (torch.autocast) with the memory-efficient blocks on (the default):
    the run completes with finite losses; its first backward used to raise
    a dtype error in the BN + act block (its recomputed BN output promoted to fp32)."""
    r, _ = _fit(tmp_path, epochs=1, precision="bf16")
    assert r.completed and r.global_step == 6
    assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in r.history)


def _tensors(path):
    t, _ = read_checkpoint(path)
    return {k: v for k, v in t.items() if not k.startswith("rng.")}


def test_resumed_run_equals_uninterrupted(tmp_path):
    over = dict(epochs=2, ema_decay=0.9, dropout=0.2, drop_path=0.1, mixup_alpha=0.2, cutmix_alpha=1.0,
                augment="randaugment", label_smoothing=0.1)
    full, _ = _fit(tmp_path / "full", **over)
    part, log = _fit(tmp_path / "part", max_steps=4, **over)  # stops mid-epoch 1 (6 steps/epoch)
    assert not part.completed and part.global_step == 4 and "stopped at step 4" in log
    resumed = fit("efficientnet_b0", "demo", out_dir=str(tmp_path / "part"), overrides={**TINY, **over},
                  resume=True, echo=lambda *a: None, progress=False, tensorboard=False)
    assert resumed.completed and resumed.global_step == full.global_step
    a, b = _tensors(full.checkpoint), _tensors(resumed.checkpoint)
    assert a.keys() == b.keys() and any(k.startswith("ema.") for k in a) and any(k.startswith("optim.") for k in a)
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs in {diff[:5]}"
    assert resumed.history[-1]["val_top1"] == full.history[-1]["val_top1"]


def test_eval_command(tmp_path, capsys):
    r, _ = _fit(tmp_path, epochs=1, ema_decay=0.9)
    for extra in ([], ["--ema"], ["--size", "40"]):
        assert main(["eval", "efficientnet_b0", "--checkpoint", r.best_checkpoint, "--data", "synthetic"] + extra) == 0
        out = capsys.readouterr().out
        assert "top-1" in out and "top-5" in out and "loss" in out
    assert "at 40px" in out
    assert main(["eval", "efficientnet_b1", "--checkpoint", r.best_checkpoint, "--data", "synthetic"]) == 2


def test_teacher_pseudo_labels(tmp_path):
    t, _ = _fit(tmp_path / "teacher", epochs=1)
    unl = tmp_path / "unlabeled"
    unl.mkdir()
    from effnets.data import SyntheticDataset
    ds = SyntheticDataset(12, 10, 32, seed=5)
    for i in range(len(ds)):
        ds[i][0].save(unl / f"{i}.png")
    for mode in ("hard", "soft"):
        r, log = _fit(tmp_path / f"student_{mode}", epochs=1, teacher="efficientnet_b0",
                      teacher_checkpoint=t.checkpoint, teacher_args=TINY["model_args"], unlabeled=str(unl),
                      pseudo_labels=mode)
        assert f"12 {mode} pseudo-labelled images" in log
        _, resolved = list(yaml.safe_load_all(open(r.config)))
        assert resolved["train_images"] == 48 + 12 and resolved["pseudo_labelled_images"] == 12


def _torchrun():
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "torch.distributed.run"]


def test_ddp_two_processes_agree(tmp_path):
    out = tmp_path / "ddp"
    cmd = _torchrun() + ["--standalone", "--nproc_per_node", "2", "-m", "effnets", "train", "--recipe", "demo",
                         "--data", "synthetic", "--out", str(out), "--no-progress", "--set", "epochs=1",
                         "--set", "synthetic_samples=64", "--set", "batch_size=8", "--set", "ema_decay=0.9"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "2 process(es)" in p.stdout and "DDP: all 2 ranks hold identical weights" in p.stdout
    assert p.stdout.count("effnets train:") == 1  # rank 0 alone prints
    recipe, resolved = list(yaml.safe_load_all(open(out / "config.yaml")))
    assert resolved["world_size"] == 2 and resolved["global_batch"] == 16 and resolved["steps_per_epoch"] == 4
    files = set(os.listdir(out)) - {"tb"}  # tb/: TensorBoard scalars when tensorboard is installed
    assert files == {"best.safetensors", "config.yaml", "last.safetensors", "log.csv", "plot.png"}


def test_image_folder_data(tmp_path):
    from effnets.data import SyntheticDataset
    ds = SyntheticDataset(24, 3, 32)
    for split in ("train", "val"):
        for i in range(len(ds)):
            img, c = ds[i]
            d = tmp_path / "data" / split / f"c{c}"
            d.mkdir(parents=True, exist_ok=True)
            img.save(d / f"{i}.png")
    r, log = _fit(tmp_path / "run", data=str(tmp_path / "data"), epochs=1)
    _, resolved = list(yaml.safe_load_all(open(r.config)))
    assert resolved["classes"] == ["c0", "c1", "c2"] and resolved["val_images"] == 24
