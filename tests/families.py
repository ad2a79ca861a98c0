"""Tiny random checkpoints of each model family, saved to disk like a hub checkpoint (test-only).

Each builder makes a random model of the family's real class and its real processor configured
locally (a word-level tokenizer with the family's special tokens and chat template, the family's
image-processor class with a small pixel budget), writes them to a folder laid out as the family's hub
checkpoints are (the stock processor's class name, the image processor's hub type name and budget keys,
a ``video_preprocessor_config.json``), and nothing is downloaded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adapt.hooks import ATTN_IMPL, register
from adapt.testing import QWEN_TEMPLATE, word_tokenizer

QWEN_SPECIALS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


@dataclass(frozen=True)
class Family:
    """How to build one Qwen-VL family's tiny checkpoint, and what its hub folder calls its classes."""

    patch: int
    processor_class: str  # the stock processor's class name, as the hub's processor_config.json has it
    image_processor_type: str  # as the hub's preprocessor_config.json names it
    video_processor: str  # the stock video processor's class (a video_preprocessor_config.json names it)
    pixel_keys: bool = False  # the budget as min_pixels / max_pixels (older hub configs) instead of size
    nested: bool = False  # one processor_config.json holding image and video processor (newer hub folders)


QWEN_FAMILIES = {
    "qwen2_vl": Family(14, "Qwen2VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor", True),
    "qwen2_5_vl": Family(14, "Qwen2_5_VLProcessor", "Qwen2VLImageProcessor", "Qwen2VLVideoProcessor"),
    "qwen3_vl": Family(16, "Qwen3VLProcessor", "Qwen2VLImageProcessorFast", "Qwen3VLVideoProcessor"),
    "qwen3_vl_moe": Family(16, "Qwen3VLProcessor", "Qwen2VLImageProcessor", "Qwen3VLVideoProcessor", nested=True),
    "qwen3_5": Family(16, "Qwen3VLProcessor", "Qwen2VLImageProcessorFast", "Qwen3VLVideoProcessor", nested=True),
}


def _qwen_configs(model_type: str, tokenizer, ids: dict, hidden: int, layers: int, heads: int, kv_heads: int,
                  patch: int, merge: int):
    head_dim = hidden // heads
    # the three rope sections (t, h, w) must sum to head_dim / 2
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 2 * quarter - quarter, quarter * 2, quarter]
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                pad_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope})
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if model_type == "qwen2_vl":
        from transformers import Qwen2VLConfig

        vision = dict(depth=1, embed_dim=32, hidden_size=hidden, mlp_ratio=2, num_heads=2, patch_size=patch,
                      spatial_merge_size=merge, temporal_patch_size=2)
        return Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
    if model_type == "qwen2_5_vl":
        from transformers import Qwen2_5_VLConfig

        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, fullatt_block_indexes=[0],
                      window_size=patch * merge * 2)
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
    if model_type in ("qwen3_vl", "qwen3_vl_moe"):
        from transformers import Qwen3VLConfig, Qwen3VLMoeConfig

        text["head_dim"] = head_dim
        # DeepStack: vision blocks 0 and 1 each give a map, added after decoder layers 0 and 1
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, num_position_embeddings=16,
                      deepstack_visual_indexes=[0, 1])
        if model_type == "qwen3_vl":
            return Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        text.update(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=hidden, decoder_sparse_step=1)
        return Qwen3VLMoeConfig(text_config=text, vision_config=vision, **tokens)
    if model_type == "qwen3_5":
        from transformers import Qwen3_5Config

        # a linear-attention (gated delta-net) layer, then a full-attention one, repeated
        text.update(head_dim=head_dim, layer_types=["linear_attention", "full_attention"] * (layers // 2),
                    linear_key_head_dim=16, linear_value_head_dim=16, linear_num_key_heads=2,
                    linear_num_value_heads=4, linear_conv_kernel_dim=4)
        text["rope_parameters"] = dict(text["rope_parameters"], partial_rotary_factor=1.0, mrope_interleaved=True)
        vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                      patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, num_position_embeddings=16)
        return Qwen3_5Config(text_config=text, vision_config=vision, **tokens)
    raise ValueError(model_type)


