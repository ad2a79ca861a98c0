"""Run adapt's decoding methods by name inside lmms-eval (an optional extra: ``pip install lmms-eval``).

    pip install -e . lmms-eval==0.7.3      # the entry point below registers the model "adapt"
    lmms-eval --model adapt --tasks pope --batch_size 8 \\
        --model_args pretrained=llava-hf/llava-1.5-7b-hf,method=adapt-tf,device=cuda,dtype=bfloat16

lmms-eval finds the model through its entry-point group ``lmms_eval.models`` (declared in
pyproject.toml, payload :func:`manifest`): nothing of lmms-eval is patched. ``generate_until`` answers
with the method (``greedy``, ``adapt-tf``, ``pai``, any name of :mod:`adapt.methods`), batched, with the
task's ``max_new_tokens`` and ``until`` stop strings; ``loglikelihood`` scores a continuation with the
unsteered model (a decoding method changes how tokens are chosen, not what a fixed text costs). One
image per question, single round: what every adapt method answers; other requests are refused with a
message. Under ``accelerate launch`` each process loads the model on its own GPU, as lmms-eval expects.
"""

from __future__ import annotations

import json

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from PIL import Image

from ..backbones import load_backbone
from ..config import AdaptConfig
from ..methods import get_method
from ..pipeline import default_bias_cache

MODEL_ID = "adapt"


def manifest():
    """The entry point's payload: lmms-eval's manifest of the model ``adapt``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.AdaptLMM")


def _one_image(visuals) -> Image.Image:
    flat = [v for group in visuals for v in (group if isinstance(group, (list, tuple)) else [group])] \
        if isinstance(visuals, (list, tuple)) else [visuals]
    images = [v for v in flat if isinstance(v, Image.Image)]
    if len(images) != 1 or len(flat) != 1:
        raise ValueError(f"adapt answers one image per question; this request has {len(flat)} visual(s)")
    return images[0]


def _cut(text: str, until: list[str]) -> str:
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


class AdaptLMM(lmms):
    """lmms-eval's model interface over an adapt backbone and one registered method.

    ``model_args``: ``pretrained`` (a local folder, hub id or ``embedded``), ``method`` (default
    ``adapt-tf``), ``device``, ``dtype`` (``auto``, ``bfloat16``, ...), ``device_map``, ``batch_size``,
    ``config`` (a JSON file of :class:`~adapt.config.AdaptConfig` fields), ``max_new_tokens`` (when the
    task gives none; default 128)."""

    is_simple = True

    def __init__(self, pretrained: str = "embedded", method: str = "adapt-tf", device: str | None = None,
                 dtype: str = "auto", device_map: str | None = None, batch_size: int | str = 1,
                 config: str | None = None, max_new_tokens: int | str = 128, **kwargs):
        super().__init__()
        from accelerate import PartialState

        state = PartialState()
        self._rank, self._world_size = state.process_index, state.num_processes
        if state.num_processes > 1 and device and device.startswith("cuda") and ":" not in device:
            device = f"cuda:{state.local_process_index}"  # one GPU per process
        torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
        self.backbone = load_backbone(pretrained, dtype=torch_dtype, device=device, device_map=device_map)
        cfg = AdaptConfig.from_dict(json.loads(open(config).read())) if config else AdaptConfig()
        self.method = get_method(method, cfg, default_bias_cache())
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    def _doc(self, doc_id, task, split):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}  # requests with the same generation settings answer together
        for i, r in enumerate(requests):
            groups.setdefault(json.dumps(r.args[1], sort_keys=True, default=str), []).append(i)
        for idx in groups.values():
            gen = dict(requests[idx[0]].args[1])
            until = gen.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(gen.get("max_new_tokens") or self.max_new_tokens)
            for start in range(0, len(idx), self.batch_size):
                chunk = idx[start:start + self.batch_size]
                images, questions = [], []
                for i in chunk:
                    context, _, doc_to_visual, doc_id, task, split = requests[i].args
                    images.append(_one_image(doc_to_visual(self._doc(doc_id, task, split))))
                    questions.append(context.replace("<image>", "").strip())
                answers = self.method.answer_batch(self.backbone, images, questions, max_new)
                for i, a in zip(chunk, answers):
                    out[i] = _cut(a.text, until)
        return out

    @torch.inference_mode()
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        bb = self.backbone
        res = []
        for r in requests:
            context, target, doc_to_visual, doc_id, task, split = r.args
            doc = self._doc(doc_id, task, split)
            continuation = target if isinstance(target, str) else target(doc)
            prepared = bb.prepare(_one_image(doc_to_visual(doc)), context.replace("<image>", "").strip())
            n = prepared.prompt_len
            cont = bb.tokenizer(continuation, add_special_tokens=False, return_tensors="pt")["input_ids"].to(bb.device)
            inputs = dict(prepared.inputs)
            for key, v in prepared.inputs.items():  # every per-token tensor grows by the continuation
                if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == n:
                    tail = cont if key == "input_ids" else torch.ones_like(cont) if key == "attention_mask" \
                        else torch.zeros_like(cont)
                    inputs[key] = torch.cat([v, tail.to(v.dtype)], 1)
            logits = bb.model(**inputs).logits[0, n - 1:-1].float()
            logp = torch.log_softmax(logits, -1)
            ids = cont[0]
            res.append((float(logp.gather(1, ids[:, None]).sum()), bool((logits.argmax(-1) == ids).all())))
        return res

    def generate_until_multi_round(self, requests) -> list[str]:
        raise ValueError("adapt's methods answer single-round questions; multi-round tasks are not supported")
