"""``python -m adapt eval --task NAME``: the options of the registered tasks and the glue to the runner."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ..argtypes import float_range, int_range, positive_int
from . import pope
from .formats import DataError


def add_task_args(p: argparse.ArgumentParser) -> None:
    """The ``--task`` option and the data options of the real-image tasks (local paths only)."""
    from .tasks import TASKS

    g = p.add_argument_group("registered tasks (--task; without it: --benchmark world as before)")
    g.add_argument("--task", default=None, help=f"run a registered task through the resumable runner: "
                                                f"{' | '.join(TASKS)}")
    g.add_argument("--images", help="folder of the task's images (chair-coco, pope, amber, refcoco, mmhal)")
    g.add_argument("--annotations", help="chair-coco: folder with COCO instances_*.json and captions_*.json; "
                                         "amber: its annotations.json")
    g.add_argument("--questions", help="pope: question JSONL file(s), comma-separated (one per split); "
                                       "mmhal: its response_template.json")
    g.add_argument("--queries", help="amber: its query JSON (query_all.json)")
    g.add_argument("--association", help="amber: its relation.json")
    g.add_argument("--safe-words", help="amber: its safe_words.txt")
    g.add_argument("--sample", type=positive_int, default=500, help="chair-coco: images drawn from the sorted ids")
    g.add_argument("--sample-seed", type=int_range(0, 2**32 - 1), default=0, help="chair-coco: the seed of that draw")
    g.add_argument("--ids", help="chair-coco: read the image ids of a published run instead (one per line)")
    g.add_argument("--parser", default=None, choices=list(pope.PARSERS),
                   help="yes/no answer parser (pope: original by default; amber: strict)")
    g.add_argument("--prompt-suffix", default="", help="pope: text added after each question")
    g.add_argument("--items", help="refcoco: grounding items JSONL (image, expression, candidates, gold)")
    g.add_argument("--grounding-prompt", default=None,
                   help="refcoco: the question, with {expression} (default: 'Where is {expression} in the image?')")
    g.add_argument("--scenes", type=positive_int, default=200, help="world-grounding: world scenes whose items are scored")
    g.add_argument("--judge-url", default=None,
                   help="mmhal: an OpenAI-compatible API base (…/v1) or …/chat/completions URL; without it no judge is called")
    g.add_argument("--judge-model", default=None, help="mmhal: the judge's model name (needed with --judge-url)")
    g.add_argument("--judge-key-env", default="OPENAI_API_KEY",
                   help="mmhal: the environment variable holding the judge's API key (sent as a bearer token if set)")
    g.add_argument("--judge-timeout", type=float_range(0.0, 3600.0, lo_open=True), default=60.0,
                   help="mmhal: seconds per judge request (at most 3600)")


def build_task(args, config=None, cache=None):
    """The task the command line names, built from its options (``config`` / ``cache``: the method
    configuration and bias-map cache, for the tasks that build anchors themselves)."""
    from .tasks import get_task

    name = args.task
    tokens = args.max_new_tokens
    if name == "world":
        seeds = [int(x) for x in args.seeds.split(",") if x.strip()] if args.seeds else None
        return get_task("world", split=args.split, seed=args.seed, seeds=seeds, limit=args.limit, pope=not args.no_pope,
                        batch_size=args.batch_size, **({"describe_tokens": tokens} if tokens else {}))
    if name == "chair-coco":
        return get_task(name, annotations=args.annotations, images=args.images, sample=args.sample,
                        sample_seed=args.sample_seed, ids_file=args.ids, **({"max_new_tokens": tokens} if tokens else {}))
    if name == "pope":
        files = [f.strip() for f in (args.questions or "").split(",") if f.strip()]
        return get_task(name, questions=files, images=args.images, parser=args.parser or "original",
                        prompt_suffix=args.prompt_suffix, **({"max_new_tokens": tokens} if tokens else {}))
    if name == "amber":
        return get_task(name, queries=args.queries, annotations=args.annotations, association=args.association,
                        images=args.images, safe_words=args.safe_words, parser=args.parser or "strict",
                        **({"max_new_tokens": tokens} if tokens else {}))
    if name == "refcoco":
        from .tasks.grounding import REFCOCO_PROMPT

        return get_task(name, items=args.items, images=args.images, prompt=args.grounding_prompt or REFCOCO_PROMPT,
                        config=config, cache=cache)
    if name == "world-grounding":
        return get_task(name, split=args.split, seed=args.seed, scenes=args.scenes, config=config, cache=cache)
    if name == "mmhal":
        from .mmhal import Judge

        judge = None
        if args.judge_url:
            if not args.judge_model:
                raise DataError("task mmhal: --judge-url needs --judge-model")
            judge = Judge(args.judge_url, args.judge_model, args.judge_key_env, args.judge_timeout)
        q = (args.questions or "").strip()
        return get_task(name, questions=q, images=args.images, judge=judge,
                        **({"max_new_tokens": tokens} if tokens else {}))
    return get_task(name)  # raises: unknown task


class ProgressBar:
    """A tqdm bar on stderr that appears with the first progress report: a run refused before it
    starts prints its one error line and nothing else."""

    def __init__(self, desc: str, unit: str, **kw):
        self.desc, self.unit, self.kw, self.bar = desc, unit, kw, None

    def update(self, done: int, total: int, stage: str) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(desc=self.desc, unit=self.unit, file=sys.stderr, **self.kw)
        self.bar.total = total
        self.bar.set_postfix_str(stage)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_task_cli(args, load, build_config, cache) -> int:
    """Run ``--task`` for the CLI: the task, the methods, the backbone, a progress bar with ETA."""
    from ..methods import get_methods
    from .runner import Shard, run_task

    shard = Shard.from_env()
    try:
        cfg = build_config(args)
        task = build_task(args, cfg, cache(args))
        methods = get_methods(args.method.split(","), cfg, cache(args))
        task.items()  # read the data before loading a model: a wrong path fails in a second
    except ValueError as exc:  # DataError and an unknown task / method / parser
        raise DataError(str(exc)) from None
    if shard.count > 1 and args.device and args.device.startswith("cuda") and ":" not in args.device:
        args.device = f"cuda:{os.environ.get('LOCAL_RANK', shard.index)}"  # one GPU per process
    backbone = load(args)
    bar = ProgressBar(f"{task.name}" + (f" [{shard.index}/{shard.count}]" if shard.count > 1 else ""), "item",
                      disable=None)
    # the world's --limit is scenes per seed, part of its scene list; elsewhere it is the first N items
    summary = run_task(backbone, task, methods, args.out, config={"method_config": cfg.to_dict()},
                       batch_size=args.batch_size, limit=None if args.task == "world" else args.limit, shard=shard,
                       progress=bar.update, overwrite=args.overwrite)
    bar.close()
    if summary is None:
        print(f"process {shard.index} of {shard.count}: done; process 0 merges and writes the summary",
              file=sys.stderr)
        return 0
    from .tables import print_tables

    print_tables(summary, task.table_keys)
    out = Path(args.out)
    print(f"wrote {out / 'summary.json'}, {out / 'table.md'}, {out / 'efficiency.md'}, {out / 'summary.csv'}, "
          f"per-item {out}/items-<method>.jsonl, {out / 'run.json'}")
    return 0

