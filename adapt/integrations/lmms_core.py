"""What the lmms-eval adapter does with a request, without lmms-eval: answer ``generate_until`` requests
with a decoding method and score ``loglikelihood`` continuations with the unsteered model, for any
registered family. :class:`adapt.integrations.lmms_eval.AdaptLMM` is this plus lmms-eval's base class
(so the requests' handling is tested on every family where lmms-eval is not installed).

A request is anything with lmms-eval's ``args``: ``(context, gen_kwargs | continuation, doc_to_visual,
doc_id, task, split)``; ``doc(doc_id, task, split)`` returns the document ``doc_to_visual`` reads.
"""

from __future__ import annotations

import json
from typing import Callable

import torch
from PIL import Image


def one_image(visuals) -> Image.Image:
    """The single PIL image of a request's visuals; anything else is refused with a message."""
    flat = [v for group in visuals for v in (group if isinstance(group, (list, tuple)) else [group])] \
        if isinstance(visuals, (list, tuple)) else [visuals]
    images = [v for v in flat if isinstance(v, Image.Image)]
    if len(images) != 1 or len(flat) != 1:
        raise ValueError(f"adapt answers one image per question; this request has {len(flat)} visual(s)")
    return images[0]


def cut(text: str, until: list[str]) -> str:
    """``text`` up to the first of the stop strings ``until``."""
    for stop in until:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


def question_of(context: str) -> str:
    # lmms-eval contexts may carry LLaVA's "<image>" placeholder; the backbone places the image itself
    return context.replace("<image>", "").strip()


class Answerer:
    """One backbone and one registered method answering lmms-eval requests (``batch_size`` questions
    at a time; ``max_new_tokens`` where a request gives none)."""

    def __init__(self, backbone, method, batch_size: int = 1, max_new_tokens: int = 128):
        self.backbone, self.method = backbone, method
        self.batch_size, self.max_new_tokens = int(batch_size), int(max_new_tokens)

    def generate_until(self, requests, doc: Callable) -> list[str]:
        """Each request's answer by the method, cut at its ``until`` strings; requests with the same
        generation settings are answered together."""
        out: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
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
                    images.append(one_image(doc_to_visual(doc(doc_id, task, split))))
                    questions.append(question_of(context))
                answers = self.method.answer_batch(self.backbone, images, questions, max_new)
                for i, a in zip(chunk, answers):
                    out[i] = cut(a.text, until)
        return out

    def loglikelihood(self, requests, doc: Callable) -> list[tuple[float, bool]]:
        """Per request, the continuation's log-probability under the unsteered model and whether greedy
        decoding would have produced it (a decoding method changes how tokens are chosen, not what a
        fixed text costs)."""
        res = []
        for r in requests:
            context, target, doc_to_visual, doc_id, task, split = r.args
            d = doc(doc_id, task, split)
            continuation = target if isinstance(target, str) else target(d)
            ids = self.backbone.tokenizer(continuation, add_special_tokens=False)["input_ids"]
            res.append(self.continuation_logprob(one_image(doc_to_visual(d)), question_of(context), ids))
        return res

    @torch.inference_mode()
    def continuation_logprob(self, image: Image.Image, question: str, ids: list[int]) -> tuple[float, bool]:
        """Log-probability of the answer tokens ``ids`` after the prompt of (``image``, ``question``), in one
        forward pass, and whether each is the greedy choice."""
        bb = self.backbone
        prepared = bb.prepare(image, question)
        n = prepared.prompt_len
        cont = torch.tensor([ids], dtype=torch.long, device=bb.device)
        # every per-token tensor grows by the continuation, as generation extends it: attended, text (no
        # image: Qwen's mm_token_type_ids 0), and the causal suffix (PaliGemma's token_type_ids 1; 0 would
        # put the answer in the bidirectional prefix, where each token sees the ones after it; Gemma 3's 1
        # marks image tokens, so its text is 0: the backbone's ``text_token_type``)
        tails = {"input_ids": cont, "attention_mask": torch.ones_like(cont),
                 "token_type_ids": torch.full_like(cont, getattr(bb, "text_token_type", 1))}
        inputs = dict(prepared.inputs)
        for key, v in prepared.inputs.items():
            if torch.is_tensor(v) and v.dim() == 2 and v.shape[1] == n:
                inputs[key] = torch.cat([v, tails.get(key, torch.zeros_like(cont)).to(v.dtype)], 1)
            elif key == "cross_attention_mask":  # Mllama's [B, n, images, tiles]: the last row, as generate grows it
                inputs[key] = torch.cat([v, v[:, -1:].expand(-1, cont.shape[1], *v.shape[2:])], 1)
        logits = bb.model(**inputs).logits[0, n - 1:-1].float()
        logp = torch.log_softmax(logits, -1)
        return float(logp.gather(1, cont[0][:, None]).sum()), bool((logits.argmax(-1) == cont[0]).all())
