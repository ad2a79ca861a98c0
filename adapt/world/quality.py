"""Quality measurements of a world model with plain greedy decoding (``model.generate``)."""
from __future__ import annotations

import time
from statistics import mean

import torch

from ..eval.metrics import chair, parse_yes_no, pope_metrics
from .datasets import POPE_KINDS
from .language import DEFAULT_DESCRIBE_PROMPT, read_object_spans, read_objects
from .scenes import CATEGORIES, Scene


def chat_prompt(processor, question: str) -> str:
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(msgs, add_generation_prompt=True)


@torch.inference_mode()
def generate(model, processor, images, questions, max_new_tokens: int = 128, batch_size: int = 16) -> list[str]:
    """Greedy answers for (image, question) pairs, batched with left padding."""
    processor.tokenizer.padding_side = "left"
    out: list[str] = []
    for i in range(0, len(images), batch_size):
        prompts = [chat_prompt(processor, q) for q in questions[i : i + batch_size]]
        inputs = processor(images=images[i : i + batch_size], text=prompts, return_tensors="pt", padding=True)
        inputs = inputs.to(model.device)
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = ids[:, inputs["input_ids"].shape[1] :]
        out += processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    return [t.strip() for t in out]


def describe_scenes(model, processor, scenes: list[Scene], batch_size: int = 16) -> list[str]:
    return generate(model, processor, [s.image() for s in scenes], [DEFAULT_DESCRIBE_PROMPT] * len(scenes), 160, batch_size)


def description_figures(scenes: list[Scene], texts: list[str]) -> dict:
    objs = [read_objects(t) for t in texts]
    truths = [s.categories for s in scenes]
    res = {"all": chair(objs, truths)}
    for name, flag in (("trap", True), ("nontrap", False)):
        idx = [i for i, s in enumerate(scenes) if s.is_trap == flag]
        if idx:
            res[name] = chair([objs[i] for i in idx], [truths[i] for i in idx])
    # absent partner vs a random absent category, on trap scenes
    partner_hits, partner_n, other_hits, other_n = 0, 0, 0, 0
    for s, o in zip(scenes, objs):
        if not s.is_trap:
            continue
        mentioned = set(o)
        partners = set(s.absent_partners)
        for c in CATEGORIES:
            if c in s.categories:
                continue
            if c in partners:
                partner_n += 1
                partner_hits += c in mentioned
            else:
                other_n += 1
                other_hits += c in mentioned
    res["trap_partner_mention_rate"] = partner_hits / max(partner_n, 1)
    res["trap_other_absent_mention_rate"] = other_hits / max(other_n, 1)
    # where do hallucinated mentions come in the text (relative character offset)?
    pos_ok, pos_h, idx_ok, idx_h = [], [], [], []
    for s, t in zip(scenes, texts):
        spans = read_object_spans(t)
        truth = set(s.categories)
        for k, (c, off) in enumerate(spans):
            rel = off / max(len(t), 1)
            ridx = k / max(len(spans) - 1, 1)
            if c in truth:
                pos_ok.append(rel)
                idx_ok.append(ridx)
            else:
                pos_h.append(rel)
                idx_h.append(ridx)
    res["relative_position"] = {
        "correct_mean": mean(pos_ok) if pos_ok else None,
        "hallucinated_mean": mean(pos_h) if pos_h else None,
        "correct_mention_index_mean": mean(idx_ok) if idx_ok else None,
        "hallucinated_mention_index_mean": mean(idx_h) if idx_h else None,
        "n_correct": len(pos_ok),
        "n_hallucinated": len(pos_h),
    }
    res["mean_words"] = mean(len(t.split()) for t in texts) if texts else 0
    return res


