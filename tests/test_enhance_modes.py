"""The enhancement modes (issue 24): the paper's fade toward white, and three that keep hue."""

import colorsys

import numpy as np
import pytest
from PIL import Image

from adapt.config import AdaptConfig, ConfigError, EnhanceConfig
from adapt.enhance import enhance

SIZE = 96
GROUND = (200, 190, 195)  # a pinkish grey, like the world's backgrounds
ORANGE = (240, 120, 0)


def _scene() -> tuple[Image.Image, np.ndarray]:
    """A uniform ground, an orange 16-px square in the low-anchor bottom-right corner; anchor hot top-left."""
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[:] = GROUND
    img[64:80, 64:80] = ORANGE
    anchor = np.add.outer(np.arange(6, 0, -1), np.arange(6, 0, -1)).astype(float)  # hot top-left, cold bottom-right
    return Image.fromarray(img), anchor


def _cfg(mode: str) -> EnhanceConfig:
    return EnhanceConfig(mode=mode, blur=0.0)  # no blur of the map: the cold corner's weight is the floor


def _hue_sat(rgb) -> tuple[float, float]:
    h, _, s = colorsys.rgb_to_hls(*(np.asarray(rgb, float) / 255))
    return h * 360, s


def _weight(image, anchor) -> float:
    """The weight a of the square's centre, read off the paper mode (its blue channel: 0 → 255·(1 − a))."""
    out = np.asarray(enhance(image, anchor, _cfg("paper")), float)
    return 1 - out[72, 72, 2] / 255


def test_paper_mode_is_the_fade_toward_white_and_washes_the_colour_out():
    image, anchor = _scene()
    out = np.asarray(enhance(image, anchor, _cfg("paper")), float)
    a = _weight(image, anchor)
    assert a < 0.5  # a cold pixel
    assert np.abs(out[72, 72] - (a * np.array(ORANGE) + (1 - a) * 255)).max() <= 1
    # orange → a pale peach: saturation in HLS falls from 1.0 to 0.84, lightness rises from 0.47 to 0.78
    assert colorsys.rgb_to_hls(*(out[72, 72] / 255))[1] > 0.75


@pytest.mark.parametrize("mode", ["background", "blur"])
def test_hue_keeping_modes_leave_a_uniform_ground_as_it_is(mode):
    image, anchor = _scene()
    out = np.asarray(enhance(image, anchor, _cfg(mode)), float)
    # far from the square, the target of the fade is the ground itself: nothing changes
    assert np.abs(out[5:40, 5:40] - GROUND).max() <= 1
    assert np.abs(out[90:, :30] - GROUND).max() <= 1


def test_background_mode_fades_a_small_object_into_its_ground():
    image, anchor = _scene()
    out = np.asarray(enhance(image, anchor, _cfg("background")), float)
    a = _weight(image, anchor)  # the same weight in every mode; only the target differs
    expected = a * np.array(ORANGE) + (1 - a) * np.array(GROUND)  # the median over 49 px is the ground
    assert np.abs(out[72, 72] - expected).max() <= 1
    paper = np.asarray(enhance(image, anchor, _cfg("paper")), float)
    assert (255 - out[72, 72]).sum() > (255 - paper[72, 72]).sum() + 50  # never toward white


def test_blur_mode_keeps_the_objects_hue():
    image, anchor = _scene()
    out = np.asarray(enhance(image, anchor, _cfg("blur")), float)
    h0, _ = _hue_sat(ORANGE)
    h, s = _hue_sat(out[72, 72])
    assert abs(h - h0) < 6 and s > 0.5  # the paper's fade also keeps the hue angle, but not the saturation: below


def test_luminance_mode_keeps_each_pixels_chroma_direction_and_more_of_it_than_the_paper():
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:] = GROUND
    image[64:80, 64:72] = ORANGE
    image[64:80, 72:80] = (30, 60, 160)  # a mid blue
    image = Image.fromarray(image)
    anchor = _scene()[1]
    luma = np.array([0.299, 0.587, 0.114])
    src = np.asarray(image, float)
    out = np.asarray(enhance(image, anchor, _cfg("luminance")), float)
    paper = np.asarray(enhance(image, anchor, _cfg("paper")), float)
    for px in ((72, 68), (72, 76)):
        c_in, c_out, c_paper = (x[px] - x[px] @ luma for x in (src, out, paper))
        assert out[px] @ luma > src[px] @ luma + 40  # lighter
        cos = c_in @ c_out / np.linalg.norm(c_in) / np.linalg.norm(c_out)
        assert cos > 0.99  # the same chroma direction, up to rounding to 8 bits
        assert np.linalg.norm(c_out) > np.linalg.norm(c_paper) + 5  # and more of it than the paper's fade keeps


def test_hot_regions_are_kept_in_every_mode():
    image, anchor = _scene()
    image = np.asarray(image).copy()
    image[4:12, 4:12] = ORANGE  # an object where the anchor is hot
    for mode in ("paper", "background", "blur", "luminance"):
        out = np.asarray(enhance(Image.fromarray(image), anchor, _cfg(mode)), float)
        assert np.abs(out[6:10, 6:10] - ORANGE).max() <= 5, mode


def test_an_unknown_mode_is_one_readable_error():
    with pytest.raises(ConfigError, match="enhance.mode must be"):
        AdaptConfig().replace(**{"enhance.mode": "sepia"}).validate()


def test_every_mode_is_an_adapt_tf_reading():
    from adapt.methods.adapt_tf import VARIANTS

    for mode in ("paper", "background", "blur", "luminance"):
        over = VARIANTS[f"enhanced-{mode}"]
        assert over == {"enhance.enabled": True, "enhance.mode": mode}
