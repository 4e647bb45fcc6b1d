"""`effnets train --finetune --checkpoint C`: start from trained weights, new head for another
class count, layer-wise LR decay reaching the optimizer through the schedule."""
import pytest
import torch

import effnets
from effnets.cli import main
from effnets.train.checkpoint import model_state, read_checkpoint

TINY = ["--set", "synthetic_samples=64", "--set", "epochs=1", "--set", "workers=0", "--set", "train_size=32",
        "--set", "eval_size=32", "--set", "ema_decay=0.0", "--set", "best_metric=top1", "--set", "batch_size=16",
        "--set", "warmup_epochs=0", "--no-progress"]


pytestmark = pytest.mark.usefixtures("one_thread")


def three_class_folder(root):
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", 16), ("val", 6)):
        for c, colour in enumerate(((220, 30, 30), (30, 220, 30), (30, 30, 220))):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(n):
                noise = (torch.rand(32, 32, 3, generator=g) * 60).to(torch.uint8).numpy()
                Image.fromarray((noise + torch.tensor(colour).to(torch.uint8).numpy() * 0 + noise * 0 +
                                 __import__("numpy").array(colour, dtype="uint8")).clip(0, 255)).save(d / f"{i}.png")
    return root


def test_finetune_from_training_checkpoint(tmp_path, capsys):
    src = tmp_path / "src"
    assert main(["train", "--recipe", "demo", "--data", "digits", "--out", str(src), *TINY]) == 0
    ckpt = src / "last.safetensors"
    # a training checkpoint loads through create_model (model.* tensors picked out)
    m = effnets.create_model("efficientnet_b0", width=0.25, depth=0.34, num_classes=10, checkpoint=str(ckpt))
    trained = model_state(read_checkpoint(str(ckpt))[0])
    assert torch.equal(m.stem.conv.weight, trained["stem.conv.weight"])

    out = tmp_path / "ft"
    data = three_class_folder(tmp_path / "three")
    with pytest.warns(UserWarning, match="re-initialised"):  # digits: 10 classes -> 3 classes
        rc = main(["train", "--recipe", "demo", "--data", str(data), "--finetune", "--checkpoint", str(ckpt),
                   "--layer-decay", "0.5", "--freeze-stages", "1", "--out", str(out), *TINY])
    assert rc == 0
    tensors, meta = read_checkpoint(str(out / "last.safetensors"))
    ft = model_state(tensors)
    # frozen stem and first stage keep the source weights; later stages moved
    assert torch.equal(ft["stem.conv.weight"], trained["stem.conv.weight"])
    assert torch.equal(ft["stages.0.0.conv_dw.conv.weight"], trained["stages.0.0.conv_dw.conv.weight"])
    assert not torch.equal(ft["stages.3.0.conv_pw.conv.weight"], trained["stages.3.0.conv_pw.conv.weight"])
    assert ft["classifier.weight"].shape[0] == 3
    assert meta["meta"]["recipe"]["layer_decay"] == 0.5 and meta["meta"]["recipe"]["init_checkpoint"] == str(ckpt)
    assert meta["meta"]["num_classes"] == 3


def test_finetune_needs_checkpoint(capsys):
    assert main(["train", "--recipe", "demo", "--finetune"]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_layer_decay_scales_group_lrs():
    from effnets.train.optim import build_optimizer
    from effnets.train.recipe import load_recipe
    from effnets.train.schedule import build_schedule
    model = effnets.create_model("mobilenet_v3_small", num_classes=5)
    recipe = load_recipe("demo", {"layer_decay": 0.5, "schedule": "constant", "warmup_epochs": 0})
    opt = build_optimizer(model, recipe, 0.1)
    build_schedule(recipe, 0.1, 10).step_to(opt, 3)
    lrs = sorted({round(g["lr"], 12) for g in opt.param_groups})
    assert max(lrs) == pytest.approx(0.1)  # the head keeps the full rate
    assert min(lrs) < 0.1 * 0.5 ** 3  # the stem gets layer_decay^(L-1)
