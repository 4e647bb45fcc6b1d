"""`effnets predict` on a folder of odd image kinds, JSON output, Grad-CAM overlays."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import effnets
from effnets.cli import main
from effnets.export.cam import grad_cam
from effnets.export.predict import class_names, imagenet_classes, load_image, predict_files
from effnets.weights.folder import save_folder

LABELS = ["cat", "dog", "bird", "fish", "frog", "horse"]


def make_images(d):
    d.mkdir()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    Image.fromarray(rgb[..., 0], "L").save(d / "gray.png")
    Image.fromarray(np.dstack([rgb, np.full((40, 60), 128, np.uint8)]), "RGBA").save(d / "rgba.png")
    pal = Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16)
    pal.info["transparency"] = 0
    pal.save(d / "palette.png", transparency=0)
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65535, (40, 60))).astype(np.uint16)).save(d / "sixteen.png")
    Image.fromarray(rgb[..., :1].repeat(2, -1), "LA").save(d / "la.png")
    Image.fromarray(rgb).convert("1").save(d / "bilevel.png")
    # EXIF orientation 6 (rotate 90 CW to display): stored 60x40, shown 40x60
    ex = Image.Exif()
    ex[0x0112] = 6
    Image.fromarray(rgb).save(d / "exif.jpg", exif=ex)
    (d / "broken.jpg").write_bytes(b"\xff\xd8\xff this is not a jpeg")
    (d / "notes.txt").write_text("not an image")


def test_load_image_modes(tmp_path):
    make_images(tmp_path / "imgs")
    for f in sorted((tmp_path / "imgs").iterdir()):
        if f.name in ("broken.jpg", "notes.txt"):
            with pytest.raises(Exception):
                load_image(f)
            continue
        im = load_image(f)
        assert im.mode == "RGB", f
        assert im.size == ((40, 60) if f.name == "exif.jpg" else (60, 40)), f
    # 16-bit values are scaled by 65535, not clipped at 255
    a = np.asarray(load_image(tmp_path / "imgs" / "sixteen.png"))
    assert 100 < a.mean() < 155
    # transparent pixels are composited on white
    rgba = np.zeros((4, 4, 4), np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "clear.png")
    assert np.asarray(load_image(tmp_path / "clear.png")).min() == 255


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("w")
    torch.manual_seed(0)
    m = effnets.create_model("mobilenet_v3_small", width=0.5, num_classes=len(LABELS))
    pre = dict(input_size=64, crop_pct=0.875, interpolation="bicubic", mean=[0.5] * 3, std=[0.25] * 3)
    save_folder(m, d / "model", labels=LABELS, preprocessing=pre)
    return d / "model"


def test_cli_predict_folder_json_and_cam(tmp_path, folder, capsys):
    make_images(tmp_path / "imgs")
    rc = main(["predict", "mobilenet_v3_small", str(tmp_path / "imgs"), "--checkpoint", str(folder),
               "--topk", "3", "--json", "--cam", str(tmp_path / "cam")])
    out = capsys.readouterr()
    assert rc == 0
    doc = json.loads(out.out)
    preds = {p["file"].split("/")[-1]: p for p in doc["predictions"]}
    assert set(preds) == {"gray.png", "rgba.png", "palette.png", "cmyk.jpg", "sixteen.png", "la.png",
                          "bilevel.png", "exif.jpg", "broken.jpg", "notes.txt"}
    for name in ("broken.jpg", "notes.txt"):
        assert "error" in preds[name] and "top" not in preds[name]
    assert "2 of 10 file(s) skipped" in out.err
    for name, p in preds.items():
        if "error" in p:
            continue
        assert len(p["top"]) == 3 and all(t["label"] in LABELS for t in p["top"])
        probs = [t["prob"] for t in p["top"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        cam = Image.open(p["cam"])
        assert cam.size == (64, 64) and cam.mode == "RGB"


def test_cli_predict_text_single_file(tmp_path, folder, capsys):
    Image.fromarray(np.full((30, 30, 3), 200, np.uint8)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--checkpoint", str(folder), "--topk", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(tmp_path / "a.png")) and line.count(",") == 1
    assert any(lbl in line for lbl in LABELS)
    # the probabilities printed are the model's own
    m = effnets.create_model(checkpoint=str(folder)).eval()
    res = predict_files(m, [tmp_path / "a.png"], topk=1)[0]
    assert f"{res.top[0]['label']} {res.top[0]['prob']:.3f}" in line


def test_imagenet_names_for_1000_classes():
    names = imagenet_classes()
    assert len(names) == 1000 and names[0] == "tench" and names[999] == "toilet tissue"
    m = effnets.create_model("mobilenet_v1", width=0.25)
    assert class_names(m)[1] == "goldfish"
    m6 = effnets.create_model("mobilenet_v1", width=0.25, num_classes=6)
    assert class_names(m6) == [f"class_{i}" for i in range(6)]


@pytest.mark.parametrize("name,ov,size", [("efficientnet_b0", dict(width=0.25, depth=0.25), 64),
                                          ("coatnet_0", dict(img_size=64), 64), ("vit_tiny_16", dict(img_size=64), 64)])
def test_grad_cam_shape_and_focus(name, ov, size):
    torch.manual_seed(0)
    m = effnets.create_model(name, num_classes=5, **ov).eval()
    x = torch.randn(1, 3, size, size)
    cam = grad_cam(m, x, 2)
    assert cam.shape == (size, size) and cam.min() >= 0 and (abs(cam.max() - 1) < 1e-6 or cam.max() == 0)
    # the map follows the class gradient: a model whose class-2 score only sees the top half
    # of the last feature map must light up the top half
    if name == "efficientnet_b0":
        feats = m.forward_features(x)
        h = feats.shape[-2]

        class Half(torch.nn.Module):
            def __init__(self, base):
                super().__init__()
                self.base = base

            def forward_features(self, x):
                return self.base.forward_features(x)

            def forward_head(self, f):
                return f[:, :, : h // 2].clamp_min(0).mean((1, 2, 3))[:, None].repeat(1, 5)

        cam = grad_cam(Half(m), x, 2)
        assert cam[: size // 4].mean() > 3 * cam[-size // 4:].mean()
