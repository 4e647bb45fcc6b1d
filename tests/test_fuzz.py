"""Property-based tests (issue 8.7): image decoding, recipe parsing, scaling functions."""
import io
import math

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from effnets.data.images import BadImage, open_image
from effnets.errors import ConfigError
from effnets.scaling import compound, make_divisible
from effnets.scaling.rules import PHI_RANGE, scale_model
from effnets.train.recipe import Recipe, load_recipe

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _valid(fmt, seed):
    g = np.random.default_rng(seed)
    im = Image.fromarray(g.integers(0, 255, (12, 10, 3), dtype=np.uint8))
    b = io.BytesIO()
    im.save(b, fmt)
    return b.getvalue()


VALID = {fmt: _valid(fmt, 0) for fmt in ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP")}


def _decode(tmp_path, data, name="x.png"):
    p = tmp_path / name
    p.write_bytes(data)
    try:
        im = open_image(p)
    except BadImage as e:
        assert str(p) in str(e)
        return None
    assert im.mode == "RGB" and im.size[0] >= 1 and im.size[1] >= 1
    return im


@FAST
@given(data=st.binary(max_size=2048))
def test_random_bytes_decode_or_badimage(tmp_path, data):
    _decode(tmp_path, data)


@FAST
@given(fmt=st.sampled_from(sorted(VALID)), cut=st.floats(0, 1), flips=st.lists(st.integers(0, 10_000), max_size=8))
def test_truncated_and_bitflipped_valid_files(tmp_path, fmt, cut, flips):
    data = bytearray(VALID[fmt][: int(len(VALID[fmt]) * cut)])
    for f in flips:
        if data:
            data[f % len(data)] ^= 0xFF
    _decode(tmp_path, bytes(data), "x." + fmt.lower())


KEYS = [f.name for f in Recipe.__dataclass_fields__.values()] + ["progressive.stages", "progressive.image_size",
                                                                  "model_args.width", "nope", "epoch", ""]
VALUES = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True)
                      | st.text(max_size=12), lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=6), c, max_size=3), max_leaves=6)


@FAST
@given(items=st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=10), VALUES, max_size=4))
def test_recipe_overrides_give_a_recipe_or_configerror(items):
    try:
        r = load_recipe("demo", items)
    except ConfigError as e:
        assert str(e)
        return
    assert isinstance(r, Recipe) and r.batch_size >= 1 and r.epochs > 0 and math.isfinite(r.epochs)


@FAST
@given(text=st.text(max_size=200))
def test_recipe_yaml_text_gives_a_recipe_or_configerror(tmp_path, text):
    f = tmp_path / "r.yaml"
    f.write_text(text, encoding="utf-8")
    try:
        load_recipe(str(f))
    except ConfigError:
        pass


@FAST
@given(doc=st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=5))
def test_recipe_yaml_documents(tmp_path, doc):
    f = tmp_path / "r.yaml"
    try:
        f.write_text(yaml.safe_dump(doc), encoding="utf-8")
    except yaml.YAMLError:
        return
    try:
        load_recipe(str(f))
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(value=st.floats(0, 1e6), divisor=st.integers(1, 64), limit=st.sampled_from([0.0, 0.9]))
def test_make_divisible_properties(value, divisor, limit):
    r = make_divisible(value, divisor, round_limit=limit)
    assert isinstance(r, int) and r % divisor == 0 and r >= divisor
    assert r <= value + divisor + divisor / 2 or r == divisor
    if limit:
        assert r >= 0.9 * value - 1e-9


@settings(max_examples=300, deadline=None)
@given(phi=st.floats(-8, 12), a=st.floats(1, 2), b=st.floats(1, 2), g=st.floats(1, 2))
def test_compound_properties(phi, a, b, g):
    c = compound(phi, a, b, g)
    assert c.depth == pytest.approx(a ** phi) and c.width == pytest.approx(b ** phi)
    assert c.flops_factor == pytest.approx((a * b * b * g * g) ** phi, rel=1e-9)
    assert (c.depth >= 1 - 1e-12) if phi >= 0 else (c.depth <= 1 + 1e-12)


@given(phi=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-100, 100))
@settings(max_examples=100, deadline=None)
def test_scale_model_phi_in_range_or_configerror(phi):
    try:
        s = scale_model("efficientnet_b0", phi)
    except ConfigError as e:
        assert "phi" in str(e)
        assert not (math.isfinite(phi) and PHI_RANGE[0] <= phi <= PHI_RANGE[1])
        return
    assert PHI_RANGE[0] <= phi <= PHI_RANGE[1] and s.resolution >= 4 and s.resolution % 4 == 0
