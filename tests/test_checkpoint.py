"""Checkpoint loading: formats, adaptation, and refusing what does not fit."""
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file

import effnets
from effnets.errors import CheckpointError, ConfigError


def small():
    return effnets.create_model("mobilenet_v3_small", num_classes=10).eval()


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("suffix", [".safetensors", ".pt", ".pth"])
def test_round_trip_files(tmp_path, suffix):
    src = small()
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(src.state_dict(), str(path))
    else:
        torch.save(src.state_dict(), path)
    dst = effnets.create_model("mobilenet_v3_small", num_classes=10, checkpoint=str(path)).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(dst(x), src(x))


def test_wrapped_and_ddp_prefixed_state_dict():
    src = small()
    wrapped = {"epoch": 3, "state_dict": {"module." + k: v for k, v in src.state_dict().items()}}
    dst = effnets.create_model("mobilenet_v3_small", num_classes=10, checkpoint=wrapped).eval()
    assert torch.equal(dst.classifier.weight, src.classifier.weight)


def test_other_num_classes_reinitialises_classifier_with_warning():
    src = small()
    with pytest.warns(UserWarning, match="re-initialised"):
        dst = effnets.create_model("mobilenet_v3_small", num_classes=3, checkpoint=src.state_dict())
    assert dst.classifier.weight.shape == (3, 1024)
    assert torch.equal(dst.stem.conv.weight, src.stem.conv.weight)
    assert torch.equal(dst.conv_head.weight, src.conv_head.weight)


def test_in_chans_adapts_stem_from_rgb():
    src = small()
    gray = effnets.create_model("mobilenet_v3_small", num_classes=10, in_chans=1, checkpoint=src.state_dict()).eval()
    assert gray.stem.conv.weight.shape[1] == 1
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():  # a grey image through the adapted stem == the same grey image as RGB
        torch.testing.assert_close(gray(x), src(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)
    five = effnets.create_model("mobilenet_v3_small", num_classes=10, in_chans=5, checkpoint=src.state_dict()).eval()
    with torch.no_grad():
        torch.testing.assert_close(five(x.expand(-1, 5, -1, -1)), src(x.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-5)


def test_mismatched_shapes_list_keys_and_load_nothing():
    other = effnets.create_model("mobilenet_v3_small", num_classes=10, width=1.25)
    dst = small()
    before = weights(dst)
    with pytest.raises(CheckpointError, match="does not fit") as e:
        effnets.weights.load_checkpoint(dst, other.state_dict())
    assert "stages." in str(e.value) and "nothing was loaded" in str(e.value)
    after = weights(dst)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_missing_and_extra_keys_are_listed():
    sd = small().state_dict()
    sd.pop("stem.conv.weight")
    sd["extra.weight"] = torch.zeros(3)
    dst = small()
    before = weights(dst)
    with pytest.raises(CheckpointError) as e:
        effnets.weights.load_checkpoint(dst, sd)
    msg = str(e.value)
    assert "stem.conv.weight" in msg and "extra.weight" in msg
    assert all(torch.equal(before[k], v) for k, v in weights(dst).items())


def test_other_architecture_from_timm_is_refused():
    timm = pytest.importorskip("timm")
    ref = timm.create_model("mobilenetv2_100")
    with pytest.raises(CheckpointError, match="different architecture"):
        effnets.create_model("mobilenet_v3_small", checkpoint=ref.state_dict())


class Payload:
    def __reduce__(self):
        import os
        return (os.system, ("touch /tmp/effnets_pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    import os
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"state_dict": Payload()}, f)
    if os.path.exists("/tmp/effnets_pwned"):
        os.remove("/tmp/effnets_pwned")
    with pytest.raises(CheckpointError, match="weights_only"):
        effnets.create_model("mobilenet_v3_small", checkpoint=str(path))
    assert not os.path.exists("/tmp/effnets_pwned")


def test_bad_paths_and_types(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        effnets.create_model("mobilenet_v3_small", checkpoint=str(tmp_path / "nope.pt"))
    (tmp_path / "w.txt").write_text("x")
    with pytest.raises(CheckpointError, match="unsupported"):
        effnets.create_model("mobilenet_v3_small", checkpoint=str(tmp_path / "w.txt"))
    (tmp_path / "bad.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="safetensors"):
        effnets.create_model("mobilenet_v3_small", checkpoint=str(tmp_path / "bad.safetensors"))


def test_unknown_model_and_override_errors():
    with pytest.raises(ConfigError, match="efficientnet_b0"):
        effnets.create_model("efficientnet-b0")
    with pytest.raises(ConfigError, match="allowed: .*width"):
        effnets.create_model("efficientnet_b0", widht=1.1)
    with pytest.raises(ConfigError, match="padding"):
        effnets.create_model("efficientnet_b0", padding="valid")
    with pytest.raises(ConfigError, match="num_classes"):
        effnets.create_model("efficientnet_b0", num_classes=-1)
