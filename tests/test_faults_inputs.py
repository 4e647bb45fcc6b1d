"""Bad inputs everywhere (issue 8.5) and hostile checkpoints (8.4): one clear error naming what is
wrong and what would be right, from the API and from the CLI (exit 2, one line, no trace)."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

import effnets
from effnets.cli import main
from effnets.errors import CheckpointError, ConfigError, EffnetsError, InputError
from effnets.train import fit
from effnets.train.recipe import load_recipe

TINY = ["--set", "synthetic_samples=16", "--set", "batch_size=8", "--set", "epochs=1", "--set", "workers=0",
        "--set", "model_args.width=0.25", "--set", "model_args.depth=0.34"]
MARK = "/tmp/effnets_faults_pwned"


pytestmark = pytest.mark.usefixtures("one_thread")


def one_line_error(capsys, argv, code=2):
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0] and "Traceback" not in err[0], err
    return err[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    torch.set_num_threads(1)
    r = fit("efficientnet_b0", "demo", data="synthetic", out_dir=str(out), echo=lambda *a: None, progress=False,
            tensorboard=False, overrides={"synthetic_samples": 16, "batch_size": 8, "epochs": 1, "workers": 0,
                                          "model_args": {"width": 0.25, "depth": 0.34}})
    return r


# -- model inputs -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["mobilenet_v3_small", "vit_tiny_16", "coatnet_0"])
def test_forward_rank_channels_dtype(name):
    m = effnets.create_model(name, num_classes=4).eval()
    with pytest.raises(InputError, match=r"expects a float tensor shaped \(N, 3, H, W\).*3-D.*unsqueeze\(0\)"):
        m(torch.randn(3, 32, 32))
    with pytest.raises(InputError, match="5-D"):
        m(torch.randn(1, 1, 3, 32, 32))
    with pytest.raises(InputError, match="expects 3 input channels, got 1.*in_chans=1"):
        m(torch.randn(2, 1, 32, 32))
    with pytest.raises(InputError, match=r"channels-last.*permute\(0, 3, 1, 2\)"):
        m(torch.randn(2, 32, 32, 3))
    with pytest.raises(InputError, match=r"floating-point.*x.float\(\) / 255"):
        m(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(InputError, match="expects a float tensor"):
        m([[0.0]])
    with torch.no_grad():
        assert m(torch.randn(1, 3, 32, 32)).shape == (1, 4)


def test_vit_minimum_size_and_patch_multiple():
    m = effnets.create_model("vit_tiny_16", num_classes=4).eval()
    with pytest.raises(InputError, match="at least 16x16 and multiples of 16, got 8x8; resize or pad to e.g. 16x16"):
        m(torch.randn(1, 3, 8, 8))
    with pytest.raises(InputError, match="got 24x40; resize or pad to e.g. 32x48"):
        m(torch.randn(1, 3, 24, 40))
    with pytest.raises(InputError, match="empty batch"):
        m(torch.randn(0, 3, 32, 32))


def test_checks_do_not_affect_tracing():
    m = effnets.create_model("mobilenet_v3_small", num_classes=4).eval()
    ts = torch.jit.trace(m, torch.randn(1, 3, 32, 32), check_trace=False)
    assert ts(torch.randn(2, 3, 40, 40)).shape == (2, 4)


def test_cli_image_smaller_than_vit_minimum(tmp_path, capsys):
    m = effnets.create_model("vit_tiny_16", num_classes=10)
    save_file(m.state_dict(), str(tmp_path / "vit.safetensors"))
    err = one_line_error(capsys, ["eval", "vit_tiny_16", "--checkpoint", str(tmp_path / "vit.safetensors"),
                                  "--data", "synthetic", "--size", "24"])
    assert "multiples of 16, got 24x24" in err


def test_cli_wrong_channel_count(tmp_path, capsys):
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path), "--no-progress",
                                  "--set", "model_args.in_chans=1"] + TINY)
    assert "expects 1 input channels, got 3" in err


# -- settings, names, paths: API and CLI --------------------------------------------------------
CASES = [  # (overrides, words in the message)
    (["epocs=3"], "unknown recipe setting 'epocs'; did you mean epochs"),
    (["lr=-0.1"], r"lr must be in \(0, inf\), got -0.1"),
    (["batch_size=0"], r"batch_size must be in \[1, inf\), got 0"),
    (["max_bad_fraction=2"], r"max_bad_fraction must be in \[0, 1\]"),
    (["epochs=.inf"], "finite"),
    (["crop_scale=[a, b]"], "finite numbers"),
]


@pytest.mark.parametrize("overrides, words", CASES)
def test_bad_settings_api_and_cli(overrides, words, tmp_path, capsys):
    with pytest.raises(ConfigError, match=words):
        load_recipe("demo", overrides)
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path)]
                         + [a for o in overrides for a in ("--set", o)])
    import re
    assert re.search(words, err), err


def test_unknown_key_in_recipe_file(tmp_path, capsys):
    f = tmp_path / "r.yaml"
    f.write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown recipe setting 'learning_rate'"):
        load_recipe(str(f))
    assert "learning_rate" in one_line_error(capsys, ["train", "--recipe", str(f), "--data", "synthetic"])


@pytest.mark.parametrize("phi", [20, -9])
def test_phi_out_of_range_api_and_cli(phi, capsys):
    with pytest.raises(ConfigError, match=r"phi=.* outside the supported range -8 \.\. 12"):
        effnets.create_model(f"efficientnet_b0@phi={phi}")
    from effnets.scaling.rules import scale_model
    with pytest.raises(ConfigError, match="outside the supported range"):
        scale_model("efficientnet_b0", phi)
    err = one_line_error(capsys, ["train", f"efficientnet_b0@phi={phi}", "--data", "synthetic"] + TINY)
    assert "outside the supported range" in err


def test_missing_data_directory_api_and_cli(tmp_path, capsys):
    missing = str(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"data folder .*nope' does not exist; --data must be digits, synthetic"):
        fit("efficientnet_b0", "demo", data=missing, out_dir=str(tmp_path / "o"), echo=lambda *a: None)
    assert "does not exist" in one_line_error(capsys, ["train", "--data", missing] + TINY)
    (tmp_path / "flat").mkdir()
    assert "train/ and val/" in one_line_error(capsys, ["train", "--data", str(tmp_path / "flat")] + TINY)
    assert "does not exist" in one_line_error(capsys, ["eval", "efficientnet_b0", "--checkpoint", "x.safetensors",
                                                       "--data", missing])


# -- hostile checkpoints -------------------------------------------------------------------------
class Payload:
    def __reduce__(self):
        return (os.system, (f"touch {MARK}",))


def _evil(path):
    with open(path, "wb") as f:
        pickle.dump({"state_dict": {"w": Payload()}}, f)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".safetensors", ".bin"])
def test_pickle_payload_never_runs_through_the_cli(tmp_path, capsys, suffix):
    evil = tmp_path / f"evil{suffix}"
    _evil(evil)
    if os.path.exists(MARK):
        os.remove(MARK)
    err = one_line_error(capsys, ["eval", "efficientnet_b0", "--checkpoint", str(evil), "--data", "synthetic"])
    assert str(evil) in err and ("weights_only" in err or "safetensors" in err)
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path / "o"), "--resume",
                                  str(evil)] + TINY)
    assert str(evil) in err
    with pytest.raises(EffnetsError):
        effnets.create_model("efficientnet_b0", checkpoint=str(evil))
    assert not os.path.exists(MARK), "the pickle payload ran"


def _mutated(src, dst, prefix="model."):
    """src's tensors with one key missing, one extra and one of the wrong shape; metadata kept."""
    from safetensors import safe_open
    with safe_open(src, "pt") as f:
        md = f.metadata()
    t = load_file(src)
    keys = sorted(k for k in t if k.startswith(prefix) and k.endswith(".weight"))
    t.pop(keys[0])
    t[prefix + "extra.weight"] = torch.zeros(2)
    t[keys[1]] = torch.zeros(3, 3)
    save_file(t, dst, metadata=md)
    return keys[0][len(prefix):], keys[1][len(prefix):]


