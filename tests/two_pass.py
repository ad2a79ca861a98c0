"""ADAPT-TF as the paper describes it, in two decodings (test-only reference): a K-token anchor run on the
original image, then decoding again with ASI on. The registered one-pass method must give the same tokens."""

from adapt.config import parse_layers
from adapt.enhance import enhance
from adapt.anchor.build import probe_anchor
from adapt.steering import ASIPolicy, steering_weights


def two_pass(backbone, image, question, cfg, cache=None):
    """Returns ``(generation, policy)`` of the steered second decoding."""
    anchor, grid = probe_anchor(backbone, image, question, cfg, cache)
    if cfg.enhance.enabled:
        image = enhance(image, anchor.anchor, cfg.enhance, geometry=backbone.layout_geometry(image.size, grid))
    prepared = backbone.prepare(image, question)
    layers = parse_layers(cfg.asi.layers, backbone.num_layers, anchor.fusion.lam)
    policy = ASIPolicy(backbone.num_layers, layers, cfg.asi, cfg.anchor.k, weights=steering_weights(anchor.anchor))
    return backbone.generate(prepared, max_new_tokens=cfg.max_new_tokens, policy=policy), policy


def assert_one_pass_equals_two_pass(backbone, image, question, cache, n: int = 8, k: int = 3):
    """The registered one-pass ADAPT-TF (steering every layer at every step after K) gives the two-pass
    reference's tokens and maps; returns ``(one, two, cfg)`` for what a caller checks beside."""
    import numpy as np

    from adapt.config import AdaptConfig
    from adapt.methods import AdaptTF

    cfg = AdaptConfig().replace(**{"asi.trigger": "always", "asi.layers": "all", "anchor.num_noise": 2,
                                   "anchor.k": k, "max_new_tokens": n})
    one = AdaptTF(cfg, cache, lean=False).answer(backbone, image, question, n, min_new_tokens=n)
    two, _ = two_pass(backbone, image, question, cfg, cache)
    m = len(two.token_ids)
    assert m > k and one.token_ids[:m] == two.token_ids
    np.testing.assert_allclose(one.generation.maps[:m].numpy(), two.maps[:m].numpy(), atol=1e-6, rtol=1e-5)
    return one, two, cfg
