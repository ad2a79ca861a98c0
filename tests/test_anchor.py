"""The anchor's criteria, fusion and debiasing on hand-made maps with known answers (Eq. 1–9)."""

import numpy as np
import pytest

from adapt.anchor import BiasCache, debias, entropy, focus_score, fuse, high_freq_ratio, minmax, noise_images, \
    normalize, query_target_entropy, reference_ratio, smoothness_score, spectral_score, total_variation
from adapt.config import AnchorConfig

CFG = AnchorConfig()


def peak(h=8, w=8, cy=3.0, cx=4.0, sigma=1.2):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))


NOISE = np.random.default_rng(0).random((8, 8))


def test_normalisers():
    x = np.array([[1.0, 3.0], [2.0, 2.0]])
    assert normalize(x).sum() == pytest.approx(1.0) and normalize(x)[0, 1] == pytest.approx(3 / 8)
    assert minmax(x).min() == 0 and minmax(x).max() == 1 and minmax(x)[1, 0] == pytest.approx(0.5)
    assert np.all(minmax(np.ones((3, 3))) == 0)


def test_high_frequency_ratio_extremes():
    assert high_freq_ratio(np.ones((8, 8))) == 0.0  # constant → MM is zero → no energy
    checker = np.indices((8, 8)).sum(0) % 2  # half its energy at DC (mean 0.5), half at the Nyquist corner
    assert high_freq_ratio(checker.astype(float)) == pytest.approx(0.5)
    smooth, noisy = high_freq_ratio(peak()), high_freq_ratio(NOISE)
    assert smooth < 0.1 < 0.2 < noisy


def test_reference_profile_and_spectral_score():
    assert reference_ratio(0, 5, CFG) == pytest.approx(0.8)
    assert reference_ratio(4, 5, CFG) == pytest.approx(0.2)
    assert reference_ratio(2, 5, CFG) == pytest.approx(0.5)
    rho = high_freq_ratio(peak())
    assert spectral_score(peak(), 4, 5, CFG) == pytest.approx(1 - abs(rho - 0.2))


def test_total_variation_by_hand():
    m = np.array([[0.0, 1.0], [1.0, 1.0]])
    # horizontal |Δ| = [1, 0] → 0.5; vertical |Δ| = [1, 0] → 0.5
    assert total_variation(m) == pytest.approx(1.0)
    assert smoothness_score(m) == pytest.approx(0.5)


def test_single_peak_beats_white_noise_on_smoothness_and_focus():
    target = 0.6
    assert smoothness_score(peak()) > smoothness_score(NOISE) + 0.2
    assert focus_score(peak(), target) > focus_score(NOISE, target)
    # and raw attention-scale values score the same as the normalised map
    assert smoothness_score(peak() / 576) == pytest.approx(smoothness_score(peak()))


def test_entropy_extremes():
    assert entropy(np.ones((4, 4))) == pytest.approx(1.0)
    one_hot = np.zeros((4, 4))
    one_hot[1, 2] = 1
    assert entropy(one_hot) == pytest.approx(0.0)


def test_query_rule_for_target_entropy():
    assert query_target_entropy("Describe the image in detail.", CFG) == CFG.h_broad
    assert query_target_entropy("What do you see in this image?", CFG) == CFG.h_broad
    assert query_target_entropy("Is there a star in the image?", CFG) == CFG.h_focused
    assert query_target_entropy("What colour is the circle?", CFG) == CFG.h_focused


def test_fusion_weights_sum_to_one_and_prefer_the_clean_layer():
    maps = np.stack([NOISE, peak(), NOISE[::-1]])
    # a flat spectral reference, so that only the maps (not the depth profile) decide
    f = fuse(maps, 0.6, AnchorConfig(rho_shallow=0.1, rho_deep=0.1))
    assert f.lam.sum() == pytest.approx(1.0)
    assert int(np.argmax(f.lam)) == 1
    assert f.fused.sum() == pytest.approx(1.0)
    # Ā is the λ-weighted sum of the normalised maps
    expected = sum(l * normalize(m) for l, m in zip(f.lam, maps))
    np.testing.assert_allclose(f.fused, expected / expected.sum())
    # c_l is ω · S_l
    c = 0.4 * f.scores["spec"] + 0.3 * f.scores["smooth"] + 0.3 * f.scores["focus"]
    np.testing.assert_allclose(f.scores["fused"], c)


def test_equal_layers_get_equal_weights_and_optional_priors_change_them():
    maps = np.stack([peak()] * 4)
    f = fuse(maps, 0.6, AnchorConfig(rho_shallow=0.5, rho_deep=0.5))
    np.testing.assert_allclose(f.lam, 0.25)
    deep = fuse(maps, 0.6, AnchorConfig(rho_shallow=0.5, rho_deep=0.5, w_depth=1.0))
    assert np.all(np.diff(deep.lam) > 0)


