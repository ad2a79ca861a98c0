"""User questions made safe for a chat template: one length limit, no smuggled special tokens, the
model's context, and the words its tokenizer does not know.

A question is pasted into the model's prompt as text. If it contains one of the model's special
tokens (``<image>``, ``<|image_pad|>``, ``<|im_end|>`` ...) the processor counts it as a real
placeholder, and the run fails with transformers' "number of <image> tokens" error or, worse,
silently changes the prompt's structure. :func:`clean_question` removes them; the app, the CLI
and :meth:`adapt.backbones.Backbone.prepare` all call it, so the limit and the message are one.

A prompt longer than the model's context (:func:`context_limit`) is refused by :func:`check_context`
(the backbone calls it when it prepares and generates), instead of decoding past the positions the
model was trained on. :func:`unknown_words` names the words a tokenizer reads as its unknown token
(a word-level tokenizer such as the embedded model's turns "cat" into ``<unk>``).
"""

from __future__ import annotations

import re

MAX_QUESTION_CHARS = 2000

# Placeholders of the supported families, removed even when no tokenizer is at hand (a question
# checked before its model is loaded, or a tokenizer that does not flag them as special).
KNOWN_PLACEHOLDERS = ("<image>", "<video>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                      "<|vision_end|>", "<|vision_pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>",
                      "<s>", "</s>")


class QuestionError(ValueError):
    """A question that cannot be asked, with a message meant for the user."""


def special_tokens(tokenizer=None) -> list[str]:
    """The special-token strings of ``tokenizer`` (a tokenizer or a processor holding one), longest first."""
    found = set(KNOWN_PLACEHOLDERS)
    for obj in (tokenizer, getattr(tokenizer, "tokenizer", None)):
        if obj is None:
            continue
        for attr in ("image_token", "video_token"):
            tok = getattr(obj, attr, None)
            if isinstance(tok, str):
                found.add(tok)
        try:
            found.update(t for t in (getattr(obj, "all_special_tokens", None) or []) if isinstance(t, str))
        except Exception:  # a tokenizer without the attribute's machinery: the known list stays
            pass
        decoder = getattr(obj, "added_tokens_decoder", None)
        if isinstance(decoder, dict):
            found.update(getattr(t, "content", None) for t in decoder.values() if getattr(t, "special", False))
    # a special token made of plain word characters ("a", "unk") would eat ordinary words
    return sorted((t for t in found if t and not t.isalnum()), key=len, reverse=True)


def find_special_tokens(text: str, tokenizer=None) -> list[str]:
    """The special tokens that occur in ``text``, in order of first appearance."""
    hits = [(text.find(t), t) for t in special_tokens(tokenizer) if t in text]
    return [t for _, t in sorted(hits)]


def check_length(text: str) -> str:
    """``text`` stripped; raises :class:`QuestionError` when it is empty or longer than the limit."""
    text = (text or "").strip()
    if not text:
        raise QuestionError("the question is empty: type a question about the image")
    if len(text) > MAX_QUESTION_CHARS:
        raise QuestionError(f"the question is too long: {len(text)} characters (at most {MAX_QUESTION_CHARS})")
    return text


def clean_question(text: str, tokenizer=None) -> str:
    """``text`` with the tokenizer's special tokens removed and whitespace tidied.

    Raises :class:`QuestionError` when the question is empty (also once its special tokens are
    gone) or longer than :data:`MAX_QUESTION_CHARS`."""
    text = check_length(text)
    tokens = special_tokens(tokenizer)
    if any(t in text for t in tokens):
        pattern = "|".join(re.escape(t) for t in tokens)
        text = re.sub(pattern, " ", text)
        text = re.sub(r"[ \t]+", " ", text).strip()
        if not text:
            raise QuestionError("the question holds only special tokens of the model: type a question")
    return text


def unknown_words(text: str, tokenizer=None) -> list[str]:
    """The words of ``text`` that ``tokenizer`` (a tokenizer or a processor holding one) has no token
    for and reads as its unknown token, in order of first appearance. [] for a tokenizer without an
    unknown token, or one that spells every word from pieces or bytes (most real checkpoints)."""
    tok = getattr(tokenizer, "tokenizer", None) or tokenizer
    unk = getattr(tok, "unk_token_id", None)
    if tok is None or unk is None or not (text or "").strip():
        return []
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        found = [text[a:b] for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if i == unk]
    except (NotImplementedError, TypeError, ValueError, KeyError):  # a slow tokenizer has no offsets
        found = [w for w in text.split() if unk in tok(w, add_special_tokens=False)["input_ids"]]
    return list(dict.fromkeys(w.strip() for w in found if w.strip()))


# tokenizers that set no limit report a huge placeholder (transformers' VERY_LARGE_INTEGER)
_NO_LIMIT = 10**9


def context_limit(model_config, tokenizer=None) -> tuple[int | None, str]:
    """(the most tokens, prompt and answer together, the model reads; where that number comes from).

    The smaller of the text model's ``max_position_embeddings`` and the tokenizer's
    ``model_max_length`` (when the tokenizer sets one); ``(None, "")`` when neither is known."""
    text = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    limits = []
    positions = getattr(text, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append((positions, "its max_position_embeddings"))
    tok = getattr(tokenizer, "tokenizer", None) or tokenizer
    longest = getattr(tok, "model_max_length", None)
    if isinstance(longest, int) and 0 < longest < _NO_LIMIT:
        limits.append((longest, "its tokenizer's model_max_length"))
    return min(limits) if limits else (None, "")


def check_context(prompt_tokens: int, limit: int | None, max_new_tokens: int = 0, image_tokens: int = 0,
                  source: str = "") -> None:
    """Raise :class:`QuestionError` when ``prompt_tokens`` (image tokens included) plus
    ``max_new_tokens`` do not fit in the model's ``limit`` (:func:`context_limit`)."""
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return
    what = f"{prompt_tokens} tokens" + (f" ({image_tokens} of them the image)" if image_tokens else "")
    reads = f"the model reads at most {limit} tokens" + (f" ({source})" if source else "")
    if prompt_tokens >= limit:
        raise QuestionError(f"the question is too long for this model: the prompt takes {what}, and {reads}; "
                            "shorten the question")
    raise QuestionError(f"the answer does not fit in this model's context: the prompt takes {what} and "
                        f"{max_new_tokens} new tokens were asked for, but {reads}; ask for at most "
                        f"{limit - prompt_tokens} new tokens or shorten the question")