def test_misfit_checkpoint_lists_keys_through_eval_and_resume(tmp_path, capsys, trained):
    dst = str(tmp_path / "bad.safetensors")
    missing, wrong = _mutated(trained.checkpoint, dst)
    err = one_line_error(capsys, ["eval", "efficientnet_b0", "--checkpoint", dst, "--data", "synthetic"])
    for words in (f"missing keys (1): {missing}", "unexpected keys (1): extra.weight", f"{wrong} (3, 3) vs model",
                  "nothing was loaded"):
        assert words in err, err
    out = tmp_path / "resume"
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(out), "--resume", dst] + TINY)
    assert missing in err and "extra.weight" in err and wrong in err
    # and from the API
    from effnets.train import checkpoint as ckpt
    m = effnets.create_model("efficientnet_b0", num_classes=10, width=0.25, depth=0.34)
    with pytest.raises(CheckpointError, match="missing keys"):
        ckpt.restore(dst, m)


def test_corrupt_metadata_is_a_clear_error(tmp_path, capsys, trained):
    t = load_file(trained.checkpoint)
    save_file(t, str(tmp_path / "meta.safetensors"), metadata={"effnets_train_state": "{not json"})
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path / "o"), "--resume",
                                  str(tmp_path / "meta.safetensors")] + TINY)
    assert "unreadable training metadata" in err
    save_file(t, str(tmp_path / "m2.safetensors"), metadata={"effnets_train_state": json.dumps({"meta": {}})})
    err = one_line_error(capsys, ["train", "--data", "synthetic", "--out", str(tmp_path / "o2"), "--resume",
                                  str(tmp_path / "m2.safetensors"), "--set", "ema_decay=0",
                                  "--set", "best_metric=top1"] + TINY)
    assert "m2.safetensors" in err