def test_a_map_equal_to_the_bias_is_flattened():
    bias = normalize(peak(cy=0, cx=0, sigma=1.0) + 0.01)
    d, w = debias(bias, bias, eps_s=1e-9)
    np.testing.assert_allclose(w, np.full_like(w, 1 / w.size), rtol=1e-5)
    _, w_default = debias(bias, bias)  # ε_s = mean(B) flattens partly
    assert entropy(w_default) > entropy(bias)
    # the sink is suppressed, a real object elsewhere survives
    obj = normalize(0.5 * bias + 0.5 * normalize(peak(cy=5, cx=5)))
    _, w2 = debias(obj, bias)
    assert w2[5, 5] > w2[0, 0]


def test_noise_images_are_deterministic_and_content_free():
    a, b = noise_images((40, 30), 4, seed=3), noise_images((40, 30), 4, seed=3)
    assert [np.asarray(x).tobytes() for x in a] == [np.asarray(x).tobytes() for x in b]
    assert all(im.size == (40, 30) for im in a)
    assert [np.asarray(x).std() == 0 for x in a] == [False, True, True, True]


def test_bias_cache_keys_keep_the_questions_case():
    """The model reads "Red" and "red" as different tokens: their bias maps are different entries."""
    key = BiasCache.noise_key
    assert key("m", "Is the Red ball left?", (8, 8), CFG, (96, 96)) != key("m", "is the red ball left?", (8, 8), CFG, (96, 96))
    assert key("m", "Is the Red ball left?", (8, 8), CFG, (96, 96)) == key("m", " Is the Red ball left? ", (8, 8), CFG, (96, 96))


def test_bias_cache_round_trip(tmp_path):
    cache = BiasCache(tmp_path)
    key = BiasCache.noise_key("m", "is there a star?", (8, 8), CFG, (96, 96))
    assert key == BiasCache.noise_key("m", "is there a star? ", (8, 8), CFG, (96, 96))
    assert key != BiasCache.noise_key("m", "is there a star?", (8, 9), CFG, (96, 96))
    # the noise images are made at the image's size: another size with the same grid is other pixels
    assert key != BiasCache.noise_key("m", "is there a star?", (8, 8), CFG, (120, 96))
    # fusion settings are applied after the noise maps: not part of the key
    assert key == BiasCache.noise_key("m", "is there a star?", (8, 8), AnchorConfig(temperature=0.5), (96, 96))
    assert cache.get(key) is None
    cache.put(key, peak())
    np.testing.assert_array_equal(cache.get(key), peak())


def test_criteria_over_the_layer_stack_equal_the_per_map_equations():
    """fuse() scores every layer at once; each score is the per-map Eq. 2 / 3 / 5 of that layer,
    constant and one-hot maps and one-row grids included."""
    import numpy as np

    from adapt.anchor import _paper_criteria, focus_score, smoothness_score, spectral_score
    from adapt.config import AnchorConfig

    cfg = AnchorConfig()
    rng = np.random.default_rng(3)
    for shape in [(6, 8, 8), (4, 3, 7), (3, 1, 5), (2, 24, 24)]:
        maps = rng.random(shape).astype(np.float32)
        maps[0] = 0.25  # constant: min-max gives zeros, no spectrum
        maps[-1] = 0.0
        maps[-1, 0, 0] = 1.0  # one-hot: zero entropy
        _, scores = _paper_criteria(maps, 0.7, cfg)
        L = shape[0]
        np.testing.assert_allclose(scores["spec"], [spectral_score(m, l, L, cfg) for l, m in enumerate(maps)], atol=1e-12)
        np.testing.assert_allclose(scores["smooth"], [smoothness_score(m) for m in maps], atol=1e-12)
        np.testing.assert_allclose(scores["focus"], [focus_score(m, 0.7) for m in maps], atol=1e-12)


def test_noise_maps_are_cached_per_image_size(tmp_path):
    """Two images of one grid but other sizes make other noise images: the second is computed, not
    served the first one's maps; the same size again is a cache hit with the same maps."""
    from PIL import Image

    from adapt.anchor.build import noise_layer_maps
    from adapt.backbones import load_backbone
    from adapt.config import AdaptConfig

    bb = load_backbone("embedded")
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": 2})
    cache = BiasCache(tmp_path)
    q = "describe the image"
    grid = bb.prepare(Image.new("RGB", (96, 96)), q).span.grid
    assert bb.prepare(Image.new("RGB", (150, 96)), q).span.grid == grid
    square, hit = noise_layer_maps(bb, q, (96, 96), grid, cfg, cache)
    assert not hit
    wide, hit = noise_layer_maps(bb, q, (150, 96), grid, cfg, cache)
    assert not hit and not np.array_equal(square, wide)
    again, hit = noise_layer_maps(bb, q, (96, 96), grid, cfg, cache)
    assert hit and np.array_equal(again, square)
