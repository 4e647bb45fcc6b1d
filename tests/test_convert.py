"""Weight folders and converters: Keras Applications (via h5py, no TensorFlow), timm, torchvision."""
import json
import os

import numpy as np
import pytest
import torch

import effnets
from effnets.cli import main
from effnets.errors import CheckpointError, ConfigError
from effnets.weights.convert import convert, guess_name
from effnets.weights.folder import read_folder_config, save_folder
from effnets.weights.keras import IMAGENET_MEAN, IMAGENET_STD, keras_preprocessing

from conftest import randomize_bn, rel_err

pytestmark = pytest.mark.filterwarnings("ignore")


# -- native folder --------------------------------------------------------------------------
def test_folder_roundtrip(tmp_path):
    m = randomize_bn(effnets.create_model("efficientnet_b0", width=0.25, depth=0.25, padding="same",
                                          bn_eps=1e-3, num_classes=3)).eval()
    save_folder(m, tmp_path / "f", labels=["a", "b", "c"], provenance={"source": "test"})
    files = sorted(p.name for p in (tmp_path / "f").iterdir())
    assert files == ["README.md", "config.json", "model.safetensors"]
    cfg = read_folder_config(tmp_path / "f")
    assert cfg["architecture"] == "efficientnet_b0" and cfg["num_classes"] == 3
    assert cfg["overrides"] == {"width": 0.25, "depth": 0.25, "padding": "same", "bn_eps": 1e-3}
    assert cfg["labels"] == ["a", "b", "c"] and cfg["provenance"]["source"] == "test"
    assert set(cfg["preprocessing"]) >= {"input_size", "crop_pct", "interpolation", "mean", "std"}
    r = effnets.create_model(checkpoint=str(tmp_path / "f")).eval()
    assert r.labels == ["a", "b", "c"] and r.spec.conv.padding == "same" and r.spec.conv.bn_eps == 1e-3
    x = torch.randn(2, 3, 45, 45)
    assert torch.equal(r(x), m(x))
    with pytest.raises(ConfigError, match="holds"):
        effnets.create_model("mobilenet_v2", checkpoint=str(tmp_path / "f"))
    # explicit arguments win over the folder: another class count re-initialises the head
    r5 = effnets.create_model(checkpoint=str(tmp_path / "f"), num_classes=5)
    assert r5.num_classes == 5 and r5.labels is None
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({"library": "transformers", "architecture": "x"}))
    with pytest.raises(CheckpointError, match="library"):
        effnets.create_model(checkpoint=str(tmp_path / "bad"))


# -- timm / torchvision ---------------------------------------------------------------------
def test_convert_timm_tf_weights_with_parity(tmp_path, capsys):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file
    src = randomize_bn(timm.create_model("tf_efficientnet_b0", num_classes=7)).eval()
    save_file(src.state_dict(), str(tmp_path / "tf_b0.safetensors"))
    rc = main(["convert", "--from", "timm", str(tmp_path / "tf_b0.safetensors"), "--out", str(tmp_path / "out"),
               "--source-model", "tf_efficientnet_b0"])
    text = capsys.readouterr().out
    assert rc == 0 and "layers compared" in text
    cfg = read_folder_config(tmp_path / "out")
    assert cfg["architecture"] == "efficientnet_b0"
    assert cfg["overrides"] == {"bn_eps": 1e-3, "padding": "same"}  # read from the timm model itself
    assert cfg["provenance"]["parity_max_rel_err"] < 1e-5
    ours = effnets.create_model(checkpoint=str(tmp_path / "out")).eval()
    x = torch.randn(1, 3, 67, 67)
    assert rel_err(ours(x), src(x)) < 1e-5


def test_convert_torchvision_and_parity_catches_errors(tmp_path):
    tv = pytest.importorskip("torchvision")
    src = randomize_bn(tv.models.mobilenet_v3_small(num_classes=5)).eval()
    torch.save(src.state_dict(), tmp_path / "mv3.pth")
    res = convert("torchvision", tmp_path / "mv3.pth", tmp_path / "out", source_model="mobilenet_v3_small")
    assert res["name"] == "mobilenet_v3_small" and res["overrides"] == {"bn_eps": 1e-3}
    assert max(r["rel_err"] for r in res["parity"]) < 1e-5 and len(res["parity"]) > 50
    # a wrong convention shows up in the per-layer report, at the first BN
    res = convert("torchvision", tmp_path / "mv3.pth", tmp_path / "out2", source_model="mobilenet_v3_small",
                  overrides={"bn_eps": 1e-1})
    first_bad = next(r for r in res["parity"] if r["rel_err"] > 1e-3)
    assert first_bad["effnets"] == "stem.bn"