def tiny_qwen_vl(model_type: str, hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 merge: int = 2, pixels: int | None = None, attn: str = ATTN_IMPL, seed: int = 0,
                 dtype=torch.float32):
    """A random Qwen-VL model of ``model_type`` (qwen2_vl, qwen2_5_vl, qwen3_vl, qwen3_vl_moe) and its image-only
    processor. The pixel budget defaults to 6 merged tokens' area (a 56 × 84 image at patch 14)."""
    from transformers import Qwen2VLImageProcessorPil

    from adapt.backbones import FAMILIES

    register()
    fam = QWEN_FAMILIES[model_type]
    tokenizer = word_tokenizer(QWEN_SPECIALS, extra_words=160)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in QWEN_SPECIALS}
    config = _qwen_configs(model_type, tokenizer, ids, hidden, layers, heads, kv_heads, fam.patch, merge)
    backbone = FAMILIES[model_type]
    torch.manual_seed(seed)
    model = backbone.model_class()._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    pixels = pixels or 6 * (fam.patch * merge) ** 2
    image_processor = Qwen2VLImageProcessorPil(patch_size=fam.patch, merge_size=merge, temporal_patch_size=2,
                                               size={"shortest_edge": pixels, "longest_edge": pixels})
    processor = backbone.image_only_processor(image_processor=image_processor, tokenizer=tokenizer,
                                              chat_template=QWEN_TEMPLATE)
    return model, processor


def qwen_checkpoint(model_type: str, path, **kw) -> str:
    """A tiny ``model_type`` checkpoint folder at ``path`` (built once per path)."""
    path = Path(path)
    if not (path / "config.json").exists():
        fam = QWEN_FAMILIES[model_type]
        save_like_hub(*tiny_qwen_vl(model_type, **kw), path, fam.processor_class, fam.image_processor_type,
                      fam.video_processor, fam.pixel_keys, fam.nested)
    return str(path)


def gemma_tokenizer(extra_words: int = 160, named: dict[str, str | None] | None = None):
    """A word-level tokenizer in Gemma's order: ``<pad>`` 0 (a real id, as in Gemma), ``<eos>`` 1,
    ``<bos>`` 2, ``<unk>`` 3, then ``named`` special tokens (token → the tokenizer attribute naming it,
    e.g. Gemma 3's ``boi_token``, or None), then the words (PaliGemma's processor adds ``<image>`` and its
    location and segmentation tokens itself)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from adapt.testing import _WORDS

    words = list(_WORDS) + [f"w{i}" for i in range(extra_words)]
    named = named or {}
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<eos>", "<bos>", "<unk>"] + list(named) + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    extra = {attr: t for t, attr in named.items() if attr}
    out = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
                                  pad_token="<pad>", **({"extra_special_tokens": extra} if extra else {}))
    out.add_tokens([t for t, attr in named.items() if not attr], special_tokens=True)  # whole, never split
    return out


def tiny_paligemma(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 1, image_size: int = 28,
                   patch: int = 7, attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32, text_model: str = "gemma"):
    """A random PaliGemma (SigLIP tower + Gemma decoder, ``(image_size / patch)²`` image tokens) and its
    processor. ``text_model="gemma2"`` builds PaliGemma 2's decoder (refused by the backbone)."""
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor, \
        SiglipImageProcessorPil

    register()
    tokenizer = gemma_tokenizer()
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size},
                                              image_seq_length=(image_size // patch) ** 2)
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)  # adds <image>, <loc…>
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=patch, vision_use_head=False)
    text = dict(model_type=text_model, vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                head_dim=hidden // heads, max_position_embeddings=4096, pad_token_id=0, eos_token_id=1,
                bos_token_id=2, initializer_range=0.2)  # at 0.02 the tied, √d-scaled embeddings repeat one token
    config = PaliGemmaConfig(vision_config=vision, text_config=text, image_token_index=processor.image_token_id,
                             projection_dim=hidden, hidden_size=hidden, vocab_size=len(tokenizer))
    torch.manual_seed(seed)
    model = PaliGemmaForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = None  # as a hub config without one: the backbone fills it in
    model.generation_config.eos_token_id = 1
    return model, processor


