"""OPERA (Huang et al., CVPR 2024): beam search with an over-trust penalty and retrospection-allocation.

Cited by the paper's section titles (its equation numbers were not checked against its text, which
this repository does not hold).

**Over-trust logit penalty.** Hallucinations follow "summary tokens": a generated
token that the following tokens all attend to strongly, a column in the self-attention among the
generated text. For a candidate next token, take its attention row (the newest query) together
with the rows of the tokens generated before it, over the local window of generated tokens
(ω, lower-triangular), scale it by σ and take the column-wise product::

    φ(ω_≤t) = max_c  ∏_{i=c}^{t} σ · ω_{i,c}

Each beam's top-N_can tokens are the candidates, each penalised by α·φ(ω_≤t) (α the penalty
weight); the other tokens are not considered, and the beams are kept as in beam search.

**Retrospection-allocation strategy.** When the location c of φ's maximum has been the same for
``threshold`` steps of a beam's history (the location overlap count reaches r), decoding rolls back
to that summary token and chooses the token after it again, excluding the continuations chosen
there before. A position is rolled back to at most N_can times; after that the position before it
is tried, and then no more.

Public defaults (the authors' scripts, :class:`OPERAConfig`): 5 beams, σ = 50, r = 15, N_can = 5,
α = 1, last decoder layer.

**How it runs here.** Candidates' attention rows come from one batched forward per step: every
beam is fed its N_can candidates as N_can query tokens at the same position, under a 4-D mask in which
each sees the beam's cache and itself (the cache is not copied per candidate), and the
:data:`adapt.hooks.HOOK_TEXT_WINDOW` hook point gives each candidate's attention over the last
``window`` keys at the last layer. The same forward gives the logits of the next step, so once the
beams are chosen the cache keeps the chosen rows and nothing is recomputed (the public code runs
N_can + 1 forwards per step). Column products are kept per beam as running log sums, one per
column of the window: the capture is O(beams · candidates · window) floats per step, replaced at
every step, a beam's state O(window), and the rollback history keeps that state for the steps a
rollback can reach (the last ``window``), O(beams · window) each; all of it goes with the answer.
A rollback crops the cache to the prompt (all beams share it) and feeds the restored beams'
tokens in one forward. Transformers is not patched and
its beam search is not called: the loop below reproduces its scoring, length penalty, finished
hypotheses and stopping rule (``early_stopping=False``), so with α = 0 and no rollback it gives
transformers' ``num_beams`` beam search (tested), as long as no beam needs more continuations than
its N_can candidates (only possible when an end-of-sequence token is among them).

**Choices where the paper leaves one (and where this follows the public code or departs).**

- Heads: the per-key *maximum* over heads of the last layer, renormalised to sum to one over all
  keys, as the public code (``head_reduce="max"``); ``"mean"`` is the plain head mean.
- Window: the generated tokens only (the public code slices from the response start), the last
  ``window`` = 512 of them (its history length; descriptions are shorter, so in practice the whole
  answer).
- Scale of φ: the public code multiplies the column product by 1e-7 (``product_scale``) before
  subtracting it; the paper's formula has no such constant. Without it almost every column would
  be penalised. The product is computed in float32 from log sums (the public code keeps it in
  float16, where anything above 65 504 becomes infinite); the exponent is capped at 80 so a huge
  penalty stays finite.
- Where the penalty goes: by default a candidate's score is log p(x_t | x_<t) − α·φ, the
  full-vocabulary log-probability, so that with α = 0 OPERA *is* beam search. The paper writes
  softmax[H(h_t) − α·φ] over the candidate set and the public code does that (logits minus the
  penalty, renormalised over the candidates), which is not beam search even with α = 0: each beam's
  scores lose its log-normaliser over the vocabulary. ``candidate_softmax=True`` gives that reading.
- First tokens: for the first ``image_steps`` = 10 generated tokens the public code replaces φ by
  minus the candidate's attention mass on the image (a bonus for looking at it) and never rolls
  back onto them; kept (``image_steps=0`` gives the paper's rule from the first token).
- History: the location of a step is the mode over the beam's candidates of their maxima (public
  code), kept per beam *lineage* (reordered with the beams; the public code keeps it by beam slot);
  the rollback location is the mode over the beams, and the rollback happens when every beam's
  history holds it ``threshold`` times (≥, the paper's "reaches"; the public code needs one more).
- After a rollback the token at the position is chosen again among each beam's top-N_can tokens
  once the rejected continuations are removed, with the penalty (the paper's "Y \\ {x}"); the
  public code takes the whole vocabulary without the penalty at that one step.
- Greedy over the beams (no sampling), as the public scripts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ..hooks import TextWindowCapture
from ..backbones import BackboneError, Generation
from .base import Answer, Method, register

NEG = float("-inf")  # impossible beams / not-finished slots (transformers uses −1e9: penalties go far below it)


@dataclass
class OPERAConfig:
    num_beams: int = 5
    scale_factor: float = 50.0  # σ: scales the attention before the column product
    threshold: int = 15  # r: location overlap count that triggers a rollback
    num_candidates: int = 5  # N_can: candidates per beam, and rollbacks allowed per position
    penalty_weight: float = 1.0  # α
    window: int = 512  # generated tokens the column products cover (the public code's history length)
    rollback: bool = True  # retrospection-allocation on (off: the penalty alone)
    image_steps: int = 10  # first tokens: image-attention bonus instead of φ, no rollback onto them
    product_scale: float = 1e-7  # the public code's factor on the column product
    head_reduce: str = "max"  # "max" (public code, renormalised) or "mean" over the heads
    layer: int = -1  # decoder layer whose attention is read (−1: the last)
    length_penalty: float = 1.0  # transformers' default: finished scores divided by length ** this
    candidate_softmax: bool = False  # score = log softmax over the candidates of (logit − α·φ): paper / public code

    def validate(self) -> "OPERAConfig":
        if self.num_beams < 1 or self.num_candidates < 1 or self.window < 1 or self.threshold < 1:
            raise ValueError("OPERA: num_beams, num_candidates, window and threshold must be ≥ 1")
        if self.head_reduce not in ("max", "mean"):
            raise ValueError(f"OPERA head_reduce must be 'max' or 'mean', got {self.head_reduce!r}")
        return self


class ModelDecoder:
    """The model side of the search for one (image, question): a KV cache over the beams and the
    batched candidate forward, read through :class:`~adapt.hooks.TextWindowCapture`.

    Candidates are fed as ``k`` query tokens per cached row, all at the next position, with a 4-D mask
    in which each sees its row's cache and itself (not its sibling candidates): one forward, and the
    cache is never copied per candidate. Choosing the beams keeps, per new beam, its parent row with
    the chosen candidate's key and value moved to the next position, then crops the rest."""

    def __init__(self, backbone, prepared, cfg: OPERAConfig):
        self.model = backbone.model
        self.prompt_len = prepared.prompt_len
        self.inputs = prepared.inputs
        layer = cfg.layer % backbone.num_layers
        self.layer = layer
        self.window = cfg.window
        self.capture = TextWindowCapture(cfg.window, (layer,), reduce=cfg.head_reduce,
                                         image_positions=prepared.span.positions[0],
                                         queries=cfg.num_beams * cfg.num_candidates)
        self.cache = None
        self._fed = None  # (cache length before the candidates, candidates per row)
        self._prefill_logits = None

    def __enter__(self):
        self.capture.__enter__()
        return self

    def __exit__(self, *exc):
        self.capture.__exit__(*exc)
        self.cache = None  # frees the beams' KV cache with the decoding

    def prefill(self) -> torch.Tensor:
        out = self.model(**self.inputs, use_cache=True)
        self.cache = out.past_key_values
        self._prefill_logits = out.logits[:, -1].float()
        return self._prefill_logits

    def _position(self, past: int, rows: int, device) -> torch.Tensor:
        """``[rows, 1]`` position of the token after ``past`` cached ones, as the model would number it
        (Qwen-VL: shifted by the image's rope delta; PaliGemma counts from one)."""
        inner = getattr(self.model, "model", None)
        delta = getattr(inner, "rope_deltas", None)
        pos = torch.full((rows, 1), past + (self.model.config.model_type == "paligemma"), dtype=torch.long,
                         device=device)
        return pos if delta is None else pos + delta.to(device).view(-1, 1)[:1]

    def candidates(self, tokens: torch.Tensor, repeat: int):
        """Feed ``tokens`` ``[R, 1]``, ``repeat`` of them after each cached row; returns the next logits
        ``[R, V]``, each candidate's attention over the window ``[R, w]`` (its row's last generated keys,
        then itself) and its image mass ``[R]``."""
        rows = tokens.shape[0] // repeat
        past = self.cache.get_seq_length()
        dev = tokens.device
        mask = torch.ones(rows, 1, repeat, past + repeat, dtype=torch.bool, device=dev)
        mask[..., past:] = torch.eye(repeat, dtype=torch.bool, device=dev)
        out = self.model(input_ids=tokens.view(rows, repeat), past_key_values=self.cache, attention_mask=mask,
                         position_ids=self._position(past, rows, dev).expand(rows, repeat), use_cache=True)
        self.cache = out.past_key_values
        self._fed = (past, repeat)
        full = self.capture.full[self.layer]  # [rows, repeat, past + repeat]
        w = min(self.window, past + 1)
        own = torch.diagonal(full[..., past:], dim1=1, dim2=2)  # each candidate on itself
        window = torch.cat([full[..., past - (w - 1): past], own[..., None]], -1).reshape(-1, w)
        mass = self.capture.all_image_mass[self.layer].reshape(-1)
        logits = out.logits.reshape(tokens.shape[0], -1).float()
        # the search runs where the LM head put the logits; the capture is on the last layer's device
        return logits, window.to(logits.device), mass.to(logits.device)

    def select(self, rows: torch.Tensor) -> None:
        """Keep candidate ``rows`` (indices into the last :meth:`candidates` call's ``R``) as the beams."""
        past, repeat = self._fed
        parent, j = rows // repeat, rows % repeat
        for layer in self.cache.layers:
            for name in ("keys", "values"):
                t = getattr(layer, name).index_select(0, parent)
                idx = (past + j).view(-1, 1, 1, 1).expand(-1, t.shape[1], 1, t.shape[3])
                t[:, :, past: past + 1] = t.gather(2, idx)
                setattr(layer, name, t[:, :, : past + 1])

    def refeed(self, sequences: torch.Tensor) -> torch.Tensor:
        """Back to the prompt (every row shares it), then the beams' ``[nb, pos]`` tokens in one forward."""
        extra = self.cache.get_seq_length() - self.prompt_len
        if extra:
            self.cache.crop(-extra)
        self.cache.batch_select_indices(torch.zeros(sequences.shape[0], dtype=torch.long, device=sequences.device))
        if sequences.shape[1] == 0:  # back to the first token: the prompt's own next-token logits
            return self._prefill_logits.expand(sequences.shape[0], -1)
        out = self.model(input_ids=sequences, past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1].float()


