"""Optimiser, schedules, EMA, progressive stages, augmentation, mixing, data, checkpoints."""
import math
import os
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from effnets.data import DigitsDataset, MixUpCutMix, RandAugment, eval_transform, soft_target_cross_entropy, soft_targets
from effnets.data.augment import AutoAugment
from effnets.train import checkpoint as ckpt
from effnets.train.ema import ModelEma
from effnets.train.optim import RMSpropTF, param_groups
from effnets.train.progressive import ProgressiveSchedule
from effnets.train.schedule import LRSchedule


def test_rmsprop_tf_semantics():
    p = nn.Parameter(torch.tensor([1.0]))
    opt = RMSpropTF([p], lr=0.1, decay=0.9, momentum=0.9, eps=1e-3)
    ms, mom, w = 1.0, 0.0, 1.0
    for g in (0.5, -0.2):
        p.grad = torch.tensor([g])
        opt.step()
        ms = 0.9 * ms + 0.1 * g * g           # ms starts at 1
        mom = 0.9 * mom + 0.1 * g / math.sqrt(ms + 1e-3)  # eps inside the sqrt
        w -= mom
        assert p.item() == pytest.approx(w, rel=1e-6)
    # torch's RMSprop (ms from 0, eps outside) would give a different first step
    q = nn.Parameter(torch.tensor([1.0]))
    t = torch.optim.RMSprop([q], lr=0.1, alpha=0.9, eps=1e-3, momentum=0.9)
    q.grad = torch.tensor([0.5])
    t.step()
    assert abs(q.item() - (1 - 0.1 * 0.5 / math.sqrt(1.025 + 1e-3))) > 1e-2


def test_no_decay_on_norm_and_bias():
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    g = param_groups(m, 1e-5)
    assert [x.ndim for x in g[0]["params"]] == [4, 2] and g[1]["weight_decay"] == 0
    assert all(x.ndim == 1 for x in g[1]["params"])
    assert len(param_groups(m, 1e-5, decay_norm_and_bias=True)) == 1


def test_schedules():
    s = LRSchedule("cosine", 1.0, total_steps=110, warmup_steps=10, min_lr=0.0)
    assert s.lr_at(0) == 0 and s.lr_at(5) == pytest.approx(0.5) and s.lr_at(10) == pytest.approx(1.0)
    assert s.lr_at(60) == pytest.approx(0.5) and s.lr_at(110) == pytest.approx(0.0, abs=1e-12)
    e = LRSchedule("exponential", 0.256, total_steps=1000, warmup_steps=5, decay_rate=0.97, decay_steps=24)
    assert e.lr_at(2) == pytest.approx(0.256 * 2 / 5)
    assert e.lr_at(23) == pytest.approx(0.256) and e.lr_at(24) == pytest.approx(0.256 * 0.97)
    assert e.lr_at(50) == pytest.approx(0.256 * 0.97 ** 2)  # staircase


def test_ema_warmup_and_bn_buffers():
    m = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEma(m, decay=0.9999)
    assert ema.current_decay() == pytest.approx(0.1)  # (1+0)/(10+0)
    with torch.no_grad():
        m[0].weight.add_(1.0)
        m[1].running_mean.fill_(2.0)
    before = ema.module[0].weight.clone()
    ema.update(m)
    assert torch.allclose(ema.module[0].weight, 0.1 * before + 0.9 * m[0].weight)
    assert torch.allclose(ema.module[1].running_mean, torch.full((2,), 1.8))
    assert ema.current_decay() == pytest.approx(2 / 11)
    assert ModelEma(m, 0.99, warmup=False).current_decay() == 0.99


