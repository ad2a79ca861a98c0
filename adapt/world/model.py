"""The embedded model: a small LLaVA (CLIP-style vision tower, projector, Llama decoder with GQA),
a word-level tokenizer over the world's vocabulary, and a LLaVA processor that loads offline
without torchvision."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from .language import vocabulary
from .scenes import IMAGE_SIZE

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]

def chat_template(question_first: bool = False) -> str:
    """``<s>user: <image> question assistant: answer</s>`` (LLaVA's order), or with the question
    before the image, so that image tokens can already read the question in the decoder."""
    image = ("{% for item in message['content'] %}{% if item['type'] == 'image' %}{{ '<image> ' }}{% endif %}"
             "{% endfor %}")
    text = ("{% for item in message['content'] %}{% if item['type'] == 'text' %}{{ item['text'] ~ ' ' }}"
            "{% endif %}{% endfor %}")
    user = (text + image) if question_first else (image + text)
    return (
        "{{ bos_token }}"
        "{% for message in messages %}"
        "{% if message['role'] == 'user' %}"
        "{{ 'user: ' }}"
        "{% if message['content'] is string %}{{ message['content'] ~ ' ' }}"
        "{% else %}" + user + "{% endif %}"
        "{% else %}"
        "{{ 'assistant: ' }}"
        "{% if message['content'] is string %}{{ message['content'] }}"
        "{% else %}{% for item in message['content'] %}"
        "{% if item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
        "{% endfor %}{% endif %}"
        "{{ eos_token }}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}"
    )


CHAT_TEMPLATE = chat_template()


@dataclass
class ModelSpec:
    image_size: int = IMAGE_SIZE
    patch_size: int = 12  # 96 / 12 -> 8x8 image tokens
    vision_hidden: int = 192
    vision_layers: int = 3
    vision_heads: int = 4
    vision_mlp: int = 768
    text_hidden: int = 128
    text_layers: int = 6
    text_heads: int = 4
    text_kv_heads: int = 2
    text_mlp: int = 384
    max_positions: int = 320
    question_first: bool = False  # chat template order (see chat_template)

    def to_dict(self) -> dict:
        return asdict(self)


def build_tokenizer(spec: ModelSpec = ModelSpec()):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for w in vocabulary():
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=["<image>"],
        model_max_length=320,
        padding_side="left",
    )
    fast.chat_template = chat_template(spec.question_first)
    return fast


def build_processor(tokenizer, spec: ModelSpec = ModelSpec()):
    from transformers import CLIPImageProcessorPil, LlavaProcessor

    ip = CLIPImageProcessorPil(
        size={"shortest_edge": spec.image_size},
        crop_size={"height": spec.image_size, "width": spec.image_size},
        do_center_crop=True,
        do_convert_rgb=True,
    )
    return LlavaProcessor(
        image_processor=ip,
        tokenizer=tokenizer,
        patch_size=spec.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template(spec.question_first),
    )


def build_config(tokenizer, spec: ModelSpec = ModelSpec()):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=spec.vision_hidden,
        intermediate_size=spec.vision_mlp,
        num_hidden_layers=spec.vision_layers,
        num_attention_heads=spec.vision_heads,
        image_size=spec.image_size,
        patch_size=spec.patch_size,
        projection_dim=spec.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.text_hidden,
        intermediate_size=spec.text_mlp,
        num_hidden_layers=spec.text_layers,
        num_attention_heads=spec.text_heads,
        num_key_value_heads=spec.text_kv_heads,
        max_position_embeddings=spec.max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    grid = spec.image_size // spec.patch_size
    cfg = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        image_seq_length=grid * grid,
        tie_word_embeddings=True,
    )
    cfg.pad_token_id = tokenizer.pad_token_id
    return cfg


def build_model(tokenizer, spec: ModelSpec = ModelSpec(), seed: int = 0):
    import torch
    from transformers import LlavaForConditionalGeneration

    torch.manual_seed(seed)
    cfg = build_config(tokenizer, spec)
    model = LlavaForConditionalGeneration(cfg)
    gc = model.generation_config
    gc.pad_token_id = tokenizer.pad_token_id
    gc.eos_token_id = tokenizer.eos_token_id
    gc.bos_token_id = tokenizer.bos_token_id
    gc.do_sample = False
    gc.max_new_tokens = 128
    return model


def load(path: str = "assets/embedded", dtype=None):
    """Load (model, processor) from a saved directory (offline)."""
    import torch
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    model.eval()
    processor = AutoProcessor.from_pretrained(path)
    return model, processor