def paligemma_checkpoint(path, **kw) -> str:
    """A tiny PaliGemma checkpoint folder at ``path`` (built once per path), laid out as the hub's."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_paligemma(**kw), path, "PaliGemmaProcessor", "SiglipImageProcessor")
    return str(path)


IDEFICS3_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>"
    "{% elif item['type'] == 'text' %} {{ item['text'] }}{% endif %}{% endfor %}<end_of_utterance>{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


def tiny_idefics3(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, image_size: int = 32,
                  patch: int = 4, scale_factor: int = 2, attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32):
    """A random Idefics3 (SmolVLM v1's class: SigLIP-like tower, pixel-shuffle connector, Llama decoder) and
    its processor as the hub ships it (image splitting on: the backbone turns it off); one view is
    ((image_size / patch) / scale_factor)² tokens."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessorPil, \
        Idefics3Processor

    register()
    specials = ["<|im_start|>", "<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>"]
    specials += [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    tokenizer = word_tokenizer(specials, extra_words=160)
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    n = (image_size // patch // scale_factor) ** 2
    image_processor = Idefics3ImageProcessorPil(size={"longest_edge": 2 * image_size},
                                                max_image_size={"longest_edge": image_size}, do_image_splitting=True)
    processor = Idefics3Processor(image_processor=image_processor, tokenizer=tokenizer, image_seq_len=n,
                                  chat_template=IDEFICS3_TEMPLATE)
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=image_size, patch_size=patch)
    text = dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=ids["<end_of_utterance>"], pad_token_id=tokenizer.pad_token_id)
    config = Idefics3Config(vision_config=vision, text_config=text, scale_factor=scale_factor,
                            image_token_id=ids["<image>"])
    torch.manual_seed(seed)
    model = Idefics3ForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<end_of_utterance>"]
    return model, processor


def idefics3_checkpoint(path, **kw) -> str:
    """A tiny Idefics3 checkpoint folder at ``path`` (built once per path), laid out as the hub's."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_idefics3(**kw), path, "Idefics3Processor", "Idefics3ImageProcessor")
    return str(path)


GEMMA3_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}{{ '\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<start_of_image>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<end_of_turn>{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model{{ '\n' }}{% endif %}"
)
GEMMA3_SPECIALS = {"<start_of_turn>": None, "<end_of_turn>": None, "<start_of_image>": "boi_token",
                   "<end_of_image>": "eoi_token", "<image_soft_token>": "image_token"}


def tiny_gemma3(hidden: int = 64, layers: int = 3, heads: int = 4, kv_heads: int = 2, image_size: int = 32,
                patch: int = 4, tokens_per_side: int = 4, sliding_window: int = 32,
                layer_types: tuple[str, ...] | None = None, attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32,
                pan_and_scan: bool = False):
    """A random Gemma 3 (SigLIP tower pooled to ``tokens_per_side``² image tokens, a Gemma 3 decoder of
    sliding-window and global layers: by default two local layers, then a global one) and its processor
    with the PIL image processor; ``sliding_window`` small enough that the image leaves the local layers'
    window after a few decoding steps. ``pan_and_scan``: the image processor's config turns it on, with
    crops of at least 8 px (a hub config's would be 256: these images are tiny)."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3ImageProcessorPil, Gemma3Processor

    register()
    tokenizer = gemma_tokenizer(named=GEMMA3_SPECIALS)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in GEMMA3_SPECIALS}
    layer_types = list(layer_types or ["sliding_attention", "sliding_attention", "full_attention"][:layers])
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=image_size, patch_size=patch, vision_use_head=False)
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
                query_pre_attn_scalar=hidden // heads, sliding_window=sliding_window, layer_types=layer_types,
                max_position_embeddings=4096, pad_token_id=0, eos_token_id=ids["<end_of_turn>"], bos_token_id=2,
                initializer_range=0.2)  # at 0.02 the √d-scaled tied embeddings repeat one token
    config = Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=tokens_per_side ** 2,
                          boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
                          image_token_index=ids["<image_soft_token>"])
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = None  # as a hub config without one: the backbone takes the tokenizer's 0
    model.generation_config.eos_token_id = ids["<end_of_turn>"]
    crops = dict(do_pan_and_scan=True, pan_and_scan_min_crop_size=8, pan_and_scan_max_num_crops=4,
                 pan_and_scan_min_ratio_to_activate=1.2) if pan_and_scan else {}
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size}, **crops)
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=GEMMA3_TEMPLATE,
                                image_seq_length=tokens_per_side ** 2)
    return model, processor


