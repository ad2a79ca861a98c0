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
