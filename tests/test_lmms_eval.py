"""The lmms-eval adapter (an optional extra): tested when lmms-eval is installed, skipped otherwise."""

from __future__ import annotations

import pytest

lmms_eval = pytest.importorskip("lmms_eval", reason="lmms-eval (an optional extra) is not installed")

from lmms_eval.api.instance import Instance  # noqa: E402

from adapt.integrations.lmms_eval import AdaptLMM, manifest  # noqa: E402
from adapt.methods import get_method  # noqa: E402
from adapt.world import DEFAULT_DESCRIBE_PROMPT, make_split  # noqa: E402


@pytest.fixture(scope="module")
def model():
    m = AdaptLMM(pretrained="embedded", method="greedy", batch_size=2)
    scenes = make_split("validation", 3, seed=7)
    m.task_dict = {"toy": {"test": {i: {"image": s.image()} for i, s in enumerate(scenes)}}}
    return m


def _req(kind, i, context, second):
    return Instance(request_type=kind, arguments=(context, second, lambda doc: [doc["image"]], i, "toy", "test"), idx=i,
                    metadata={"task": "toy", "doc_id": i, "repeats": 1})


def test_generate_until_answers_with_the_method_and_cuts_at_until(model):
    docs = model.task_dict["toy"]["test"]
    reqs = [_req("generate_until", i, f"<image>\n{DEFAULT_DESCRIBE_PROMPT}", {"max_new_tokens": 40, "until": ["."]})
            for i in docs]
    reqs.append(_req("generate_until", 0, DEFAULT_DESCRIBE_PROMPT, {"max_new_tokens": 40}))
    got = model.generate_until(reqs)
    own = get_method("greedy").answer_batch(model.backbone, [d["image"] for d in docs.values()],
                                            [DEFAULT_DESCRIBE_PROMPT] * len(docs), 40)
    assert got[:3] == [a.text.split(".")[0] for a in own]
    assert got[3] == own[0].text and "." in got[3]


def test_loglikelihood_of_the_greedy_answer_is_greedy(model):
    doc = model.task_dict["toy"]["test"][0]
    text = get_method("greedy").answer(model.backbone, doc["image"], DEFAULT_DESCRIBE_PROMPT, 6).text
    (lp, greedy), (lp2, greedy2) = model.loglikelihood([
        _req("loglikelihood", 0, DEFAULT_DESCRIBE_PROMPT, text),
        _req("loglikelihood", 0, DEFAULT_DESCRIBE_PROMPT, "zebra zebra zebra")])
    assert greedy and lp < 0 and not greedy2 and lp2 < lp


def test_lmms_eval_resolves_the_entry_point_payload_to_the_adapter():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    registry = ModelRegistryV2()
    for m in registry._coerce_payload_to_manifests(manifest):  # what load_entrypoint_manifests does with it
        registry.register_manifest(m)
    assert registry.get_model_class("adapt") is AdaptLMM


def test_two_images_are_refused_with_a_message(model):
    req = Instance(request_type="generate_until", arguments=("Describe.", {}, lambda d: [d["image"], d["image"]],
                                                             0, "toy", "test"), idx=0,
                   metadata={"task": "toy", "doc_id": 0, "repeats": 1})
    with pytest.raises(ValueError, match="one image per question"):
        model.generate_until([req])