def over_trust(prev: torch.Tensor, rows: torch.Tensor, step: int, cfg: OPERAConfig, k: int):
    """Column log-products after adding each candidate's row.

    ``prev`` ``[nb, c]``: each beam's Σ log(σ·ω_{i,j}) over its generated rows, for its last c
    generated columns; ``rows`` ``[nb·k, w]``: the candidates' attention over the last w keys (the
    newest key is the candidate itself). Returns ``[nb·k, c′]`` log-products over the window's
    columns (the candidate's own column last) and the absolute position of the first column."""
    cols = min(step + 1, cfg.window, rows.shape[-1])
    logs = torch.log((cfg.scale_factor * rows[:, -cols:]).clamp_min(1e-30))
    base = torch.cat([prev, prev.new_zeros(prev.shape[0], 1)], -1)[:, -cols:]
    return base.repeat_interleave(k, 0) + logs, step + 1 - cols


def opera_search(decoder, cfg: OPERAConfig, eos: list[int], max_new_tokens: int, min_new_tokens: int = 0):
    """OPERA's beam search over ``decoder`` (:class:`ModelDecoder` or anything with its four calls).
    Returns (tokens of the best hypothesis, with its end token if any; info)."""
    nb, k = cfg.num_beams, cfg.num_candidates
    logits = decoder.prefill()  # [1, V]
    device = logits.device
    eos_t = torch.tensor(sorted(set(eos)), dtype=torch.long, device=device)
    keep = min(max(2, 1 + len(eos_t)) * nb, nb * k)
    logits = logits.expand(nb, -1)
    seqs = torch.zeros(nb, 0, dtype=torch.long, device=device)
    # beam scores in float64: a penalty of 1e13 added in float32 would erase the log-probabilities beside it
    running = torch.full((nb,), NEG, dtype=torch.float64, device=device)
    running[0] = 0.0  # identical beams at the start: only the first one may expand
    fin_scores = torch.full((nb,), NEG, dtype=torch.float64, device=device)
    fin_done = torch.zeros(nb, dtype=torch.bool, device=device)
    fin_seqs: list[list[int]] = [[] for _ in range(nb)]
    improvable = True
    prev = torch.zeros(nb, 0, device=device)  # column log-products of the window, per beam
    hist: list[list[int]] = [[] for _ in range(nb)]  # rollback locations of each beam's lineage
    snapshots: dict[int, dict] = {}
    chosen: dict[int, set] = {}
    rejected: dict[int, set] = {}
    rollbacks: dict[int, int] = {}
    events: list[list[int]] = []
    cache_rows, step, forwards = 1, 0, 1
    while True:
        lp = torch.log_softmax(logits, -1)
        if step < min_new_tokens:
            lp[:, eos_t] = float("-inf")
        for b, t in rejected.get(step, ()):
            lp[b, t] = float("-inf")
        cand_lp, cand_tok = lp.topk(k, -1)  # [nb, k]
        if cfg.rollback:
            snapshots[step] = dict(seqs=seqs, running=running, fin_scores=fin_scores, fin_done=fin_done,
                                   fin_seqs=[list(x) for x in fin_seqs], improvable=improvable, prev=prev,
                                   hist=[list(h) for h in hist])
            snapshots.pop(step - cfg.window - 2, None)
        new_logits, rows, img_mass = decoder.candidates(cand_tok.reshape(-1, 1), nb * k if cache_rows == 1 else k)
        forwards += 1
        logprod, first_col = over_trust(prev, rows, step, cfg, k)
        best, where = logprod.max(-1)
        locs = (first_col + where).view(nb, k)
        if step < cfg.image_steps:
            penalty = -img_mass.double()
        else:
            penalty = cfg.product_scale * torch.exp(best.double().clamp(max=80.0))
        if cfg.candidate_softmax:  # the logits differ from cand_lp by one constant per beam: same softmax
            scores = torch.log_softmax(cand_lp.double() - cfg.penalty_weight * penalty.view(nb, k), -1).reshape(-1)
        else:
            scores = cand_lp.reshape(-1).double() - cfg.penalty_weight * penalty  # [nb·k]
        beam_loc = locs.mode(-1).values  # [nb]

        target = _rollback_target(cfg, step, beam_loc, hist, rollbacks, snapshots) if cfg.rollback else None
        if target is not None:
            rollbacks[target] = rollbacks.get(target, 0) + 1
            events.append([step, target])
            s = snapshots[target]
            seqs, running, fin_scores, fin_done = s["seqs"], s["running"], s["fin_scores"], s["fin_done"]
            fin_seqs, improvable, prev = [list(x) for x in s["fin_seqs"]], s["improvable"], s["prev"]
            hist = [list(h) for h in s["hist"]]
            rejected[target] = rejected.get(target, set()) | chosen.get(target, set())
            for pos in [p for p in list(snapshots) + list(chosen) + list(rejected) if p > target]:
                snapshots.pop(pos, None), chosen.pop(pos, None), rejected.pop(pos, None)
            logits = decoder.refeed(seqs)
            forwards += 1
            cache_rows, step = nb, target
            continue

        # beam search step, as transformers' (_get_top_k_continuations / _get_running_beams_for_next_iteration /
        # _update_finished_beams / _check_early_stop_heuristic) with early_stopping=False
        acc = running.repeat_interleave(k) + scores
        top_val, top_idx = acc.topk(keep)
        top_tok = cand_tok.reshape(-1)[top_idx]
        parent = top_idx // k
        hits = torch.isin(top_tok, eos_t) | (step + 1 >= max_new_tokens)
        live = top_val.masked_fill(hits, NEG)
        sel = live.topk(nb).indices
        just = hits & (torch.arange(keep, device=device) < nb) & improvable
        fin_cand = (top_val / ((step + 1) ** cfg.length_penalty)).masked_fill(~just, NEG)
        merged = torch.cat([fin_scores, fin_cand])
        order = merged.topk(nb).indices.tolist()
        new_seqs = [seqs[p].tolist() + [t] for p, t in zip(parent.tolist(), top_tok.tolist())]
        fin_seqs = [fin_seqs[i] if i < nb else new_seqs[i - nb] for i in order]
        fin_done = torch.cat([fin_done, just])[order]
        fin_scores = merged[order]

        flat = top_idx[sel]
        par = parent[sel]
        running = live[sel]
        chosen[step] = set(zip(par.tolist(), top_tok[sel].tolist()))
        seqs = torch.cat([seqs[par], top_tok[sel, None]], -1)
        prev = logprod[flat]
        hist = [hist[p] + [int(beam_loc[p])] for p in par.tolist()]
        decoder.select(flat)
        logits = new_logits[flat]
        cache_rows = nb
        step += 1
        # while a slot has no finished hypothesis, the best running beam can still take it
        improvable = improvable and (not bool(fin_done.all())
                                     or bool(running[0] / (step ** cfg.length_penalty) > fin_scores.min()))
        if not improvable or bool(hits.all()) or step >= max_new_tokens:
            break
    best = fin_seqs[0] if bool(fin_done[0]) else seqs[0].tolist()
    return best, {"rollbacks": events, "forwards": forwards}


