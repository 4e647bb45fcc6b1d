"""Crash and preemption (issue 8.2) with real processes: SIGKILL during an epoch and in the middle
of a checkpoint write, then --resume, ends with the same weights as an uninterrupted run; SIGTERM
writes a checkpoint and exits 0."""
import os
import random
import signal
import subprocess
import sys

import pytest
import torch

from effnets.train.checkpoint import read_checkpoint

SETTINGS = ["epochs=2", "synthetic_samples=48", "batch_size=8", "checkpoint_every=2", "log_every=1",
            "ema_decay=0.9", "workers=0", "train_size=32", "eval_size=32", "model_args.width=0.25",
            "model_args.depth=0.34", "dropout=0.1", "mixup_alpha=0.2"]
STEPS_PER_EPOCH, TOTAL = 6, 12


def _cmd(out, resume=False):
    cmd = [sys.executable, "-m", "effnets", "train", "--recipe", "demo", "--data", "synthetic", "--out", str(out)]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd + (["--resume"] if resume else [])


def _env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("EFFNETS_TEST_CHECKPOINT_PAUSE", None)
    env.update(extra)
    return env


def _run(out, resume=False, **env):
    p = subprocess.run(_cmd(out, resume), capture_output=True, text=True, timeout=300, env=_env(**env))
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    return p


def _start(out, resume=False, **env):
    log = open(str(out) + f".stdout{random.random()}", "w")
    return subprocess.Popen(_cmd(out, resume), stdout=log, stderr=subprocess.PIPE, text=True, env=_env(**env))


def _kill_when(proc, predicate, sig=signal.SIGKILL):
    """Read the child's stderr line by line; send ``sig`` at the first line that satisfies ``predicate``."""
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if predicate(line):
            proc.send_signal(sig)
            break
    else:
        proc.wait(60)
        pytest.fail("the run ended before the kill point:\n" + "".join(seen[-20:]))
    rest = proc.stderr.read()
    proc.wait(120)
    return "".join(seen) + rest


def _at_step(k):
    """A progress line showing global step k (epoch e, n/6 with (e-1)*6 + n == k)."""
    epoch, n = divmod(k - 1, STEPS_PER_EPOCH)
    return lambda line: line.startswith(f"epoch {epoch + 1}/2 [") and f"] {n + 1}/{STEPS_PER_EPOCH} " in line


def _weights(path):
    t, info = read_checkpoint(str(path))
    return {k: v for k, v in t.items() if not k.startswith("rng.")}, info["meta"]


def _assert_same(a_path, b_path):
    a, ma = _weights(a_path)
    b, mb = _weights(b_path)
    assert mb["global_step"] == ma["global_step"] == TOTAL
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resumed run differs from the uninterrupted one in {diff[:5]}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    _run(out)
    return out / "last.safetensors"


def test_sigkill_in_epoch_and_mid_checkpoint_write_then_resume_is_exact(tmp_path, reference):
    out = tmp_path / "run"
    # 1) killed during epoch 1, after the step-2 checkpoint
    p = _start(out)
    _kill_when(p, _at_step(3))
    assert p.returncode == -signal.SIGKILL
    _, meta = _weights(out / "last.safetensors")  # complete and readable
    assert meta["global_step"] in (2, 4)
    step_before = meta["global_step"]
    before = (out / "last.safetensors").read_bytes()
    # 2) resumed, then killed in the middle of its next checkpoint write (the writer pauses half-way)
    p = _start(out, resume=True, EFFNETS_TEST_CHECKPOINT_PAUSE="60")
    err = _kill_when(p, lambda line: "checkpoint write paused" in line)
    assert p.returncode == -signal.SIGKILL, err[-2000:]
    assert (out / "last.safetensors").read_bytes() == before  # the previous checkpoint is untouched
    partial = [f for f in os.listdir(out) if f.endswith(".tmp")]
    assert partial, os.listdir(out)  # the half-written file is there, under a temporary name
    _, meta = _weights(out / "last.safetensors")
    assert meta["global_step"] == step_before
    # 3) resumed to the end: the same weights as the uninterrupted run; the partial file is gone
    r = _run(out, resume=True)
    assert f"resumed from {out / 'last.safetensors'}" in r.stdout
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
    _assert_same(reference, out / "last.safetensors")


def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, reference):
    out = tmp_path / "run"
    p = _start(out)
    err = _kill_when(p, _at_step(7), sig=signal.SIGTERM)  # the first step of epoch 2
    stdout = open(next(str(tmp_path / f) for f in os.listdir(tmp_path) if ".stdout" in f)).read()
    assert p.returncode == 0, err[-2000:]
    assert "received SIGTERM" in stdout and "continue with --resume" in stdout
    _, meta = _weights(out / "last.safetensors")
    assert 7 <= meta["global_step"] < TOTAL  # stopped at the step boundary after the signal
    _run(out, resume=True)
    _assert_same(reference, out / "last.safetensors")


