"""What a researcher needs to know about each registered family, in one place (the unsupported-family
message, a ``models`` listing and docs/families.md read it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FamilyInfo:
    """One registered family: how a user knows it, its transformers classes, how its image is laid out,
    which decoder layers are captured, example hub ids and what was never run on real weights."""

    name: str
    model_class: str
    processor: str
    layout: str
    capturable: str
    hub_ids: tuple[str, ...]
    untested: str
    # what the hooks and the app draw: "one grid" (one contiguous row-major run of image tokens) or
    # "views" (several named grids over one flat run: adapt.hooks.Views; docs/families.md, "Views")
    layout_kind: str = "one grid"


_QWEN_LAYOUT = "one grid per image: image_grid_thw / merge, row-major, smart_resize (no crop, no pad)"
_NO_REAL = "no real checkpoint was run (tiny random configs only)"

CATALOG: dict[str, FamilyInfo] = {
    "llava": FamilyInfo(
        "LLaVA-1.5", "LlavaForConditionalGeneration", "LlavaProcessor",
        "one square grid, (image_size / patch)², CLIP resize + centre crop (or pad to square)", "all (full attention)",
        ("llava-hf/llava-1.5-7b-hf", "llava-hf/llava-1.5-13b-hf"),
        "7B / 13B never run (the paper-table commands are written, not run); the embedded model is this class"),
    "llava_next": FamilyInfo(
        "LLaVA-NeXT (LLaVA-1.6)", "LlavaNextForConditionalGeneration", "LlavaNextProcessor",
        "two views: base (image_size / patch)², the image stretched; hires: the anyres tiles' grid un-padded "
        "(unpad_image), each row ending in an image_newline key (stride w + 1)", "all (full attention)",
        ("llava-hf/llava-v1.6-mistral-7b-hf", "llava-hf/llava-v1.6-vicuna-7b-hf"), _NO_REAL, layout_kind="views"),
    "llava_onevision": FamilyInfo(
        "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration",
        "LlavaOnevisionProcessor (image-only without torchvision)",
        "as LLaVA-NeXT with a SigLIP tower (27×27 base at 384 px); anyres_max_9: the hires grid bilinearly "
        "down-sampled when it holds more than 9 base grids' cells", "all (full attention)",
        ("llava-hf/llava-onevision-qwen2-0.5b-ov-hf", "llava-hf/llava-onevision-qwen2-7b-ov-hf"), _NO_REAL,
        layout_kind="views"),
    "qwen2_vl": FamilyInfo(
        "Qwen2-VL", "Qwen2VLForConditionalGeneration", "Qwen2VLProcessor (image-only without torchvision)",
        _QWEN_LAYOUT + "; patch 14 × merge 2", "all (full attention; sliding-window configs refused)",
        ("Qwen/Qwen2-VL-2B-Instruct", "Qwen/Qwen2-VL-7B-Instruct"), _NO_REAL),
    "qwen2_5_vl": FamilyInfo(
        "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLProcessor (image-only without torchvision)",
        _QWEN_LAYOUT + "; patch 14 × merge 2", "all (full attention)",
        ("Qwen/Qwen2.5-VL-3B-Instruct", "Qwen/Qwen2.5-VL-7B-Instruct"), _NO_REAL),
    "qwen3_vl": FamilyInfo(
        "Qwen3-VL", "Qwen3VLForConditionalGeneration", "Qwen3VLProcessor (image-only without torchvision)",
        _QWEN_LAYOUT + "; patch 16 × merge 2; DeepStack adds vision maps at the image positions after layers 0…k−1",
        "all (full attention); layers 1…k hold DeepStack-injected image keys",
        ("Qwen/Qwen3-VL-2B-Instruct", "Qwen/Qwen3-VL-4B-Instruct", "Qwen/Qwen3-VL-8B-Instruct"), _NO_REAL),
    "qwen3_vl_moe": FamilyInfo(
        "Qwen3-VL-MoE", "Qwen3VLMoeForConditionalGeneration", "Qwen3VLProcessor (image-only without torchvision)",
        "as Qwen3-VL", "all (full attention); DeepStack as Qwen3-VL", ("Qwen/Qwen3-VL-30B-A3B-Instruct",), _NO_REAL),
    "paligemma": FamilyInfo(
        "PaliGemma (Gemma 1)", "PaliGemmaForConditionalGeneration", "PaliGemmaProcessor (no chat template)",
        "one square grid, (image_size / patch)², image stretched to size; prefix-LM (bidirectional prompt)",
        "all (full attention); PaliGemma 2 (Gemma 2 softcap) refused",
        ("google/paligemma-3b-mix-224", "google/paligemma-3b-pt-224"), _NO_REAL),
    "idefics3": FamilyInfo(
        "Idefics3 / SmolVLM", "Idefics3ForConditionalGeneration", "Idefics3Processor",
        "the checkpoint's do_image_splitting (the hub's: on): views tile r,c (the image resized up to whole "
        "max_image_size tiles, cut row-major, each after its <row_i_col_j> token) and global (the image stretched "
        "to one tile); image_splitting=off (DIR?image_splitting=off): the global view alone, one square grid; "
        "scale_factor² patches per token", "all (full attention)",
        ("HuggingFaceTB/SmolVLM-256M-Instruct", "HuggingFaceTB/SmolVLM-Instruct", "HuggingFaceM4/Idefics3-8B-Llama3"),
        _NO_REAL + "; SmolVLM2 (smolvlm) is not registered", layout_kind="views"),
    "gemma3": FamilyInfo(
        "Gemma 3", "Gemma3ForConditionalGeneration", "Gemma3Processor",
        "one square grid, mm_tokens_per_image (16×16), image stretched to size; pan_and_scan=on (or the "
        "checkpoint's do_pan_and_scan; the hub's: null, off): views base and crop i (the image cut along its long "
        "side, each crop stretched to size); the image block attends bidirectionally in the prefill",
        "all; sliding-window layers (5 of 6) not steerable once the image leaves their window (reported per "
        "layer), and left out of the anchor when that happens within its K steps",
        ("google/gemma-3-4b-it", "google/gemma-3-12b-it", "google/gemma-3-27b-it"),
        _NO_REAL + "; OPERA refused", layout_kind="views"),
    "qwen3_5": FamilyInfo(
        "Qwen3.5", "Qwen3_5ForConditionalGeneration", "Qwen3VLProcessor (image-only without torchvision)",
        "as Qwen3-VL (patch 16 × merge 2)", "full-attention layers only (1 of 4); linear-attention "
        "(gated delta-net) layers not captured (reported)", ("Qwen/Qwen3.5-27B",), _NO_REAL),
    "internvl": FamilyInfo(
        "InternVL (HF-native -hf checkpoints)", "InternVLForConditionalGeneration",
        "InternVLProcessor (image-only without torchvision)",
        "one view per tile (tile r,c: the image stretched to cols×rows tiles of size, cut row-major) and a "
        "thumbnail (the image stretched to one tile); ((size / patch) · downsample_ratio)² tokens each after "
        "the pixel shuffle; one tile alone is one grid", "all (full attention)",
        ("OpenGVLab/InternVL3-1B-hf", "OpenGVLab/InternVL3-8B-hf", "OpenGVLab/InternVL3_5-8B-HF"), _NO_REAL,
        layout_kind="views"),
    "mllama": FamilyInfo(
        "Mllama (Llama 3.2 Vision)", "MllamaForConditionalGeneration", "MllamaProcessor",
        "one view per real tile (tile r,c: (image_size / patch)² patch keys of the cross-attention keys; each "
        "tile's class token and the padded tiles outside the layout); resize to fit the tile canvas, pad "
        "bottom / right", "the cross-attention layers only (the image is their keys); the self-attention "
        "layers (one <|image|> token) not captured (reported)",
        ("meta-llama/Llama-3.2-11B-Vision-Instruct",), _NO_REAL + "; OPERA and PAI's text-only branch refused",
        layout_kind="views"),
}