def _rollback_target(cfg, step, beam_loc, hist, rollbacks, snapshots) -> int | None:
    """The position to decode again, or None: every beam's history (with this step) holds the modal
    location ``threshold`` times, the location is past the first ``image_steps`` tokens, and the
    position after it (else the one before that) has rollbacks left."""
    if step < cfg.image_steps:
        return None
    loc = int(beam_loc.mode().values)
    locs = beam_loc.tolist()
    if loc < cfg.image_steps or any(h.count(loc) + (b == loc) < cfg.threshold for h, b in zip(hist, locs)):
        return None
    for pos in (loc + 1, loc):
        if rollbacks.get(pos, 0) < cfg.num_candidates and pos in snapshots and pos <= step:
            return pos
    return None


DESCRIPTION = "OPERA: 5-beam search, over-trust penalty on the text's attention columns, rollback (retrospection)"


@register("opera", DESCRIPTION)
class OPERA(Method):
    name = "opera"
    description = DESCRIPTION

    def __init__(self, cfg: OPERAConfig | None = None):
        self.cfg = (cfg or OPERAConfig()).validate()

    def _answer_group(self, backbone, images, questions, max_new_tokens, min_new_tokens: int = 0, **generate_kwargs):
        """One beam search per pair (a rollback rewinds one answer; the beams are the batch)."""
        if generate_kwargs:
            raise TypeError(f"OPERA runs its own beam search; it takes min_new_tokens, not {sorted(generate_kwargs)}")
        if not backbone.key_map.plain:
            # the candidates share one forward and the beams are cut out of the cache by position: a
            # sliding window's cache is not indexed by position, a linear layer's state mixes the candidates
            raise BackboneError(f"OPERA is not supported on {backbone.family} (its decoder has sliding-window, "
                                "linear- or cross-attention layers, whose caches the beam search cannot split)")
        import time

        eos = backbone.model.generation_config.eos_token_id
        eos = [e for e in (eos if isinstance(eos, (list, tuple)) else [eos]) if e is not None]
        answers = []
        for image, question in zip(images, questions):
            t0 = time.perf_counter()
            prepared = backbone.prepare_batch([image], [question])
            with torch.inference_mode(), ModelDecoder(backbone, prepared, self.cfg) as decoder:
                tokens, info = opera_search(decoder, self.cfg, eos, max_new_tokens, min_new_tokens or 0)
            ids = backbone._strip_eos(tokens)
            text = backbone.decode(ids)
            gen = Generation(token_ids=ids, text=text, tokens=backbone.token_pieces(ids),
                             seconds=time.perf_counter() - t0)
            answers.append(Answer(text, ids, {"tokens": len(ids), **info}, gen))
        return answers

    def config_dict(self) -> dict:
        return asdict(self.cfg)


__all__ = ["OPERA", "OPERAConfig", "ModelDecoder", "opera_search", "over_trust"]
