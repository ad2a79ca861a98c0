"""Tiny real-architecture models with random weights, built offline (tests and benchmarks).

Nothing here downloads: tokenizers are built with the ``tokenizers`` library, processors from
their PIL image-processor classes, models from configs.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from .hooks import ATTN_IMPL, register

_WORDS = ("a an the is there in this image picture describe what colour color of on left right top bottom "
          "center red green blue yellow circle square star triangle yes no . , ? one two three and with").split()

LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<image>{{ '\n' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %} "
    "{% else %}ASSISTANT: {% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}{{ '\n' }}"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}<|im_end|>{{ '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant{{ '\n' }}{% endif %}"
)


def word_tokenizer(specials: list[str], extra_words: int = 0) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over a small fixed vocabulary plus ``specials``."""
    words = list(_WORDS) + [f"w{i}" for i in range(extra_words)]
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<s>", "</s>", "<pad>"] + specials + words)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", extra_special_tokens=specials)


def tiny_llava(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, image_size: int = 32,
               patch: int = 8, vision_hidden: int = 32, vision_layers: int = 1, intermediate: int | None = None,
               vision_intermediate: int | None = None, vision_heads: int = 2, vocab_words: int = 200,
               attn: str = ATTN_IMPL, seed: int = 0, dtype=torch.float32, device: str | torch.device = "cpu"):
    """A random LLaVA (CLIP vision tower + Llama decoder, GQA) and its offline processor.

    ``device`` is where the weights are initialised (a 7B-shaped model is built directly on a GPU)."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, LlamaConfig, LlavaConfig, \
        LlavaForConditionalGeneration, LlavaProcessor

    register()
    tokenizer = word_tokenizer(["<image>"], extra_words=max(0, vocab_words - len(_WORDS)))
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=vision_intermediate or vision_hidden * 2,
                              num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=image_size,
                              patch_size=patch, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden,
                       intermediate_size=intermediate or hidden * 2, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_id=image_token_id,
                         vision_feature_select_strategy="default", vision_feature_layer=-1,
                         projector_hidden_act="gelu")
    torch.manual_seed(seed)
    with torch.device(device):
        model = LlavaForConditionalGeneration._from_config(
            config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    image_processor = CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                            crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=LLAVA_TEMPLATE)
    return model, processor


def tiny_qwen2_5_vl(hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2, patch: int = 14,
                    merge: int = 2, pixels: int = 56 * 84, attn: str = ATTN_IMPL, seed: int = 0,
                    dtype=torch.float32, device: str | torch.device = "cpu"):
    """A random Qwen2.5-VL with a rectangular dynamic grid, and its offline image-only processor."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessorPil

    from .backbones.qwen2_5_vl import ImageOnlyQwen2_5_VLProcessor

    register()
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
                "<|video_pad|>"]
    tokenizer = word_tokenizer(specials, extra_words=max(0, 200 - len(_WORDS)))
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    head_dim = hidden // heads
    quarter = head_dim // 2 // 4
    mrope = [head_dim // 2 - 2 * quarter - quarter, quarter * 2, quarter]
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=hidden * 2,
                num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=ids["<|im_end|>"], pad_token_id=tokenizer.pad_token_id,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope})
    vision = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden,
                  patch_size=patch, spatial_merge_size=merge, temporal_patch_size=2, fullatt_block_indexes=[0],
                  window_size=patch * merge * 2)
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
                              video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(
            config, attn_implementation={"text_config": attn, "vision_config": "sdpa"}, dtype=dtype).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=merge, temporal_patch_size=2,
                                               size={"shortest_edge": pixels, "longest_edge": pixels})
    processor = ImageOnlyQwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                             chat_template=QWEN_TEMPLATE)
    return model, processor
