"""One check shared by the family tests: every registered method on a batch, each answer equal to its
single run, and a refused method refused in one line."""

import pytest

from adapt.anchor import BiasCache
from adapt.backbones import BackboneError
from adapt.config import AdaptConfig
from adapt.methods import NAMES, get_methods


def assert_every_method_batches_like_single(bb, images, questions, cache_dir, n: int = 4,
                                            refused: dict[str, str] | None = None, singles=None):
    """``refused``: method name → the pattern of its one-line refusal; ``singles``: the rows compared with
    their single runs (default every row). Every answer must have exactly ``n`` tokens."""
    refused = refused or {}
    cfg = AdaptConfig().replace(**{"anchor.num_noise": 2, "anchor.k": 2})
    for method in get_methods(NAMES, cfg, BiasCache(cache_dir)):
        if method.name in refused:
            with pytest.raises(BackboneError, match=refused[method.name]) as err:
                method.answer_batch(bb, images, questions, n, min_new_tokens=n)
            assert "\n" not in str(err.value)
            continue
        batch = method.answer_batch(bb, images, questions, n, min_new_tokens=n)
        assert [len(a.token_ids) for a in batch] == [n] * len(images), method.name
        for i in (range(len(images)) if singles is None else singles):
            single = method.answer(bb, images[i], questions[i], n, min_new_tokens=n)
            assert single.token_ids == batch[i].token_ids, (method.name, i)