def gemma3_checkpoint(path, **kw) -> str:
    """A tiny Gemma 3 checkpoint folder at ``path`` (built once per path), laid out as the hub's."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_gemma3(**kw), path, "Gemma3Processor", "Gemma3ImageProcessor")
    return str(path)


def save_like_hub(model, processor, path, processor_class: str, image_processor_type: str,
                  video_processor: str | None = None, pixel_keys: bool = False, nested: bool = False) -> str:
    """Save ``model`` and ``processor`` to ``path`` as hub folders lay them out: the stock processor's class
    name (for Qwen-VL one that needs torchvision to load here), the image processor under its hub type name
    (with ``pixel_keys``, its budget as ``min_pixels`` / ``max_pixels``) in its own
    ``preprocessor_config.json``, and a ``video_preprocessor_config.json`` naming ``video_processor``; with
    ``nested`` both stay inside ``processor_config.json`` (the layout transformers 5 saves)."""
    path = Path(path)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    for f in path.glob("*.json"):
        data = json.loads(f.read_text())
        if isinstance(data, dict) and "processor_class" in data:
            data["processor_class"] = processor_class
            f.write_text(json.dumps(data, indent=2))
    top = json.loads((path / "processor_config.json").read_text())
    image = top.pop("image_processor")
    image.update(image_processor_type=image_processor_type, processor_class=processor_class)
    if pixel_keys:
        size = image.pop("size")
        image.update(min_pixels=size["shortest_edge"], max_pixels=size["longest_edge"])
    video = {k: image[k] for k in ("patch_size", "merge_size", "temporal_patch_size") if k in image}
    video.update(video_processor_type=video_processor, processor_class=processor_class)
    if nested:
        top.update(image_processor=image, **({"video_processor": video} if video_processor else {}))
    else:
        (path / "preprocessor_config.json").write_text(json.dumps(image, indent=2))
        if video_processor:
            (path / "video_preprocessor_config.json").write_text(json.dumps(video, indent=2))
    (path / "processor_config.json").write_text(json.dumps(top, indent=2))
    return str(path)


def _grey(size: tuple[int, int], block: tuple[int, int, int] | None = None):
    """A mid-grey ``size`` image, with a white square ``block`` = (x0, y0, side) painted on it."""
    a = np.full((size[1], size[0], 3), 128, dtype=np.uint8)
    if block is not None:
        x0, y0, s = block
        a[y0:y0 + s, x0:x0 + s] = 255
    return Image.fromarray(a)


def token_hits(image_processor, size: tuple[int, int], block: tuple[int, int, int]):
    """Per image token of a Qwen-VL input (after the merge), how much a white square ``block`` = (x0, y0,
    side) painted on a grey ``size`` image changed its pixels, ``[h, w]`` from the processor's own output."""
    out = [image_processor(images=[_grey(size, b)], return_tensors="np") for b in (None, block)]
    _, gh, gw = (int(x) for x in out[0]["image_grid_thw"][0])
    m = image_processor.merge_size
    # patches come in merge windows: m² consecutive patch rows make one token, tokens row-major
    d = np.abs(out[1]["pixel_values"] - out[0]["pixel_values"]).sum(1).reshape(-1, m * m).sum(1)
    return d.reshape(gh // m, gw // m)


def patch_hits(image_processor, size: tuple[int, int], block: tuple[int, int, int], patch: int):
    """Per image token of a one-tensor-per-image input (SigLIP / CLIP patches, row-major; ``patch`` is the
    pixels one token covers), how much a white square ``block`` on a grey ``size`` image changed its
    pixels, ``[h, w]``."""
    def canvas(b):  # [3, H, W] of the first image (Idefics3 nests images per row: [B, N, 3, H, W])
        pv = image_processor(images=[_grey(size, b)], return_tensors="np")["pixel_values"]
        return pv.reshape(-1, *pv.shape[-3:])[0]

    plain, painted = canvas(None), canvas(block)
    d = np.abs(painted - plain).sum(0)  # [H, W] of the canvas
    h, w = d.shape[0] // patch, d.shape[1] // patch
    return d[: h * patch, : w * patch].reshape(h, patch, w, patch).sum((1, 3))


def tiny_llava_next(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, image_size: int = 16,
                    patch: int = 4, attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32):
    """A random LLaVA-NeXT (CLIP tower, Llama decoder, ``image_newline``) and its PIL processor: a
    ``(image_size / patch)²`` base grid and anyres tiles of ``image_size`` pixels over pinpoints up to 2×2 tiles
    (a 16-px tower: a 40 × 24 image picks 32 × 16, two tiles side by side)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, LlavaNextForConditionalGeneration, \
        LlavaNextImageProcessorPil, LlavaNextProcessor

    from adapt.testing import LLAVA_TEMPLATE

    register()
    tokenizer = word_tokenizer(["<image>"], extra_words=160)
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                              image_size=s, patch_size=patch, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    config = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                             image_grid_pinpoints=pinpoints, vision_feature_select_strategy="default",
                             vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": s}, crop_size={"height": s, "width": s},
                                                 image_grid_pinpoints=pinpoints)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_TEMPLATE)
    return model, processor


def llava_next_checkpoint(path, **kw) -> str:
    """A tiny LLaVA-NeXT checkpoint folder at ``path`` (built once per path), laid out as llava-hf's."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_llava_next(**kw), path, "LlavaNextProcessor", "LlavaNextImageProcessor")
    return str(path)


def tiny_llava_onevision(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, image_size: int = 16,
                         patch: int = 4, max_grids: int = 1, attn: str = ATTN_IMPL, seed: int = 0,
                         dtype=torch.float32):
    """A random LLaVA-OneVision (SigLIP tower, Qwen2 decoder, ``image_newline``) and its image-only processor;
    ``anyres_max_{max_grids}`` with 1 makes every hi-res grid over 1.1 base grids' cells down-sample (the
    released models use 9 with a 27×27 base)."""
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, \
        LlavaOnevisionImageProcessorPil

    from adapt.backbones.llava_onevision import _image_only_processor
    from adapt.testing import QWEN_TEMPLATE

    register()
    specials = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    tokenizer = word_tokenizer(specials, extra_words=160)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in specials}
    s = image_size
    pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s], [s, 3 * s], [3 * s, s]]
    vision = dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2, image_size=s, patch_size=patch)
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                pad_token_id=tokenizer.pad_token_id)
    aspect = f"anyres_max_{max_grids}"
    config = LlavaOnevisionConfig(vision_config=vision, text_config=text, image_token_id=ids["<image>"],
                                  video_token_id=ids["<video>"], image_grid_pinpoints=pinpoints,
                                  vision_feature_select_strategy="full", vision_feature_layer=-1,
                                  vision_aspect_ratio=aspect)
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": s, "width": s}, image_grid_pinpoints=pinpoints)
    processor = _image_only_processor()(image_processor=image_processor, tokenizer=tokenizer,
                                        num_image_tokens=(s // patch) ** 2, vision_feature_select_strategy="full",
                                        vision_aspect_ratio=aspect,
                                        chat_template=QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>",
                                                                            "<image>"))
    return model, processor


