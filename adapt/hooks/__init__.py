"""Capture and steer text-to-image attention through transformers' attention extension point.

``layout``: where the image keys are (:class:`ImageSpan`); ``kernels``: the newest row's scores,
probabilities and output, written once; ``writes``: the hook points an intervention reads
(:class:`AttentionPoint`) and writes (:class:`LogitBias`, :class:`ImageProbs`), and the correction of the
output on the image block; ``recorder``: one recorder with explicit steps and preallocated buffers;
``window``: the text-window hook point (OPERA); ``interface``: the registered attention function.

Inside ``with recorder:``, for every decoder layer and every decoding step, the registered function
computes the post-softmax attention of the newest query token over the image keys (the prefill's last
row is step 0: it is the query that predicts the first generated token) and offers an intervention the
two named hook points of that row (:data:`HOOK_LOGITS`, :data:`HOOK_PROBS`); what it writes back
changes the layer's output for that token. Everything stays on the layer's device: the policy gets
tensors and returns tensors, and results meet on the host once, after decoding.
"""

from .interface import ATTN_IMPL, adapt_attention_forward, register
from .layout import ImageLayout, ImageSpan, View, Views
from .recorder import AttentionRecorder, StepLog
from .window import TextWindowCapture
from .writes import (HOOK_LOGITS, HOOK_PROBS, HOOK_TEXT_WINDOW, HOOKS, AttentionPoint, ImageProbs, Intervention,
                     LogitBias, SteeringPolicy, compile_writes)

__all__ = ["ATTN_IMPL", "adapt_attention_forward", "register", "ImageSpan", "ImageLayout", "View", "Views",
           "AttentionRecorder", "StepLog",
           "TextWindowCapture", "HOOK_LOGITS", "HOOK_PROBS", "HOOK_TEXT_WINDOW", "HOOKS", "AttentionPoint",
           "ImageProbs", "Intervention", "LogitBias", "SteeringPolicy", "compile_writes"]
