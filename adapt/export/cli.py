"""``python -m adapt export-anchors``: arguments and the command (see :mod:`adapt.export`)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from pathlib import Path

from ..prompts import MAX_QUESTION_CHARS

MAX_FAILED_LINES = 20


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number ≥ 1, got {text!r}") from None
    if not 1 <= n <= 4096:
        raise argparse.ArgumentTypeError(f"a whole number 1 … 4096, got {n}")
    return n


def add_arguments(e: argparse.ArgumentParser) -> None:
    e.add_argument("--input", required=True,
                   help="folder of images, JSONL of {image, question, id}, parquet shards (Hub layout), a "
                        "save_to_disk folder, or a Hub id")
    e.add_argument("--question", help="question for every row that has none "
                                      f"(at most {MAX_QUESTION_CHARS} characters)")
    e.add_argument("--out", required=True, help="output dataset folder (parquet shards under data/, a card)")
    e.add_argument("--image-column", default="image")
    e.add_argument("--question-column", default="question")
    e.add_argument("--id-column", default=None, help="a unique id per row (default: 'id' if present, else the "
                                                     "row's index)")
    e.add_argument("--split", default="train")
    e.add_argument("--batch-size", type=_positive, default=32,
                   help="images per model call (one grid together; lower it for a large model on a small GPU)")
    e.add_argument("--workers", type=_positive, default=2, help="threads decoding and encoding images")
    e.add_argument("--shard-rows", type=_positive, default=500, help="rows per parquet shard")
    e.add_argument("--overlays", action="store_true", help="also write original | heat map | enhanced strips")
    e.add_argument("--overwrite", action="store_true", help="redo an OUT that holds another configuration")


def cmd_export(args) -> int:
    from tqdm import tqdm

    from ..cli import _cache, _question, build_config, load
    from .run import ExportOptions, distributed, export_dataset
    from .sources import open_source

    cfg = build_config(args)
    if args.question is not None:
        args.question = _question(args.question)
    source = open_source(args.input, args.question, args.image_column, args.question_column, args.id_column,
                         args.split)
    dist = distributed()
    if dist.world > 1 and args.device is None and args.device_map is None:
        import torch

        if torch.cuda.is_available():  # one GPU per process, as accelerate launch lays them out
            args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', dist.rank)) % torch.cuda.device_count()}"
    backbone = load(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=source.num_rows and source.num_rows // dist.world, desc=f"anchors[{dist.rank}]"
               if dist.world > 1 else "anchors", unit="img", file=sys.stderr, disable=None)

    def progress(done, total, name):
        if total is not None and bar.total != total:
            bar.total = total
        bar.update(done - bar.n)
        if dist.main:
            tmp = out / ".progress.json"
            tmp.write_text(json.dumps({"done": done, "total": total, "stage": name}))
            tmp.replace(out / "progress.json")

    command = "python -m adapt export-anchors " + " ".join(shlex.quote(a) for a in sys.argv[2:]) \
        if sys.argv[1:2] == ["export-anchors"] else "python -m adapt export-anchors"
    opts = ExportOptions(batch_size=args.batch_size, workers=args.workers, overlays=args.overlays,
                         overwrite=args.overwrite, shard_rows=args.shard_rows, command=command)
    try:
        r = export_dataset(backbone, source, out, cfg, _cache(args), opts, progress=progress, dist=dist)
    finally:
        bar.close()
        if dist.world > 1:
            import torch.distributed as td

            td.destroy_process_group()
    where = f" (process {dist.rank} of {dist.world})" if dist.world > 1 else ""
    print(f"exported {r.ok}, already done {r.skipped}, errors {r.error}{where}"
          + (f"; {out} holds {r.rows} rows ({r.rows_ok} ok, {r.rows_error} errors): "
             f"datasets.load_dataset({str(out)!r}, split='train')" if dist.main else ""))
    for name, error in r.failed[:MAX_FAILED_LINES]:
        print(f"failed: {name}: {' '.join(str(error).split())}")
    if len(r.failed) > MAX_FAILED_LINES:
        print(f"... and {len(r.failed) - MAX_FAILED_LINES} more (rows with status 'error' in {out})")
    return 0 if r.error == 0 else 3