def llava_onevision_checkpoint(path, **kw) -> str:
    """A tiny LLaVA-OneVision checkpoint folder at ``path`` (built once per path), laid out as llava-hf's (the
    stock processor class, which needs torchvision for its video processor)."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_llava_onevision(**kw), path, "LlavaOnevisionProcessor", "LlavaOnevisionImageProcessor",
                      "LlavaOnevisionVideoProcessor")
    return str(path)


INTERNVL_NAMED = {"<|im_start|>": None, "<|im_end|>": None, "<img>": "start_image_token",
                  "</img>": "end_image_token", "<IMG_CONTEXT>": "context_image_token", "<video>": "video_token"}


def tiny_internvl(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, tile: int = 32,
                  patch: int = 4, max_tiles: int = 6, attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32):
    """A random InternVL (InternViT-like tower with a CLS token, pixel shuffle 0.5, Qwen2 decoder) and its
    image-only processor: ``tile``-px tiles (``max_tiles`` at most) plus a thumbnail, each
    ``((tile / patch) / 2)²`` ``<IMG_CONTEXT>`` tokens (the released models: 448 px, 256 tokens)."""
    from transformers import GotOcr2ImageProcessorPil, InternVLConfig, InternVLForConditionalGeneration

    from adapt.backbones.internvl import _image_only_processor
    from adapt.testing import QWEN_TEMPLATE

    register()
    tokenizer = gemma_tokenizer(named=INTERNVL_NAMED)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in INTERNVL_NAMED}
    n = (tile // patch // 2) ** 2
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                  image_size=[tile, tile], patch_size=[patch, patch])
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id, eos_token_id=ids["<|im_end|>"],
                pad_token_id=tokenizer.pad_token_id)
    config = InternVLConfig(vision_config=vision, text_config=text, image_token_id=ids["<IMG_CONTEXT>"],
                            image_seq_length=n, downsample_ratio=0.5, vision_feature_select_strategy="default",
                            vision_feature_layer=-1)
    torch.manual_seed(seed)
    model = InternVLForConditionalGeneration._from_config(
        config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    # as the hub folders: crop_to_patches off in the image processor, the processor's call turns it on
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=False,
                                               min_patches=1, max_patches=max_tiles)
    template = QWEN_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<IMG_CONTEXT>\n")
    processor = _image_only_processor()(image_processor=image_processor, tokenizer=tokenizer, image_seq_length=n,
                                        chat_template=template)
    return model, processor


def internvl_checkpoint(path, **kw) -> str:
    """A tiny InternVL checkpoint folder at ``path`` (built once per path), laid out as OpenGVLab's ``-hf``
    folders (the stock processor class, whose video processor needs torchvision)."""
    path = Path(path)
    if not (path / "config.json").exists():
        save_like_hub(*tiny_internvl(**kw), path, "InternVLProcessor", "GotOcr2ImageProcessor",
                      "InternVLVideoProcessor")
    return str(path)


def checkpoint(family: str, path) -> str:
    """A tiny random checkpoint folder of ``family`` (a registered model type other than ``llava``),
    saved like a hub checkpoint: the one place a test finds every family's builder."""
    if family in QWEN_FAMILIES:
        return qwen_checkpoint(family, path)
    builders = {"paligemma": paligemma_checkpoint, "idefics3": idefics3_checkpoint, "gemma3": gemma3_checkpoint,
                "llava_next": llava_next_checkpoint, "llava_onevision": llava_onevision_checkpoint,
                "internvl": internvl_checkpoint,
                "mllama": mllama_checkpoint}
    return builders[family](path)


