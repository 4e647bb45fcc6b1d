"""Recipes: shipped values and their sources, overrides, clear errors, CLI exit codes."""
import pytest

from effnets.cli import main
from effnets.errors import ConfigError
from effnets.train.recipe import load_recipe, recipe_names


def test_shipped_recipes_load():
    assert {"efficientnet", "resnet_rs", "efficientnetv2", "demo"} <= set(recipe_names())
    for n in recipe_names():
        assert load_recipe(n).name == n


def test_efficientnet_recipe_values():
    r = load_recipe("efficientnet")
    assert (r.optimizer, r.rmsprop_decay, r.momentum, r.opt_eps) == ("rmsprop", 0.9, 0.9, 1e-3)
    assert r.model_args["bn_momentum"] == 0.01  # TF 0.99
    assert (r.weight_decay, r.schedule, r.decay_rate, r.decay_epochs) == (1e-5, "exponential", 0.97, 2.4)
    assert (r.drop_path, r.augment, r.label_smoothing, r.ema_decay) == (0.2, "autoaugment", 0.1, 0.9999)
    assert r.dropout is None  # the model card's
    assert r.scaled_lr(4096) == pytest.approx(0.256)  # paper
    assert r.scaled_lr(2048) == pytest.approx(0.128)  # tpu code default batch


def test_resnet_rs_and_v2_recipe_values():
    r = load_recipe("resnet_rs")
    assert (r.optimizer, r.nesterov, r.schedule, r.weight_decay) == ("sgd", True, "cosine", 4e-5)
    assert r.scaled_lr(4096) == pytest.approx(1.6)
    assert r.augment == "randaugment" and r.label_smoothing == 0.1 and r.ema_decay == 0.9999
    v2 = load_recipe("efficientnetv2")
    p = v2.progressive
    assert p.stages == 4 and p.image_size[0] == 128 and p.randaug_magnitude == [5, 15]
    assert p.dropout == [0.1, 0.3] and p.mixup_alpha == [0.0, 0.0]


def test_overrides_and_user_file(tmp_path):
    r = load_recipe("demo", ["epochs=3", "weight_decay=5e-4", "progressive.stages=2",
                             "progressive.image_size=[16, 32]", "model_args.width=0.5"])
    assert (r.epochs, r.weight_decay, r.progressive.stages, r.model_args["width"]) == (3, 5e-4, 2, 0.5)
    f = tmp_path / "mine.yaml"
    f.write_text("name: mine\nepochs: 2\noptimizer: adamw\nprogressive: {stages: 2}\n")
    r = load_recipe(str(f))
    assert (r.name, r.epochs, r.optimizer, r.progressive.stages) == ("mine", 2, "adamw", 2)


@pytest.mark.parametrize("assign, words", [
    ("epoch=3", "did you mean epochs"),
    ("epochs=-1", "epochs must be in"),
    ("optimizer=lamb", "must be one of"),
    ("momentum=1.5", "momentum must be in"),
    ("batch_size=2.5", "must be an integer"),
    ("nesterov=3", "true or false"),
    ("progressive.stage=3", "did you mean stages"),
    ("crop_scale=[0.9, 0.1]", "crop_scale"),
    ("noequals", "key=value"),
    ("progressive.=false", "names no sub-setting"),
    ("epochs.=3", "names no sub-setting"),
])
def test_bad_settings_are_clear(assign, words):
    with pytest.raises(ConfigError, match=words):
        load_recipe("demo", [assign])


def test_empty_sub_setting_in_a_mapping_is_clear():
    # found by tests/test_fuzz.py: {"progressive": {"": False}} replaced the whole progressive
    # schedule by False, and validation then crashed with an AttributeError
    with pytest.raises(ConfigError, match="names no sub-setting"):
        load_recipe("demo", {"progressive": {"": False}})


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="unknown recipe"):
        load_recipe("efficientnet_v9")


@pytest.mark.parametrize("argv", [
    ["train", "--set", "epoch=3"],
    ["train", "--set", "lr=-1"],
    ["train", "--recipe", "nope"],
    ["train", "no_such_model", "--set", "epochs=1"],
    ["train", "--data", "/no/such/dir", "--set", "epochs=1"],
    ["eval", "efficientnet_b0", "--checkpoint", "/no/such.safetensors", "--data", "digits"],
])
def test_cli_usage_errors_exit_2_with_one_line(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error:" in err[0], err


def test_show_recipe(capsys):
    assert main(["train", "--recipe", "efficientnet", "--set", "epochs=7", "--show-recipe"]) == 0
    out = capsys.readouterr().out
    assert "epochs: 7" in out and "optimizer: rmsprop" in out
