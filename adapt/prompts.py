"""User questions made safe for a chat template: one length limit and no smuggled special tokens.

A question is pasted into the model's prompt as text. If it contains one of the model's special
tokens (``<image>``, ``<|image_pad|>``, ``<|im_end|>`` ...) the processor counts it as a real
placeholder, and the run fails with transformers' "number of <image> tokens" error or, worse,
silently changes the prompt's structure. :func:`clean_question` removes them; the app, the CLI
and :meth:`adapt.backbones.Backbone.prepare` all call it, so the limit and the message are one.
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
