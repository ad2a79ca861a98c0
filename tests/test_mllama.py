"""Mllama (Llama 3.2 Vision, cross-attention) on a tiny random checkpoint saved like a hub folder: not
supported yet, refused in one line at load, while its real processor and model class load here (no
torchvision) and show the shapes the cross-attention key map will have to cover (docs/families.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adapt.backbones import FAMILIES, NOT_YET, BackboneError, load_backbone

from families import checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return checkpoint("mllama", tmp_path_factory.mktemp("mllama") / "mllama")


def test_load_refused_in_one_line(folder):
    assert "mllama" in NOT_YET and "mllama" not in FAMILIES
    with pytest.raises(BackboneError) as err:
        load_backbone(folder, dtype=torch.float32)
    msg = str(err.value)
    assert "\n" not in msg and "cross-attention" in msg and "not supported yet" in msg and folder in msg


def test_checkpoint_is_a_real_mllama_with_cross_attention_keys_per_tile(folder):
    """What the key map must cover: the cross-attention layers' keys are every tile's vision states,
    (image_size / patch)² + 1 per tile; the self-attention layers see the prompt, one <|image|> token."""
    from transformers import AutoProcessor, MllamaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(folder)
    model = MllamaForConditionalGeneration.from_pretrained(
        folder, dtype=torch.float32, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
    text_cfg, vision_cfg = model.config.text_config, model.config.vision_config
    per_tile = (vision_cfg.image_size // vision_cfg.patch_size) ** 2 + 1
    wide = Image.fromarray((np.random.default_rng(0).random((12, 30, 3)) * 255).astype("uint8"))
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it"}]}]
    inputs = processor(images=[wide], text=[processor.apply_chat_template(msgs, add_generation_prompt=True)],
                       return_tensors="pt")
    tiles = int(inputs["aspect_ratio_mask"].sum())
    assert tiles == 2  # a 30 × 12 image: two tiles side by side
    assert int((inputs["input_ids"] == model.config.image_token_id).sum()) == 1
    with torch.no_grad():
        att = model(**inputs, output_attentions=True).attentions
    q = inputs["input_ids"].shape[1]
    for layer, a in enumerate(att):
        keys = per_tile * vision_cfg.max_num_tiles if layer in text_cfg.cross_attention_layers else q
        assert a.shape[-2:] == (q, keys)
    cross = att[text_cfg.cross_attention_layers[0]][0, :, -1]
    assert torch.allclose(cross.sum(-1), torch.ones(cross.shape[0])) and bool((cross > 0).all())
    # a square image is one tile: the padded tile's keys are masked for the text after <|image|>
    square = Image.fromarray((np.random.default_rng(1).random((16, 16, 3)) * 255).astype("uint8"))
    inputs = processor(images=[square], text=[processor.apply_chat_template(msgs, add_generation_prompt=True)],
                       return_tensors="pt")
    assert int(inputs["aspect_ratio_mask"].sum()) == 1
    with torch.no_grad():
        cross = model(**inputs, output_attentions=True).attentions[text_cfg.cross_attention_layers[0]][0, :, -1]
    assert bool((cross[:, :per_tile] > 0).all()) and float(cross[:, per_tile:].abs().max()) == 0.0