@pytest.mark.slow
def test_resume_before_any_checkpoint_starts_fresh(tmp_path, reference):
    out = tmp_path / "run"
    p = _start(out)
    _kill_when(p, _at_step(1))
    if (out / "last.safetensors").exists():  # the run outran the kill; make the case explicit
        os.unlink(out / "last.safetensors")
    r = _run(out, resume=True)
    assert "starting a new run" in r.stdout
    _assert_same(reference, out / "last.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_kills_then_resume_is_exact(tmp_path, reference, seed):
    """Several SIGKILLs at random steps and random checkpoint writes, resumed each time."""
    rng = random.Random(seed)
    out = tmp_path / "run"
    done, resume = 0, False
    for _ in range(4):
        if rng.random() < 0.5:
            k = rng.randint(done + 1, TOTAL - 1)
            p = _start(out, resume)
            _kill_when(p, _at_step(k))
        else:
            nth = rng.randint(1, 2)
            p = _start(out, resume, EFFNETS_TEST_CHECKPOINT_PAUSE="60")
            count = [0]

            def nth_pause(line, count=count, nth=nth):
                count[0] += "checkpoint write paused" in line
                return count[0] >= nth
            _kill_when(p, nth_pause)
        if (out / "last.safetensors").exists():
            _, meta = _weights(out / "last.safetensors")
            done = meta["global_step"]
            resume = True
        if done >= TOTAL - 2:
            break
    _run(out, resume=True)
    _assert_same(reference, out / "last.safetensors")


# -- long runs and load (issue 8.6) ------------------------------------------------------------
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status")


def _eval_rss(tmp_path, n_images):
    import numpy as np
    from PIL import Image
    from torch.utils.data import DataLoader

    import effnets
    from effnets.data.datasets import FolderDataset, Transformed, collate_skip_none
    from effnets.data.transforms import eval_transform
    from effnets.train.loop import evaluate
    g = np.random.default_rng(0)
    for i in range(n_images):
        d = tmp_path / "imgs" / f"c{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    torch.set_num_threads(1)
    ds = Transformed(FolderDataset(str(tmp_path / "imgs")), eval_transform(32, 1.0, "bilinear"))
    model = effnets.create_model("mobilenet_v3_small", num_classes=4, width=0.35)
    samples = []

    class Probe:  # the loader, sampling RSS every 10 batches
        def __iter__(self):
            for i, b in enumerate(DataLoader(ds, batch_size=16, collate_fn=collate_skip_none)):
                if i % 10 == 0:
                    samples.append(_rss_mb())
                yield b
    r = evaluate(model, Probe(), torch.device("cpu"), 4)
    assert r["n"] == n_images
    return samples


def test_memory_stays_flat_evaluating_many_images(tmp_path):
    s = _eval_rss(tmp_path, 2000)
    warm = s[len(s) // 4]
    assert max(s[len(s) // 4:]) - warm < 40, f"RSS grew from {warm:.0f} MB to {max(s):.0f} MB: {s}"


@pytest.mark.slow
def test_memory_stays_flat_evaluating_10000_images(tmp_path):
    s = _eval_rss(tmp_path, 10_000)
    warm = s[len(s) // 4]
    assert max(s[len(s) // 4:]) - warm < 40, f"RSS grew from {warm:.0f} MB to {max(s):.0f} MB"


def _train_rss(tmp_path, epochs):
    from effnets.train import fit
    torch.set_num_threads(1)
    rss = []
    fit("efficientnet_b0", "demo", data="synthetic", out_dir=str(tmp_path / "long"), progress=False,
        tensorboard=False, echo=lambda *a: rss.append(_rss_mb()) if str(a[0]).startswith("epoch ") else None,
        overrides={"synthetic_samples": 16, "batch_size": 8, "epochs": epochs, "workers": 0,
                   "model_args": {"width": 0.25, "depth": 0.34}, "train_size": 32, "eval_size": 32})
    return rss


def test_memory_stays_flat_over_many_epochs(tmp_path):
    rss = _train_rss(tmp_path, 30)
    assert len(rss) == 30
    warm = rss[5]
    assert max(rss[5:]) - warm < 40, f"RSS per epoch (MB): {[round(x) for x in rss]}"


def test_disk_full_during_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    import errno

    from effnets.errors import TrainingError
    from effnets.train import checkpoint as ckpt
    from effnets.train import fit
    torch.set_num_threads(1)
    over = {"synthetic_samples": 16, "batch_size": 8, "epochs": 2, "workers": 0, "checkpoint_every": 1,
            "model_args": {"width": 0.25, "depth": 0.34}, "train_size": 32, "eval_size": 32}
    out = tmp_path / "run"
    real_fdopen = os.fdopen
    writes = {"n": 0}

    class Full:
        """A file that takes half the bytes and then reports a full disk, from the 3rd write on."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __getattr__(self, k):
            return getattr(self.f, k)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            return self.f.__exit__(*a)

    def fdopen(fd, *a, **k):
        f = real_fdopen(fd, *a, **k)
        writes["n"] += 1
        return Full(f) if writes["n"] >= 3 else f
    monkeypatch.setattr(ckpt.os, "fdopen", fdopen)
    with pytest.raises(TrainingError) as e:
        fit("efficientnet_b0", "demo", data="synthetic", out_dir=str(out), overrides=over, echo=lambda *a: None,
            progress=False, tensorboard=False)
    msg = str(e.value)
    assert "No space left on device [ENOSPC]" in msg and "the previous last.safetensors is intact" in msg
    monkeypatch.undo()
    t, info = read_checkpoint(str(out / "last.safetensors"))  # complete, from before the failed write
    assert info["meta"]["global_step"] >= 1
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]
