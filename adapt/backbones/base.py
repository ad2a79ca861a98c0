"""The one interface every model family implements: load, prepare, locate image tokens, generate."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..prompts import QuestionError, check_context, clean_question, context_limit
from ..hooks import ATTN_IMPL, AttentionRecorder, ImageSpan, SteeringPolicy, register
from ..hooks.keymap import KeyMap
from .geometry import InputGeometry, LayoutGeometry


class BackboneError(ValueError):
    """A model that cannot be loaded or used (unsupported family, bad path, bad input)."""


@dataclass
class Prepared:
    """Model inputs for one (image, question), or a left-padded batch of them, and where the image
    tokens of each row are."""

    inputs: dict  # tensors for model(**inputs) / model.generate(**inputs)
    span: ImageSpan
    question: str  # row 0's
    image_size: tuple[int, int]  # (width, height) of row 0's image
    questions: list[str] = field(default_factory=list)  # every row's (a batch)
    image_sizes: list[tuple[int, int]] = field(default_factory=list)

    def __post_init__(self):
        self.questions = self.questions or [self.question]
        self.image_sizes = self.image_sizes or [self.image_size]

    @property
    def prompt_len(self) -> int:
        return self.inputs["input_ids"].shape[1]

    @property
    def batch_size(self) -> int:
        return self.inputs["input_ids"].shape[0]


@dataclass
class Generation:
    """One greedy answer: new token ids (batch row 0), their text, and what was captured."""

    token_ids: list[int]
    text: str
    tokens: list[str] = field(default_factory=list)  # one decoded piece per token id
    maps: torch.Tensor | None = None  # [steps, layers, n_img] (batch row 0) when captured
    prefill_maps: torch.Tensor | None = None  # [layers, n_img] prompt-after-image attention
    seconds: float = 0.0
    # the key map's report (adapt.hooks.keymap): captured / not-captured layers, sliding layers' first
    # not-steerable step; None for a model of full-attention layers only
    keys: dict | None = None


class Backbone(ABC):
    """A loaded multimodal model of one supported family.

    Subclasses set ``family`` and implement :meth:`_build_inputs` and :meth:`_image_span`.
    """

    family = ""

    def __init__(self, model, processor, name: str):
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.name = name
        # a prompt over the model's context is refused by check_context with the model's limit: the
        # tokenizer's own warning about it ("Token indices sequence length ...") would be a second line
        warned = getattr(self.tokenizer, "deprecation_warnings", None)
        if isinstance(warned, dict):
            warned["sequence-length-is-longer-than-the-specified-maximum"] = True
        gc = self.model.generation_config
        if gc.pad_token_id is None:
            pad = self.tokenizer.pad_token_id  # Gemma's is 0: a real id, not a missing one
            gc.pad_token_id = pad if pad is not None else gc.eos_token_id

    # loading ------------------------------------------------------------------------------
    # a family's load options (name -> what it does), each on / off; None (not given) keeps the checkpoint's own
    # setting. load_backbone takes them as keywords or after the name: ``DIR?image_splitting=off``
    load_options: dict[str, str] = {}

    @classmethod
    def load(cls, path: str, dtype="auto", device: str | None = None, device_map=None,
             trust_remote_code: bool = False, processor=None, **options) -> "Backbone":
        """Load the checkpoint at ``path`` with this family's model class and processor; ``options`` are the
        family's :attr:`load_options` (refused in one line when it has no such option)."""
        unknown = sorted(set(options) - set(cls.load_options))
        if unknown:
            has = ", ".join(cls.load_options) or "none"
            raise BackboneError(f"'{unknown[0]}' is not a load option of {cls.family} checkpoints (its options: {has})")
        register()
        if processor is None:  # first: a family may pick its layout from the processor's settings
            processor = cls.load_processor(path, trust_remote_code=trust_remote_code)
        cls = cls.configure(processor, **options)
        kwargs = dict(
            dtype=dtype,
            attn_implementation={"text_config": ATTN_IMPL, "vision_config": "sdpa"},
            trust_remote_code=trust_remote_code,
        )
        if device_map is not None:
            kwargs["device_map"] = device_map
        model = cls.model_class().from_pretrained(path, **kwargs)
        if device_map is None and device is not None:
            model = model.to(device)
        return cls(model, processor, name=str(path))

    @classmethod
    def configure(cls, processor, **options) -> type["Backbone"]:
        """Apply the load options to the processor and return the class that reads this checkpoint's image
        layout (a family whose layout follows a processor setting, such as Idefics3's image splitting, picks
        here; Gemma 3 sets pan-and-scan on its image processor)."""
        return cls

    @classmethod
    @abstractmethod
    def model_class(cls):
        """The transformers class this family loads with."""

    @classmethod
    def load_processor(cls, path: str, trust_remote_code: bool = False):
        """The checkpoint's own processor; where it cannot be built (the stock processors of several
        families include a video processor that needs torchvision), the family's image-only one."""
        from transformers import AutoProcessor

        fallback = cls.image_only_processor_class()
        try:
            processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        except (ImportError, ValueError, OSError, TypeError):
            if fallback is None:
                raise
            processor = None
        if hasattr(processor, "image_processor"):
            return processor
        if fallback is not None:
            return fallback.from_pretrained(path)
        raise BackboneError(f"{path} has no image processor (processor_config.json / preprocessor_config.json)")

    @classmethod
    def image_only_processor_class(cls):
        """The family's processor class without the video processor, or None where the stock one is needed."""
        return None

    # properties ---------------------------------------------------------------------------
    @property
    def text_config(self):
        return self.model.config.get_text_config()

    @property
    def key_map(self) -> KeyMap:
        """Each decoder layer's kind (full, sliding-window, linear attention), from the text config."""
        km = getattr(self, "_key_map", None)
        if km is None:
            try:
                km = self._key_map = KeyMap.from_config(self.text_config)
            except ValueError as exc:
                raise BackboneError(f"{self.name}: {exc}") from None
        return km

    @property
    def num_layers(self) -> int:
        """Captured decoder layers (every layer but linear-attention ones): the maps' layer axis."""
        return len(self.key_map.captured)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def context_limit(self) -> tuple[int | None, str]:
        """(the most tokens, prompt and answer together, this model reads; where the number comes from)."""
        return context_limit(self.model.config, self.tokenizer)

    def check_context(self, prepared: "Prepared", max_new_tokens: int = 0) -> None:
        """Raise BackboneError when ``prepared``'s prompt plus ``max_new_tokens`` exceed the model's
        context (decoding past the positions it was trained on only repeats words)."""
        limit, source = self.context_limit
        try:
            check_context(prepared.prompt_len, limit, max_new_tokens, prepared.span.positions.shape[1], source)
        except QuestionError as exc:
            raise BackboneError(str(exc)) from None

    @property
    def image_token_id(self) -> int:
        return self.model.config.image_token_id

    # inputs -------------------------------------------------------------------------------
    def prompt(self, question: str) -> str:
        """The model's own chat template around one image and the question."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, add_generation_prompt=True)

    def prepare(self, image: Image.Image, question: str) -> Prepared:
        """Inputs for one (image, question)."""
        return self.prepare_batch([image], [question])

    def prepare_batch(self, images: list[Image.Image], questions: list[str]) -> Prepared:
        """Inputs for several (image, question) pairs, left-padded into one batch. Every row must
        give the same number of image tokens (same grid); :func:`group_by_grid` sorts mixed sizes."""
        if len(images) != len(questions) or not images:
            raise BackboneError("give one question per image (and at least one pair)")
        cleaned = []
        for image, question in zip(images, questions):
            if not isinstance(image, Image.Image):
                raise BackboneError("image must be a PIL image")
            try:  # the model's special tokens in user text would change the prompt's structure
                cleaned.append(clean_question(question, self.processor))
            except QuestionError as exc:
                raise BackboneError(str(exc)) from None
        rgb = [im.convert("RGB") for im in images]
        tok = self.tokenizer
        side, tok.padding_side = tok.padding_side, "left"  # generation appends on the right
        try:
            inputs = self._build_inputs(rgb, cleaned)
        finally:
            tok.padding_side = side
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.model.dtype)
        span = self._image_span(inputs)
        prepared = Prepared(inputs=inputs, span=span, question=cleaned[0], image_size=rgb[0].size,
                            questions=cleaned, image_sizes=[im.size for im in rgb])
        self.check_context(prepared)
        return prepared

    def _build_inputs(self, images: list[Image.Image], questions: list[str]) -> dict:
        return dict(self.processor(images=images, text=[self.prompt(q) for q in questions], return_tensors="pt",
                                   padding=True))

    # grid cells -> original pixels ----------------------------------------------------------------
    def input_geometry(self, image_size: tuple[int, int]) -> InputGeometry:
        """How the processor maps an image of ``image_size`` (width, height) onto the model's input
        canvas. Families override this with their processor's rule; the default is the whole image."""
        return InputGeometry.stretch(image_size)

    def view_geometries(self, image_size: tuple[int, int]) -> dict[str, InputGeometry]:
        """Each view's :class:`InputGeometry` by view name (a one-grid family: ``{"base": input_geometry}``);
        a multi-view family overrides it with each view's own resize / crop / pad."""
        return {"base": self.input_geometry(image_size)}

    def layout_geometry(self, image_size: tuple[int, int], grid) -> InputGeometry | LayoutGeometry:
        """How maps over ``grid`` (``prepared.span.grid``) sit on an image of ``image_size``: the
        :class:`InputGeometry` of a one-grid layout, or a :class:`LayoutGeometry` with every view's."""
        views = getattr(grid, "views", grid)
        if not hasattr(views, "plain") or views.plain:
            return self.input_geometry(image_size)
        geometries = self.view_geometries(image_size)
        return LayoutGeometry(tuple(views), {v.name: geometries[v.name] for v in views})

    def cell_boxes(self, image_size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
        """``[h, w, 4]`` pixel boxes ``(x0, y0, x1, y1)`` in the original image of each image token's grid
        cell (row-major, as the tokens), cut to the image; cells the processor filled with padding are
        empty boxes."""
        return self.input_geometry(image_size).cell_boxes(grid)

    def grid_to_image(self, grid_map, image_size: tuple[int, int], fill: float = float("nan")) -> np.ndarray:
        """A ``[h, w]`` map over the image-token grid drawn at the original size ``[H, W]`` (each pixel
        takes its cell's value); ``fill`` where the processor cropped the pixel away."""
        return self.input_geometry(image_size).to_image(grid_map, fill)

    def grid_key(self, image: Image.Image) -> tuple:
        """What decides the image-token count of ``image`` (LLaVA: nothing; Qwen2.5-VL: its size)."""
        return ()

    @abstractmethod
    def _image_span(self, inputs: dict) -> ImageSpan:
        """Where the image tokens are in ``inputs`` and their grid."""

    def image_block_ids(self) -> list[int]:
        """Token ids of the image block: the image token and any tokens that wrap it in the prompt
        (a text-only branch masks them all; LLaVA has no wrapper)."""
        return [self.image_token_id]

    def image_positions(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[B, n]`` positions of the image tokens, per row (rows must hold the same count)."""
        mask = input_ids == self.image_token_id
        counts = mask.sum(1)
        if counts.min() == 0 or bool((counts != counts[0]).any()):
            raise BackboneError("every row needs the same number of image tokens")
        return mask.nonzero()[:, 1].view(input_ids.shape[0], -1)

    # generation ---------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prepared: Prepared, max_new_tokens: int = 64, policy: SteeringPolicy | None = None,
                 capture: bool = True, per_head: bool = False, capture_prefill: bool = False,
                 **generate_kwargs) -> Generation:
        """Greedy decoding of row 0 (see :meth:`generate_batch` for every row)."""
        return self.generate_batch(prepared, max_new_tokens, policy, capture, per_head, capture_prefill,
                                   **generate_kwargs)[0]

    @torch.inference_mode()
    def generate_batch(self, prepared: Prepared, max_new_tokens: int = 64, policy=None, capture: bool = True,
                       per_head: bool = False, capture_prefill: bool = False, lean: bool = False,
                       **generate_kwargs) -> list[Generation]:
        """Greedy decoding with KV cache, one :class:`Generation` per row; captures (and steers via
        ``policy``, an :class:`~adapt.hooks.Intervention` or a bias callable) image attention.

        A policy with a ``bind(recorder)`` method is given the recorder before decoding starts (the
        one-pass ADAPT-TF policy reads the prefill capture from it). ``lean``: (layer, step) pairs the
        policy does not read (its ``needs``) run as plain SDPA and are not captured, so ``maps``
        holds only the steps where every layer was read (for ADAPT-TF: the anchor phase)."""
        import time

        self.check_context(prepared, max_new_tokens)
        kw = dict(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                  temperature=None, top_p=None, top_k=None)
        kw.update(generate_kwargs)
        t0 = time.perf_counter()
        if capture or policy is not None:
            rec = AttentionRecorder(prepared.span, self.num_layers, policy=policy, per_head=per_head,
                                    capture_prefill=capture_prefill, lean=lean, max_steps=kw["max_new_tokens"],
                                    keymap=self.key_map)
            if hasattr(policy, "bind"):
                policy.bind(rec)
            with rec:
                out = self.model.generate(**prepared.inputs, **kw)
        else:
            rec = None
            out = self.model.generate(**prepared.inputs, **kw)
        seconds = time.perf_counter() - t0
        maps_all = rec.maps() if rec is not None and rec.num_steps else None
        prefill_all = None
        if rec is not None and capture_prefill and all(m is not None for m in rec.prefill_text_maps):
            prefill_all = torch.stack([m.to("cpu") for m in rec.prefill_text_maps]).float()  # [L, B, n]
        keys = rec.keys_report() if rec is not None and not self.key_map.plain else None
        gens = []
        for b in range(out.shape[0]):
            new = self._strip_eos(out[b, prepared.prompt_len:].tolist())
            maps = maps_all[: len(new) or 1, :, b] if maps_all is not None else None
            prefill = prefill_all[:, b] if prefill_all is not None else None
            gens.append(Generation(token_ids=new, text=self.decode(new), tokens=self.token_pieces(new),
                                   maps=maps, prefill_maps=prefill, seconds=seconds / out.shape[0], keys=keys))
        return gens

    def _strip_eos(self, ids: list[int]) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        pad = self.model.generation_config.pad_token_id
        for i, t in enumerate(ids):
            if t in eos:
                return ids[:i]
        while ids and ids[-1] == pad:
            ids = ids[:-1]
        return ids

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def token_pieces(self, ids: list[int]) -> list[str]:
        return [self.tokenizer.decode([i], skip_special_tokens=False) for i in ids]


@functools.cache
def pixels_per_row(stock: type) -> type:
    """``stock`` (a transformers model class) also taking ``pixel_values`` one row per image, ``[images, views,
    3, H, W]`` (InternVL's tiles, Gemma 3's pan-and-scan crops), flattened to the stock ``[images · views, 3,
    H, W]`` before its ``forward`` and ``generate`` (which runs the vision tower itself before the first
    forward): the same tensor the stock model gets from its processor. The methods that split a batch by image
    (VCD's noised rows, PAI's text-only rows) read dim 0 as images. The class keeps the stock name (what the
    catalog, the docs and a user know it by) and the stock forward's signature (generate checks its keyword
    arguments against it)."""

    def per_row(kwargs: dict) -> dict:
        pv = kwargs.get("pixel_values")
        if pv is not None and pv.ndim == 5:
            kwargs["pixel_values"] = pv.flatten(0, 1)
        return kwargs

    class PerRow(stock):
        @functools.wraps(stock.forward)
        def forward(self, *args, **kwargs):
            return super().forward(*args, **per_row(kwargs))

        def generate(self, *args, **kwargs):
            return super().generate(*args, **per_row(kwargs))

    PerRow.__name__ = PerRow.__qualname__ = stock.__name__
    return PerRow


def is_local_dir(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def group_by_grid(backbone: Backbone, images: list[Image.Image]) -> list[list[int]]:
    """Indices of ``images`` grouped so that each group gives one image layout, which is what a batch
    needs (``Backbone.grid_key``: LLaVA: one group; Qwen2.5-VL: one per resized size; LLaVA-NeXT /
    OneVision: one per layout signature, the hi-res view's shape following the aspect)."""
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(backbone.grid_key(im), []).append(i)
    return list(groups.values())
