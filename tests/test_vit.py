"""ViT: exact parameter counts and logit parity against timm, pos-embed resampling, attention paths."""
import pytest
import torch

import effnets
from effnets.layers.attention import Attention, fused_attention

timm = pytest.importorskip("timm")

# timm names and exact counts: reference-numbers §6
PAIRS = [
    ("vit_tiny_16", "vit_tiny_patch16_224", 5_717_416),
    ("vit_small_16", "vit_small_patch16_224", 22_050_664),
    ("vit_base_16", "vit_base_patch16_224", 86_567_656),
    ("vit_base_32", "vit_base_patch32_224", 88_224_232),
    ("vit_large_16", "vit_large_patch16_224", 304_326_632),  # cheap on the meta device
]


def nparams(m):
    return sum(p.numel() for p in m.parameters())


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("ours,theirs,count", PAIRS)
def test_param_count_exact(ours, theirs, count):
    with torch.device("meta"):  # shapes only: no memory, no init time
        assert nparams(effnets.create_model(ours)) == count
        assert nparams(timm.create_model(theirs)) == count  # catches a stale table


def _randomized_timm(name, **kw):
    torch.manual_seed(0)
    t = timm.create_model(name, **kw).eval()
    with torch.no_grad():  # biases and LayerNorm affine are zero/one at init; make them matter
        for n, p in t.named_parameters():
            if n.endswith("bias") or "norm" in n:
                p.add_(torch.randn_like(p) * 0.05)
    return t


def test_timm_logit_parity_224():
    t = _randomized_timm("vit_tiny_patch16_224")
    m = effnets.create_model("vit_tiny_16", checkpoint=t.state_dict()).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert rel_err(m(x), t(x)) < 1e-5
        # plain (unfused) path too
        with fused_attention(False):
            assert rel_err(m(x), t(x)) < 1e-5


def test_timm_logit_parity_other_size():
    """A 224 checkpoint loaded at img_size=160 resamples pos_embed exactly as timm does when
    it builds with img_size=160 and filters the same checkpoint."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    t224 = _randomized_timm("vit_tiny_patch16_224")
    sd = t224.state_dict()
    t160 = timm.create_model("vit_tiny_patch16_224", img_size=160).eval()
    t160.load_state_dict(checkpoint_filter_fn(sd, t160))
    m = effnets.create_model("vit_tiny_16", img_size=160, checkpoint=sd).eval()
    assert m.pos_embed.shape == (1, 1 + 10 * 10, 192)
    x = torch.randn(1, 3, 160, 160)
    with torch.no_grad():
        assert rel_err(m(x), t160(x)) < 1e-5
        # a 224 model run on 160 inputs resamples on the fly to the same embeddings
        m224 = effnets.create_model("vit_tiny_16", checkpoint=sd).eval()
        assert rel_err(m224(x), t160(x)) < 1e-5


def test_plain_load_state_dict_resamples():
    from effnets.nets.vit import VisionTransformer

    src = VisionTransformer(patch=16, dim=64, depth=1, heads=2, mlp_dim=128, img_size=224)
    dst = VisionTransformer(patch=16, dim=64, depth=1, heads=2, mlp_dim=128, img_size=192)
    dst.load_state_dict(src.state_dict())
    assert dst.pos_embed.shape[1] == 1 + 12 * 12
    assert torch.equal(dst.pos_embed[:, 0], src.pos_embed[:, 0])  # class token position kept


def test_torchvision_layout_loads():
    tv = pytest.importorskip("torchvision")
    from effnets.nets.vit import VisionTransformer
    from effnets.weights import load_checkpoint

    torch.manual_seed(0)
    ref = tv.models.vision_transformer.VisionTransformer(
        image_size=64, patch_size=16, num_layers=2, num_heads=3, hidden_dim=192, mlp_dim=768, num_classes=10)
    with torch.no_grad():  # torchvision zero-initialises the head; give it weights
        ref.heads.head.weight.normal_(0, 0.02)
    ref.eval()
    m = VisionTransformer(patch=16, dim=192, depth=2, heads=3, mlp_dim=768, img_size=64, num_classes=10)
    load_checkpoint(m, ref.state_dict())
    m.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(m(x), ref(x)) < 1e-5


@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_equals_plain(with_bias):
    torch.manual_seed(0)
    a = Attention(64, 4, dim_out=96).eval()
    x = torch.randn(2, 17, 64)
    bias = torch.randn(4, 17, 17) if with_bias else None
    a.fused = True
    y1 = a(x, bias)
    a.fused = False
    y2 = a(x, bias)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)
    assert y1.shape == (2, 17, 96)


def test_model_api_and_backward():
    m = effnets.create_model("vit_tiny_16", img_size=64, num_classes=5, dropout=0.1, drop_path=0.1)
    assert m.num_features == 192 and len(m.feature_info) == 12
    assert m.blocks[-1].drop_path1.p == pytest.approx(0.1) and m.blocks[0].drop_path1.p == 0
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 5)
    out.sum().backward()
    no_grad = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad, no_grad
    feats = m.forward_features(x)
    assert feats.shape == (2, 1 + 16, 192)
    assert m.forward_head(feats, pre_logits=True).shape == (2, 192)
    m.set_regularization(dropout=0.0, drop_path=0.3)
    assert m.blocks[-1].drop_path2.p == pytest.approx(0.3) and m.pos_drop.p == 0.0
    m.reset_classifier(7)
    assert m(x).shape == (2, 7)
    m.reset_classifier(0)
    assert m(x).shape == (2, 192)


def test_card_and_overrides():
    card = effnets.model_card("vit_base_16")
    assert card.mean == (0.5, 0.5, 0.5) and card.std == (0.5, 0.5, 0.5) and card.arxiv == "2010.11929"
    assert "img_size" in effnets.list_overrides("vit_base_16")
    with pytest.raises(effnets.ConfigError):
        effnets.create_model("vit_tiny_16", img_size=100)  # not a multiple of 16
    with pytest.raises(effnets.ConfigError):
        effnets.create_model("vit_tiny_16", width=2.0)