def pope_figures(model, processor, scenes: list[Scene], batch_size: int = 32) -> dict:
    res = {}
    for kind in POPE_KINDS:
        imgs, qs, labels, partner = [], [], [], []
        for s in scenes:
            im = s.image()
            for q in s.pope_questions(kind):
                imgs.append(im)
                qs.append(q["question"])
                labels.append(q["label"])
                partner.append(q["is_partner"])
        answers = generate(model, processor, imgs, qs, max_new_tokens=6, batch_size=batch_size)
        preds = [parse_yes_no(a) for a in answers]
        m = pope_metrics(preds, labels)
        pn = [p for p, f in zip(preds, partner) if f]
        m["partner_no_acc"] = (sum(p == "no" for p in pn) / len(pn)) if pn else None
        m["n_partner"] = len(pn)
        res[kind] = m
    return res


@torch.inference_mode()
def speed_figures(model, processor, scenes: list[Scene], max_new_tokens: int = 160) -> dict:
    """Greedy, batch 1, KV cache: tokens/s and full-description latency."""
    toks, secs = 0, 0.0
    lat = []
    for s in scenes:
        inputs = processor(images=s.image(), text=chat_prompt(processor, DEFAULT_DESCRIBE_PROMPT),
                           return_tensors="pt").to(model.device)
        t0 = time.perf_counter()
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
        dt = time.perf_counter() - t0
        n = ids.shape[1] - inputs["input_ids"].shape[1]
        toks += n
        secs += dt
        lat.append(dt)
    return {
        "tokens_per_s": toks / secs if secs else 0.0,
        "description_latency_s": mean(lat) if lat else 0.0,
        "mean_new_tokens": toks / max(len(scenes), 1),
        "n": len(scenes),
        "threads": torch.get_num_threads(),
    }


@torch.inference_mode()
def attention_mass_profile(model, processor, scenes: list[Scene], texts: list[str], bins: int = 5) -> dict:
    """Share of each generated token's attention (mean over layers and heads) that falls on the
    image tokens, binned by relative position in the description (teacher-forced re-run of the
    greedy text with eager attention)."""
    prev = model.config.text_config._attn_implementation
    model.set_attn_implementation({"text_config": "eager"})
    sums, counts = [0.0] * bins, [0] * bins
    try:
        for s, t in zip(scenes, texts):
            prompt = chat_prompt(processor, DEFAULT_DESCRIBE_PROMPT)
            inputs = processor(images=s.image(), text=prompt, return_tensors="pt").to(model.device)
            n_prompt = inputs["input_ids"].shape[1]
            ans = processor.tokenizer(" " + t, add_special_tokens=False, return_tensors="pt")["input_ids"].to(model.device)
            if ans.shape[1] < 2:
                continue
            ids = torch.cat([inputs["input_ids"], ans], 1)
            out = model(input_ids=ids, pixel_values=inputs["pixel_values"], attention_mask=torch.ones_like(ids), output_attentions=True)
            img = ids[0] == model.config.image_token_id
            att = torch.stack([a[0] for a in out.attentions]).mean(dim=(0, 1))  # [q, k]
            # the query predicting answer token j sits at position n_prompt - 1 + j
            qpos = torch.arange(n_prompt - 1, ids.shape[1] - 1, device=ids.device)
            mass = att[qpos][:, img].sum(-1)
            m = len(mass)
            for j, v in enumerate(mass.tolist()):
                b = min(int(bins * j / m), bins - 1)
                sums[b] += v
                counts[b] += 1
    finally:
        model.set_attn_implementation({"text_config": prev or "sdpa"})
    return {"image_attention_mass_by_position": [s / c if c else None for s, c in zip(sums, counts)], "bins": bins, "n": len(scenes)}


def evaluate(model, processor, scenes: list[Scene], speed_n: int = 10) -> dict:
    t0 = time.perf_counter()
    texts = describe_scenes(model, processor, scenes)
    d = description_figures(scenes, texts)
    p = pope_figures(model, processor, scenes)
    sp = speed_figures(model, processor, scenes[:speed_n]) if speed_n else {}
    att = attention_mass_profile(model, processor, scenes[:20], texts[:20])
    return {
        "descriptions": d,
        "attention": att,
        "pope": p,
        "speed": sp,
        "examples": [{"seed": s.seed, "is_trap": s.is_trap, "truth": s.categories, "text": t} for s, t in list(zip(scenes, texts))[:6]],
        "eval_seconds": time.perf_counter() - t0,
    }