def test_guess_names():
    assert guess_name("tf_efficientnet_b3.ns_jft_in1k") == "efficientnet_b3"
    assert guess_name("efficientnet_v2_s") == "efficientnetv2_s"
    assert guess_name("resnetrs101") == "resnet_rs_101"
    assert guess_name("vit_base_patch16_224") == "vit_base_16"
    assert guess_name("convnext_tiny") is None


# -- Keras ----------------------------------------------------------------------------------
def test_keras_preprocessing_rules():
    layers = [("norm", "normalization", [np.array(IMAGENET_MEAN), np.array(IMAGENET_STD), np.array(0)])]
    p = keras_preprocessing("efficientnet_b0", layers, None, 224, 0.875)
    # a weights="imagenet" build: Normalization(var=std) then Rescaling(1/sqrt(std)) == (x - mean) / std
    assert np.allclose(p["mean"], IMAGENET_MEAN) and np.allclose(p["std"], IMAGENET_STD)
    p = keras_preprocessing("efficientnetv2_s", [], None, 384, 1.0)
    assert np.allclose(p["mean"], 128 / 255) and np.allclose(p["std"], 128 / 255)
    p = keras_preprocessing("efficientnetv2_b0", [], None, 224, 0.875)
    assert np.allclose(p["std"], IMAGENET_STD)


def _keras():
    os.environ["KERAS_BACKEND"] = "torch"
    keras = pytest.importorskip("keras")
    pytest.importorskip("h5py")
    if keras.backend.backend() != "torch":
        pytest.skip("keras is configured with another backend")
    return keras


def _randomize_keras(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        cls = type(layer).__name__
        if cls == "BatchNormalization":
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 1.5, n)])
        elif cls == "Normalization" and layer.get_weights():
            w = layer.get_weights()
            layer.set_weights([np.array([0.4, 0.5, 0.6]), np.array([0.04, 0.05, 0.06])] + w[2:])
    return model


def _keras_roundtrip(tmp_path, app, name, suffix, size=224, parity=True):
    keras = _keras()
    km = _randomize_keras(getattr(keras.applications, app)(weights=None, classifier_activation=None, classes=10))
    path = tmp_path / f"m{suffix}"
    if suffix == ".weights.h5":
        km.save_weights(str(path))
    else:
        km.save(str(path))  # legacy HDF5 (model config + weights)
    res = convert("keras", path, tmp_path / "out", name if suffix == ".weights.h5" else None, parity=parity)
    assert res["name"] == name
    cfg = read_folder_config(tmp_path / "out")
    assert cfg["overrides"] == {"padding": "same", "bn_eps": 1e-3}
    if parity:
        assert res["parity"] and max(r["rel_err"] for r in res["parity"]) < 1e-4, res["parity"]
    ours = effnets.create_model(checkpoint=str(tmp_path / "out")).eval()
    img = np.random.default_rng(1).uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    ref = keras.ops.convert_to_numpy(km(img))
    pre = cfg["preprocessing"]
    x = torch.from_numpy(img).permute(0, 3, 1, 2) / 255.0
    x = (x - torch.tensor(pre["mean"]).view(1, 3, 1, 1)) / torch.tensor(pre["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        out = ours(x).numpy()
    err = np.abs(out - ref).max() / np.abs(ref).max()
    assert err < 1e-4, err
    return res


def test_keras_efficientnet_b0_weights_h5(tmp_path):
    res = _keras_roundtrip(tmp_path, "EfficientNetB0", "efficientnet_b0", ".weights.h5")
    assert res["parity"][0]["source"] == "stem_activation" and res["parity"][-1]["source"] == "predictions"
    assert len(res["parity"]) == 1 + 16 + 2  # stem, 16 blocks, top conv, logits


@pytest.mark.slow
def test_keras_efficientnet_b0_legacy_h5(tmp_path):
    _keras_roundtrip(tmp_path, "EfficientNetB0", "efficientnet_b0", ".h5", parity=False)


@pytest.mark.slow
@pytest.mark.parametrize("app,name", [("EfficientNetV2B0", "efficientnetv2_b0"), ("EfficientNetB1", "efficientnet_b1")])
def test_keras_more(tmp_path, app, name):
    size = 240 if name.endswith("b1") else 224
    _keras_roundtrip(tmp_path, app, name, ".weights.h5", size=size, parity=False)


def test_keras_wrong_name_is_refused(tmp_path):
    keras = _keras()
    km = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(64, 64, 3))
    km.save_weights(str(tmp_path / "x.weights.h5"))
    with pytest.raises(CheckpointError, match="nothing was loaded"):
        convert("keras", tmp_path / "x.weights.h5", tmp_path / "o", "efficientnet_b1", parity=False)
    with pytest.raises(ConfigError, match="pass the effnets name"):
        convert("keras", tmp_path / "x.weights.h5", tmp_path / "o", None, parity=False)