def test_progressive_paper_table6_s():
    p = ProgressiveSchedule(4, 348, image_size=(128, 300), randaug_magnitude=(5, 15), mixup_alpha=(0, 0),
                            dropout=(0.1, 0.3))
    st = p.stages()
    assert [s.image_size for s in st] == [128, 185, 242, 300]
    assert [s.randaug_magnitude for s in st] == pytest.approx([5, 8.333333, 11.666667, 15])
    assert [s.dropout for s in st] == pytest.approx([0.1, 0.166667, 0.233333, 0.3])
    assert [s.start_epoch for s in st] == [0, 87, 174, 261] and st[-1].end_epoch == 348
    assert p.for_epoch(86).stage == 0 and p.for_epoch(87).stage == 1 and p.for_epoch(347).stage == 3
    assert "image size 185" in st[1].describe() and "dropout 0.166667" in st[1].describe()


def test_randaugment_seeded_and_magnitude_matters():
    img = DigitsDataset("train").images[0].convert("RGB")
    ra = RandAugment(2, 9)
    a = ra(img, random.Random(3)).tobytes()
    assert a == ra(img, random.Random(3)).tobytes()
    outs = {ra(img, random.Random(s)).tobytes() for s in range(20)}
    assert len(outs) > 5
    from effnets.data.augment import OPS
    r0 = OPS["Rotate"](img, 0, random.Random(0)).tobytes()
    assert r0 == img.rotate(0).tobytes() and OPS["Rotate"](img, 10, random.Random(0)).tobytes() != r0
    assert AutoAugment()(img, random.Random(1)).size == img.size


def test_soft_target_loss_matches_label_smoothing():
    logits, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ours = soft_target_cross_entropy(logits, soft_targets(y, 10, 0.1))
    assert ours.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-5)


def test_mixup_and_cutmix():
    x = torch.randn(4, 3, 16, 16)
    y = soft_targets(torch.tensor([0, 1, 2, 3]), 5)
    g = torch.Generator().manual_seed(0)
    xm, ym = MixUpCutMix(mixup_alpha=0.4)(x, y, g)
    assert torch.allclose(ym.sum(-1), torch.ones(4))
    lam = ym[0, 0].item()
    assert torch.allclose(xm[0], lam * x[0] + (1 - lam) * x[3], atol=1e-6)
    xc, yc = MixUpCutMix(cutmix_alpha=1.0)(x, y, torch.Generator().manual_seed(1))
    pasted = (xc[0] != x[0]).any(0).float().mean().item()  # fraction of pixels from x[3]
    assert yc[0, 3].item() == pytest.approx(pasted, abs=1e-6)
    assert MixUpCutMix()(x, y, g)[0] is x


def test_digits_split_deterministic_and_disjoint():
    tr, va = DigitsDataset("train"), DigitsDataset("val")
    assert (len(tr), len(va)) == (1442, 355)
    assert sorted(set(va.targets)) == list(range(10))
    assert tr.images[0].size == (32, 32)
    assert [im.tobytes() for im in DigitsDataset("val").images[:5]] == [im.tobytes() for im in va.images[:5]]


def test_eval_transform_resize_and_crop():
    from PIL import Image
    t = eval_transform(224, 0.875, "bicubic")
    assert t.transforms[0].size == 256  # floor(224 / 0.875)
    assert t(Image.new("RGB", (300, 400))).shape == (3, 224, 224)


def test_checkpoint_roundtrip_and_atomic(tmp_path, monkeypatch):
    m = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt = torch.optim.AdamW(m.parameters(), 1e-3)
    m(torch.randn(4, 3)).sum().backward()
    opt.step()
    path = str(tmp_path / "last.safetensors")
    ckpt.save_checkpoint(path, m, optimizer=opt, meta={"epoch": 1})
    good = open(path, "rb").read()
    m2 = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    opt2 = torch.optim.AdamW(m2.parameters(), 1e-3)
    torch.manual_seed(123)
    meta = ckpt.restore(path, m2, optimizer=opt2)
    assert meta == {"epoch": 1}
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values()))
    s1, s2 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s1[k]["exp_avg"], s2[k]["exp_avg"]) for k in s1)

    def boom(*a):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, m, meta={"epoch": 2})
    assert open(path, "rb").read() == good  # the old checkpoint survives intact
    assert os.listdir(tmp_path) == ["last.safetensors"]  # no temp file left behind
