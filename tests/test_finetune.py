"""Fine-tuning helpers: new classifier, frozen BN statistics and stages, layer-wise LR decay."""
import pytest
import torch

import effnets
from effnets.errors import ConfigError
from effnets.finetune import finetune_param_groups, freeze_bn_stats, prepare_finetune, reset_classifier, stage_ids


def small():
    return effnets.create_model("efficientnet_b0", width=0.25, depth=0.25, num_classes=1000)


def test_reset_classifier_all_families():
    for name, ov in [("efficientnet_b0", dict(width=0.25, depth=0.25)), ("coatnet_0", dict(img_size=32)),
                     ("vit_tiny_16", dict(img_size=32)), ("resnet_rs_50", dict(width=0.25, depth=0.25))]:
        m = effnets.create_model(name, **ov)
        reset_classifier(m, 7)
        s = 32
        assert m(torch.randn(2, 3, s, s)).shape == (2, 7)
    with pytest.raises(ConfigError):
        reset_classifier(m, -1)


def test_freeze_bn_stats_survives_train():
    m = small()
    prepare_finetune(m, 10, freeze_bn=True)
    m.train()
    bn = m.stem.bn
    before = bn.running_mean.clone()
    m(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not bn.training and torch.equal(bn.running_mean, before)
    # without freezing the statistics move
    m2 = small().train()
    b2 = m2.stem.bn.running_mean.clone()
    m2(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert not torch.equal(m2.stem.bn.running_mean, b2)


def test_freeze_stages_and_param_groups():
    m = small()
    prepare_finetune(m, 10, freeze_stages=3)  # stem + stages 0, 1
    ids = stage_ids(m)
    for n, p in m.named_parameters():
        assert p.requires_grad == (ids[n] >= 3), n
    groups = finetune_param_groups(m, lr=1e-3, layer_decay=0.5, weight_decay=0.05)
    L = max(ids.values()) + 1
    names = [n for g in groups for n in g["names"]]
    assert len(names) == len(set(names)) == sum(p.requires_grad for p in m.parameters())
    for g in groups:
        assert g["lr"] == pytest.approx(1e-3 * 0.5 ** (L - 1 - g["layer"]))
        for n, p in zip(g["names"], g["params"]):
            assert (g["weight_decay"] == 0.0) == (p.ndim <= 1), n
    head = [g for g in groups if any(n.startswith("classifier") for n in g["names"])]
    assert head and all(g["lr"] == pytest.approx(1e-3) for g in head)
    opt = torch.optim.AdamW(groups)
    loss = m(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    opt.step()


def test_vit_layer_ids():
    m = effnets.create_model("vit_tiny_16", img_size=32)
    ids = stage_ids(m)
    assert ids["pos_embed"] == 0 and ids["blocks.0.attn.qkv.weight"] == 1
    assert ids["head.weight"] == len(m.blocks) + 1
    with pytest.raises(ConfigError):
        finetune_param_groups(m, 1e-3, layer_decay=1.5)


def test_finetune_from_folder(tmp_path):
    from effnets.weights.folder import save_folder
    src = small()
    save_folder(src, tmp_path / "w")
    m = effnets.create_model(checkpoint=str(tmp_path / "w"))
    prepare_finetune(m, num_classes=5, freeze_bn=True, freeze_stages=1)
    assert m.num_classes == 5 and m.labels is None
    assert torch.equal(m.stem.conv.weight, src.stem.conv.weight)
    assert freeze_bn_stats(m) > 0