MLLAMA_TEMPLATE = ("{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|> "
                   "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|image|>{% else %}{{ c['text'] }}"
                   "{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
                   "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|> {% endif %}")


def tiny_mllama(seed: int = 0, max_tiles: int = 2, image_size: int = 16, patch: int = 8):
    """A random Mllama (Llama 3.2 Vision): 4 text layers, of which 1 and 3 cross-attend to the vision states
    (per tile (image_size / patch)² + 1 keys), a 2 + 1 layer vision tower, up to ``max_tiles`` tiles."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaImageProcessorPil, MllamaProcessor

    register()
    specials = ["<|image|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|python_tag|>"]
    tokenizer = word_tokenizer(specials, extra_words=40)
    image_token_id = tokenizer.convert_tokens_to_ids("<|image|>")
    ratios = [[w, h] for w in range(1, max_tiles + 1) for h in range(1, max_tiles + 1) if w * h <= max_tiles]
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=2, image_size=image_size, patch_size=patch, max_num_tiles=max_tiles,
                           vision_output_dim=64, intermediate_layers_indices=[0],
                           supported_aspect_ratios=ratios),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1, 3],
                         max_position_embeddings=512, rope_scaling={"rope_type": "default", "rope_theta": 10000.0},
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id),
        image_token_index=image_token_id)
    torch.manual_seed(seed)
    model = MllamaForConditionalGeneration(config).eval()
    image_processor = MllamaImageProcessorPil(size={"height": image_size, "width": image_size},
                                              max_image_tiles=max_tiles)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=MLLAMA_TEMPLATE)
    return model, processor


def mllama_checkpoint(path, **kw) -> str:
    """A tiny Mllama checkpoint folder at ``path`` (built once per path)."""
    path = Path(path)
    if not (path / "config.json").exists():
        model, processor = tiny_mllama(**kw)
        model.save_pretrained(path)
        processor.save_pretrained(path)
    return str(path)


def eager_attentions(bb, folder, prepared, token_ids):
    """The stock eager model's ``output_attentions`` over the prompt and the generated tokens (no cache:
    every key at its sequence position; a sliding layer's mask zeroes what is out of its window)."""
    ref = type(bb).model_class().from_pretrained(
        folder, dtype=torch.float32, attn_implementation={"text_config": "eager", "vision_config": "sdpa"}).eval()
    new = torch.tensor(token_ids)
    inputs = dict(prepared.inputs, input_ids=torch.cat([prepared.inputs["input_ids"], new], 1),
                  attention_mask=torch.cat([prepared.inputs["attention_mask"], torch.ones_like(new)], 1))
    for key, fill in (("token_type_ids", 0), ("mm_token_type_ids", 0)):
        if key in inputs:
            inputs[key] = torch.cat([inputs[key], torch.full_like(new, fill)], 1)
    with torch.no_grad():
        return ref(**inputs, output_attentions=True).attentions


def noise_image(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """A ``size`` (width, height) image of uniform noise: a random model's maps over it are not flat."""
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype("uint8"))
