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
The requests' handling lives in :mod:`adapt.integrations.lmms_core` (no lmms-eval needed there).
"""

from __future__ import annotations

import json

import torch
from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms

from ..backbones import load_backbone
from ..config import AdaptConfig
from ..methods import get_method
from ..pipeline import default_bias_cache
from .lmms_core import Answerer

MODEL_ID = "adapt"


def manifest():
    """The entry point's payload: lmms-eval's manifest of the model ``adapt``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.AdaptLMM")


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
        self.answerer = Answerer(self.backbone, self.method, self.batch_size, int(max_new_tokens))

    def _doc(self, doc_id, task, split):
        return self.task_dict[task][split][doc_id]

    def generate_until(self, requests: list[Instance]) -> list[str]:
        return self.answerer.generate_until(requests, self._doc)

    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        return self.answerer.loglikelihood(requests, self._doc)

    def generate_until_multi_round(self, requests) -> list[str]:
        raise ValueError("adapt's methods answer single-round questions; multi-round tasks are not supported")
