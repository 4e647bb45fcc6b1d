"""Data faults (issue 8.1): one robust image opener; an ImageFolder full of broken files trains
and evaluates, every bad file is skipped and listed, and a threshold stops a hopeless data set."""
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from effnets.cli import main
from effnets.data.datasets import FolderDataset, build_splits
from effnets.data.images import BadImage, open_image, probe_image
from effnets.errors import DataError
from effnets.train import fit

TINY = {"synthetic_samples": 48, "epochs": 1, "workers": 0, "model_args": {"width": 0.25, "depth": 0.34},
        "train_size": 32, "eval_size": 32, "ema_decay": 0.0, "best_metric": "top1", "warmup_epochs": 0}


pytestmark = pytest.mark.usefixtures("one_thread")


def _rgb(seed=0, size=(20, 16)):
    g = np.random.default_rng(seed)
    return Image.fromarray(g.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


def _png_bytes(img) -> bytes:
    b = io.BytesIO()
    img.save(b, "PNG")
    return b.getvalue()


def _jpeg_bytes(img, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, "JPEG", quality=90, **kw)
    return b.getvalue()


def bomb_png(width=100_000, height=100_000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    data = bytearray(_png_bytes(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(data)


def write_good_modes(d):
    """Good images in every awkward mode; returns their paths."""
    d.mkdir(parents=True, exist_ok=True)
    base = _rgb(1)
    out = {}
    out["rgb.png"] = base
    out["gray.jpg"] = base.convert("L")
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    out["rgba.png"] = rgba
    out["palette.png"] = base.convert("P", palette=Image.ADAPTIVE)
    pt = base.convert("P", palette=Image.ADAPTIVE)
    pt.info["transparency"] = 0
    out["palette_t.png"] = pt
    out["cmyk.jpg"] = base.convert("CMYK")
    out["la.png"] = base.convert("LA")
    out["bw.png"] = base.convert("1")
    out["gray16.png"] = Image.fromarray((np.arange(320, dtype=np.uint16).reshape(16, 20) * 200))
    out["float.tif"] = Image.fromarray(np.linspace(0, 1, 320, dtype=np.float32).reshape(16, 20))
    paths = []
    for name, im in out.items():
        p = d / name
        if name == "palette_t.png":
            im.save(p, transparency=0)
        else:
            im.save(p)
        paths.append(p)
    return paths


def write_bad_files(d, huge_pixels=None):
    """One file of each bad kind; returns {path: kind}."""
    d.mkdir(parents=True, exist_ok=True)
    good_jpg, good_png = _jpeg_bytes(_rgb(2, (64, 64))), _png_bytes(_rgb(3))
    bad = {}

    def put(name, data, kind):
        (d / name).write_bytes(data)
        bad[str(d / name)] = kind
    put("truncated.jpg", good_jpg[: len(good_jpg) // 2], "truncated")
    put("truncated.png", good_png[: len(good_png) * 2 // 3], "truncated")
    corrupt = bytearray(good_png)
    corrupt[60:120] = b"\x00" * 60
    put("corrupt.png", bytes(corrupt), "corrupt")
    put("zero.jpg", b"", "empty")
    put("notes.png", b"this is not an image, it is a text file\n" * 5, "not an image")
    put("page.jpeg", b"<html><body>404 Not Found</body></html>", "not an image")
    put("bomb.png", bomb_png(), "too large")
    (d / "folder.jpg").mkdir()
    bad[str(d / "folder.jpg")] = "directory"
    os.symlink(d / "nowhere.png", d / "dangling.png")
    bad[str(d / "dangling.png")] = "broken link"
    return bad


# -- the opener ---------------------------------------------------------------------------------
def test_open_image_modes_all_become_rgb(tmp_path):
    for p in write_good_modes(tmp_path):
        im = open_image(p)
        assert im.mode == "RGB" and im.size == (20, 16), p


def test_alpha_is_composited_on_white_and_16bit_is_scaled(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))
    rgba.putpixel((0, 0), (10, 20, 30, 255))
    rgba.save(tmp_path / "a.png")
    im = open_image(tmp_path / "a.png")
    assert im.getpixel((1, 1)) == (255, 255, 255) and im.getpixel((0, 0)) == (10, 20, 30)
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.uint16)).save(tmp_path / "g16.png")
    assert [open_image(tmp_path / "g16.png").getpixel((i, 0))[0] for i in range(3)] == [0, 128, 255]
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert all(v > 245 for v in open_image(tmp_path / "c.jpg").getpixel((0, 0)))


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (200, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif.tobytes())
    assert Image.open(tmp_path / "r.jpg").size == (40, 20)
    assert open_image(tmp_path / "r.jpg").size == (20, 40)


def test_every_bad_kind_is_a_clear_badimage(tmp_path):
    for path, kind in write_bad_files(tmp_path).items():
        with pytest.raises(BadImage) as e:
            open_image(path)
        assert e.value.path == path and path in str(e.value) and e.value.reason, kind
    # the header check alone finds all but the truncated/corrupt pixel data
    header_ok = {p for p in write_bad_files(tmp_path / "again") if _probe_ok(p)}
    assert {os.path.basename(p) for p in header_ok} <= {"truncated.jpg", "truncated.png", "corrupt.png"}


def _probe_ok(p):
    try:
        probe_image(p)
        return True
    except BadImage:
        return False


def test_pixel_cap_is_checked_before_decoding(tmp_path):
    Image.new("RGB", (300, 300)).save(tmp_path / "big.png")
    with pytest.raises(BadImage, match="pixel limit"):
        open_image(tmp_path / "big.png", max_pixels=50_000)
    assert open_image(tmp_path / "big.png").size == (300, 300)
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    with pytest.raises(BadImage, match="too large|pixel"):
        probe_image(tmp_path / "bomb.png")


# -- a broken ImageFolder through training and evaluation -----------------------------------------
def make_broken_folder(root, huge=True):
    """train/{cat,dog,empty} and val/{cat,dog}; cat and dog hold good images in every mode, the
    bad files of every kind are in train/cat and val/dog.  Returns (expected bad paths, n good train)."""
    bad = {}
    for split in ("train", "val"):
        for c, seed in (("cat", 10), ("dog", 20)):
            d = root / split / c
            write_good_modes(d)
            for i in range(3 if split == "train" else 1):
                v = np.full((24, 24, 3), 40 if c == "cat" else 210, np.uint8) + np.uint8(i)
                Image.fromarray(v).save(d / f"plain{i}.png")
    bad.update(write_bad_files(root / "train" / "cat"))
    bad.update(write_bad_files(root / "val" / "dog"))
    if huge:
        Image.new("RGB", (1200, 1000), (9, 9, 9)).save(root / "train" / "dog" / "huge.png")
        bad[str(root / "train" / "dog" / "huge.png")] = "too large"
    (root / "train" / "empty").mkdir()
    n_good_train = 2 * 13  # 10 modes + 3 plain per class
    return bad, n_good_train


def _fit(out, data, **over):
    lines = []
    r = fit("efficientnet_b0", "demo", data=str(data), out_dir=str(out), overrides={**TINY, **over},
            echo=lines.append, progress=False, tensorboard=False)
    return r, "\n".join(lines)


def test_training_skips_and_reports_every_bad_file(tmp_path):
    bad, n_good = make_broken_folder(tmp_path / "data")
    # header-only scan + batch == every train candidate that passes the header check: each sample
    # is decoded in the epoch, so the truncated files are found while training (late) too
    n_header_ok = n_good + 3
    r, log = _fit(tmp_path / "run", tmp_path / "data", batch_size=n_header_ok, max_image_pixels=1_000_000,
                  max_bad_fraction=0.5)
    assert r.completed and r.global_step == 1
    reported = {p for _, p, _ in r.bad_files}
    assert reported == set(bad), (reported ^ set(bad))
    assert {s for s, _, _ in r.bad_files} == {"train", "val"}
    listing = (tmp_path / "run" / "bad_files.txt").read_text()
    for p in bad:
        assert p in listing
    assert f"{len(bad)} bad image files" in listing and "empty" in listing
    assert "bad image files were skipped" in log and "bad files" in r.summary()
    import yaml
    _, resolved = list(yaml.safe_load_all(open(r.config)))
    assert resolved["classes"] == ["cat", "dog", "empty"]  # the folder names, the empty one included
    assert resolved["train_images"] == n_header_ok
    assert "classes have no usable training image" in log and "empty" in log


def test_verify_images_finds_truncated_files_up_front(tmp_path):
    bad, n_good = make_broken_folder(tmp_path / "data", huge=False)
    splits = build_splits(str(tmp_path / "data"), verify="full")
    assert len(splits.train) == n_good and splits.classes == ["cat", "dog", "empty"]
    assert {p for p, _ in splits.train.bad} | {p for p, _ in splits.val.bad} == set(bad)
    assert splits.train.empty_classes == ["empty"]


def test_late_bad_file_is_substituted_deterministically(tmp_path):
    d = tmp_path / "train" / "a"
    d.mkdir(parents=True)
    for i in range(4):
        _rgb(i).save(d / f"{i}.png")
    good = (d / "1.png").read_bytes()
    (d / "1.png").write_bytes(good[: len(good) // 2])  # passes the header check, fails to decode
    ds = FolderDataset(str(tmp_path / "train"))
    assert len(ds) == 4 and not ds.bad
    img, t = ds[1]
    assert np.array_equal(np.asarray(img), np.asarray(open_image(d / "2.png")))  # the next good sample
    assert [p for p, _ in ds.bad_files()] == [str(d / "1.png")]
    skip = FolderDataset(str(tmp_path / "train"), on_error="skip")
    assert skip[1] is None


def test_too_many_bad_files_stop_with_a_clear_error(tmp_path, capsys):
    make_broken_folder(tmp_path / "data")
    with pytest.raises(DataError, match=r"max_bad_fraction=0\.05.*--set max_bad_fraction="):
        _fit(tmp_path / "run", tmp_path / "data", max_bad_fraction=0.05)
    argv = ["train", "--data", str(tmp_path / "data"), "--out", str(tmp_path / "cli"), "--no-progress",
            "--set", "max_bad_fraction=0.05", "--set", "epochs=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_bad_fraction" in err[0] and "bad" in err[0]


def test_all_bad_folder_is_a_clear_error(tmp_path):
    write_bad_files(tmp_path / "train" / "x")
    with pytest.raises(DataError, match="no usable images.*bad"):
        FolderDataset(str(tmp_path / "train"), verify="full")


def test_eval_command_skips_and_lists_bad_files(tmp_path, capsys):
    bad, _ = make_broken_folder(tmp_path / "data", huge=False)
    r, _ = _fit(tmp_path / "run", tmp_path / "data", epochs=1, batch_size=8)
    folder = tmp_path / "data" / "val"
    for workers in ("0", "1"):
        code = main(["eval", "efficientnet_b0", "--checkpoint", r.checkpoint, "--data", str(tmp_path / "data"),
                     "--workers", workers])
        out = capsys.readouterr()
        assert code == 0, out.err
        val_bad = [p for p in bad if p.startswith(str(folder))]
        assert f"skipped {len(val_bad)} bad image files" in out.out, out.out
        for p in val_bad:
            assert p in out.out
        assert "(22 images)" in out.out  # the 2 x 11 good ones, each counted once
    assert main(["eval", "efficientnet_b0", "--checkpoint", r.checkpoint, "--data", str(folder),
                 "--max-bad-fraction", "0.1"]) == 2
    assert "max_bad_fraction" in capsys.readouterr().err
