"""CoAtNet: parameter counts against the paper, relative-position bias and its resizing,
fused vs plain attention, the model API."""
import pytest
import torch

import effnets
from effnets.layers.attention import fused_attention
from effnets.layers.rel_pos import RelPosBias, resize_rel_pos_table
from effnets.nets.coatnet import CoAtNet, CoAtTransformer
from effnets.weights import load_checkpoint

# paper Table 4 params (M), reference-numbers §5
PAPER_PARAMS = {"coatnet_0": 25, "coatnet_1": 42, "coatnet_2": 75, "coatnet_3": 168, "coatnet_4": 275}


def small(img_size=224, **kw):
    """Same code paths as coatnet_N (two blocks per stage: a downsampling one and a plain
    one), at a size that keeps the default test run fast."""
    return CoAtNet((2, 2, 2, 2), (16, 24, 32, 64, 128), img_size=img_size, **kw)


def nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_params_within_2pct_of_paper(name):
    with torch.device("meta"):  # shapes only
        n = nparams(effnets.create_model(name))
    assert abs(n / 1e6 / PAPER_PARAMS[name] - 1) < 0.02, n


def test_coatnet_0_count_matches_timm_paper_config():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours = nparams(effnets.create_model("coatnet_0"))
        theirs = nparams(timm.create_model("coatnet_0_224"))
    assert ours == theirs == 25_036_820  # reference-numbers §5


def test_rel_pos_bias_is_offset_lookup():
    torch.manual_seed(0)
    rp = RelPosBias((3, 4), num_heads=2)
    torch.nn.init.normal_(rp.table)
    bias = rp(3, 4)
    assert bias.shape == (2, 12, 12)
    for i in range(12):
        for j in range(12):
            (yi, xi), (yj, xj) = divmod(i, 4), divmod(j, 4)
            assert torch.equal(bias[:, i, j], rp.table[:, yi - yj + 2, xi - xj + 3])


def test_rel_pos_table_resizes_on_load_and_on_input_size():
    torch.manual_seed(0)
    src = small(img_size=160)  # a checkpoint made at 160
    big = small()  # built at 224
    load_checkpoint(big, src.state_dict())
    big.eval()
    # S3 runs at 224/16 = 14: a 27x27 table per head, resized from 160's 10 -> 19x19
    t_big, t_src = big.stages[2][0].rel_pos.table, src.stages[2][0].rel_pos.table
    assert t_src.shape == (2, 19, 19) and t_big.shape == (2, 27, 27)
    torch.testing.assert_close(t_big, resize_rel_pos_table(t_src, (14, 14)))
    with torch.no_grad():
        assert big(torch.randn(1, 3, 224, 224)).isfinite().all()

        # plain load_state_dict does the same resizing
        again = small()
        again.load_state_dict(src.state_dict())
        assert torch.equal(again.stages[3][1].rel_pos.table, big.stages[3][1].rel_pos.table)

        # a 224 model run on 160 inputs resizes on the fly exactly as a 160 model loading it
        x = torch.randn(1, 3, 160, 160)
        at160 = small(img_size=160)
        at160.load_state_dict(big.state_dict())
        at160.eval()
        torch.testing.assert_close(big(x), at160(x), atol=1e-5, rtol=1e-5)


def test_create_model_loads_checkpoint_from_other_size():
    ckpt = effnets.create_model("coatnet_0", img_size=128).state_dict()
    m = effnets.create_model("coatnet_0", checkpoint=ckpt)
    assert m.stages[3][0].rel_pos.table.shape == (24, 13, 13)  # 224/32 = 7 -> 13x13


def test_fused_equals_plain_with_rel_pos():
    torch.manual_seed(0)
    blk = CoAtTransformer(32, 64, (4, 4), stride=2).eval()
    torch.nn.init.normal_(blk.rel_pos.table)
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        with fused_attention(True):
            y1 = blk(x)
        with fused_attention(False):
            y2 = blk(x)
    assert y1.shape == (2, 64, 4, 4)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)


def test_whole_model_fused_equals_plain():
    m = small(img_size=64).eval()
    for rp in m.modules():
        if isinstance(rp, RelPosBias):
            torch.nn.init.normal_(rp.table)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        y1 = m(x)
        with fused_attention(False):
            y2 = m(x)
    torch.testing.assert_close(y1, y2, atol=1e-5, rtol=1e-5)


def test_forward_backward_every_param_gets_grad():
    torch.manual_seed(0)
    m = small(img_size=64, num_classes=10, drop_path=0.1, dropout=0.1)
    x = torch.randn(2, 3, 64, 64)
    out = m(x)
    assert out.shape == (2, 10)
    out.square().sum().backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_model_api():
    m = effnets.create_model("coatnet_0", img_size=64, stride_mode="dw")
    assert [f["reduction"] for f in m.feature_info] == [2, 4, 8, 16, 32]
    assert [f["num_chs"] for f in m.feature_info] == [64, 96, 192, 384, 768]
    assert m.num_features == 768
    x = torch.randn(1, 3, 64, 64)
    m.eval()
    feats = m.forward_features(x)
    assert feats.shape == (1, 768, 2, 2)
    assert m.forward_head(feats, pre_logits=True).shape == (1, 768)
    m.set_regularization(dropout=0.2, drop_path=0.4)
    assert m.dropout.p == 0.2 and m.stages[3][1].drop_path2.p == pytest.approx(0.4 * 11 / 12)
    assert m.stages[0][0].drop_path.p == 0.0
    m.reset_classifier(3)
    assert m(x).shape == (1, 3)
    # odd map sizes halve like the strided convs (ceil)
    assert m(torch.randn(1, 3, 72, 72)).shape == (1, 3)


def test_card_and_overrides():
    card = effnets.model_card("coatnet_2")
    assert card.arxiv == "2106.04803" and card.figures.params_m == 75 and card.figures.top1 == 84.1
    assert set(effnets.list_overrides("coatnet_0")) >= {"img_size", "dropout", "drop_path"}
    with pytest.raises(effnets.ConfigError):
        effnets.create_model("coatnet_0", stride_mode="pool")
