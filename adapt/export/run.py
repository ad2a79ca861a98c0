"""The export itself: rows → decoded images (worker threads) → batched anchor-only runs (the model's
thread) → enhancement and PNG encoding (worker threads) → parquet shards, resumable and shardable.

Layout of ``OUT`` (a dataset the Hub accepts as is)::

    README.md                 dataset card: backbone, configuration, command, counts
    export.json               configuration and its hash (another configuration is refused)
    data/train-rRRR-NNNNN.parquet   shards, each written whole (temporary file, then renamed)
    manifest.jsonl            folder-style inputs: one line per row, the user's file names
    images/<id>.png           folder-style inputs: the anchor-guided images (overlays/ with --overlays)

Resume: rows already in a shard are skipped by ``row_id`` (the configuration is the same by
construction: another one is refused before anything runs). A row whose question changed since it
was written stops the run with one line (``overwrite`` redoes everything), never a silent skip.
Sharding: under ``accelerate launch`` process ``r`` of ``n`` takes the rows whose id hashes to ``r``
(the same row goes to the same process whatever the input's order); each writes its own shards and the
main process writes the manifest and the card once all are done.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import cv2
import numpy as np
from PIL import Image

from ..anchor import BiasCache
from ..backbones import Backbone, BackboneError
from ..backbones.geometry import LayoutGeometry
from ..config import AdaptConfig
from ..enhance import enhance, heat_of_layout, overlay, side_by_side
from ..images import MAX_BYTES, ImageError, fit, load_image
from ..anchor.build import anchor_from_maps, backbone_id
from ..prompts import QuestionError, clean_question
from .anchors import NoiseMaps, anchor_columns, anchor_runs, original_geometry
from .sources import ROW_ID, ExportError, Row, Source

# /2: images of several views are exported (their cells in `anchor`, each view listed in `views` with its
# newline flag); an OUT of /1 is refused on a rerun, not extended with rows of another schema
FORMAT = "adapt-anchor-export/2"
NEW_COLUMNS = ("anchor_guided", "anchor", "views", "grid", "size", "status", "error", "overlay")
OURS = ("data", "images", "overlays", "manifest.jsonl", "README.md", "export.json", "progress.json")


@dataclass
class ExportOptions:
    """How an export runs (none of these change its result, except ``overlays``)."""

    batch_size: int = 32
    workers: int = 2  # decoding and PNG encoding beside the model
    overlays: bool = False
    overwrite: bool = False
    shard_rows: int = 500  # rows per parquet shard: what a kill can lose
    command: str = ""  # for the dataset card


@dataclass
class Dist:
    """This process's place in a sharded run (``accelerate launch``), or the only process."""

    rank: int = 0
    world: int = 1
    barrier: Callable[[], None] = field(default=lambda: None, repr=False)

    @property
    def main(self) -> bool:
        return self.rank == 0


def distributed() -> Dist:
    """This process's rank under ``accelerate launch`` / ``torchrun`` (``WORLD_SIZE`` > 1), else the only
    process. The barrier is a gloo process group (host memory only, so it serves GPU runs as well); its
    timeout is long because the main process waits at the end for the slowest share."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Dist()
    from datetime import timedelta

    import torch.distributed as td

    if not td.is_initialized():
        td.init_process_group("gloo", timeout=timedelta(hours=48))
    return Dist(td.get_rank(), td.get_world_size(), td.barrier)


def shard_of(row_id: str, world: int) -> int:
    """The process that exports ``row_id``: a hash of the id alone, so input order does not matter."""
    return int(hashlib.sha256(row_id.encode()).hexdigest()[:8], 16) % world


@dataclass
class ExportResult:
    ok: int = 0  # exported in this run (this process)
    error: int = 0
    skipped: int = 0  # already in OUT
    failed: list = field(default_factory=list)  # (name, reason) of this run's errors
    cancelled: bool = False
    rows: int = 0  # rows in OUT at the end (main process)
    rows_ok: int = 0
    rows_error: int = 0


def output_features(source: Source, overlays: bool):
    from datasets import Image as ImageFeature, List, Value

    clash = [c for c in (ROW_ID, *NEW_COLUMNS) if c in source.features and c != source.id_column]
    if clash and not (clash == [ROW_ID] and source.id_column == ROW_ID):
        raise ExportError(f"input column(s) {', '.join(clash)} clash with the export's own columns; rename them")
    f = source.features.copy()
    f[ROW_ID] = Value("string")
    f["anchor_guided"] = ImageFeature()
    f["anchor"] = List(Value("float32"))  # W, row-major over each view's cells, views one after another
    f["views"] = List({"name": Value("string"), "offset": Value("int32"), "rows": Value("int32"),
                       "cols": Value("int32"), "newline": Value("bool")})
    f["grid"] = List(Value("int32"))
    f["size"] = List(Value("int32"))  # (width, height) of the exported image
    f["status"] = Value("string")
    f["error"] = Value("string")
    if overlays:
        f["overlay"] = ImageFeature()
    return f


def export_config(backbone: Backbone, cfg: AdaptConfig, source: Source, opts: ExportOptions) -> dict:
    d = cfg.to_dict()
    return {"format": FORMAT, "backbone": backbone_id(backbone), "anchor": d["anchor"], "enhance": d["enhance"],
            "overlays": opts.overlays, "input": {"kind": source.kind, "image_column": source.image_column,
                                                 "question_column": source.question_column,
                                                 "id_column": source.id_column}}


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _difference(old: dict, new: dict) -> str:
    a, b = _flat(old), _flat(new)
    diffs = [f"{k} {a.get(k)!r} → {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return ", ".join(diffs[:3]) + (f" and {len(diffs) - 3} more" if len(diffs) > 3 else "")


def prepare_out(out: Path, config: dict, overwrite: bool, dist: "Dist") -> None:
    """Refuse (or, with ``overwrite``, clear) an ``out`` that holds an export of another configuration;
    a ``data/`` folder that no export of this tool wrote is never touched.

    Every process reads the folder before any writes to it (a barrier between), so all of them see the
    same state and refuse alike; then the main process clears it where asked."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file, not a folder")
    meta = out / "export.json"
    old = None
    if meta.exists():
        try:
            old = json.loads(meta.read_text())
        except (OSError, json.JSONDecodeError):
            old = {"format": "unreadable"}
    elif (out / "data").exists():
        raise ExportError(f"{out} holds a data/ folder this export did not write; give another --out")
    elif (out / "manifest.jsonl").exists():
        old = {"format": "the folder export of an earlier version"}
    stale = old is not None and old.get("config") != config
    if stale and not overwrite:
        what = _difference(old.get("config") or {"format": old.get("format")}, config)
        raise ExportError(f"{out} holds an export with another configuration ({what}); "
                          "give another --out, or --overwrite to redo it")
    dist.barrier()
    if (stale or overwrite) and dist.main:
        for name in OURS:  # the export's own files only
            p = out / name
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    if dist.main or (old is None and not overwrite):  # the same content from whichever process comes first
        out.mkdir(parents=True, exist_ok=True)
        # the mark before data/: a folder with data/ and no mark is someone else's
        _write_atomic(out / "export.json", json.dumps({"config": config, "hash": config_hash(config)}, indent=1))
        (out / "data").mkdir(exist_ok=True)
    dist.barrier()


def _write_atomic(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data if isinstance(data, bytes) else data.encode())
    os.replace(tmp, path)


def read_rows(out: Path, columns: list[str]) -> list[dict]:
    """The given columns of every row in ``out``'s shards (those a shard lacks are None)."""
    import pyarrow.parquet as pq

    rows = []
    for f in sorted((out / "data").glob("*.parquet")):
        have = set(pq.read_schema(f).names)
        t = pq.read_table(f, columns=[c for c in columns if c in have])
        rows += [{c: r.get(c) for c in columns} for r in t.to_pylist()]
    return rows


class ShardWriter:
    """Rows into ``data/train-rRRR-NNNNN.parquet``, each shard written whole."""

    def __init__(self, out: Path, rank: int, features, shard_rows: int):
        self.dir, self.rank, self.features, self.shard_rows = out / "data", rank, features, shard_rows
        self.dir.mkdir(parents=True, exist_ok=True)
        taken = [int(p.stem.rsplit("-", 1)[1]) for p in self.dir.glob(f"train-r{rank:03d}-*.parquet")]
        self.seq = max(taken, default=-1) + 1
        self.buffer: list[dict] = []

    def add(self, row: dict) -> None:
        self.buffer.append(row)
        if len(self.buffer) >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.dir / f"train-r{self.rank:03d}-{self.seq:05d}.parquet"
        tmp = self.dir / f".{path.name}.tmp"
        # the schema carries the features (Image columns and all), so load_dataset reads them back as such
        table = pa.Table.from_pylist([self.features.encode_example(r) for r in self.buffer],
                                     schema=self.features.arrow_schema)
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        self.seq += 1
        self.buffer = []


def _png(image: Image.Image) -> bytes:
    """Lossless PNG, fast: zlib level 1 with the run-length strategy (about half PIL's time at level 1,
    and smaller), in OpenCV, which lets the model's thread run meanwhile."""
    bgr = np.ascontiguousarray(np.asarray(image.convert("RGB"))[..., ::-1])
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1,
                                         cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE])
    if not ok:
        raise OSError("PNG encoding failed")
    return buf.tobytes()


class _Exporter:
    def __init__(self, backbone, source: Source, out: Path, cfg: AdaptConfig, cache, opts: ExportOptions):
        self.bb, self.source, self.out, self.cfg, self.opts = backbone, source, out, cfg, opts
        self.noise = NoiseMaps(backbone, cfg, cache)
        self.processor = getattr(backbone, "processor", None)

    # worker side --------------------------------------------------------------------------------
    def decode(self, row: Row):
        """``(row, original, model_input, raw_bytes, error)``; ``raw_bytes`` only for an image that
        decodes (the row keeps it even when it fails for another reason); errors name no path."""
        if row.image is None:
            return row, None, None, None, row.error
        try:
            if isinstance(row.image, bytes):
                data = row.image
            else:
                path = Path(row.image)
                if not path.is_file():
                    raise ImageError("image: no such file")
                if path.stat().st_size > MAX_BYTES:
                    raise ImageError(f"image: file is larger than {MAX_BYTES // 2**20} MB")
                data = path.read_bytes()
            original = load_image(data, max_side=None)  # refuses huge pixel counts before decoding
        except ImageError as exc:
            msg = str(exc)  # load_image calls bytes "image"; the report names the row already
            return row, None, None, None, row.error or (msg[len("image: "):] if msg.startswith("image: ") else msg)
        except OSError as exc:
            return row, None, None, None, row.error or f"cannot read the image ({type(exc).__name__})"
        if row.error:
            return row, None, None, data, row.error
        try:
            row.question = clean_question(row.question, self.processor)
        except QuestionError as exc:
            return row, None, None, data, str(exc)
        return row, original, fit(original), data, ""

    def finish(self, row: Row, original, data, run, grid, read_size, error: str) -> dict:
        """The output row: the anchor from the run's maps, the enhancement, PNGs (a worker thread)."""
        values = dict(row.values)
        col = self.source.image_column
        v = values.get(col)
        if isinstance(v, dict):
            # the input image travels with the row under the user's file name alone; one that does not
            # decode is left out (the reason is in ``error``), so the dataset stays loadable
            values[col] = {"bytes": data, "path": Path(str(v.get("path") or row.name)).name} if data else None
        blank = {"anchor_guided": None, "anchor": None, "views": None, "grid": None, "size": None}
        if self.opts.overlays:
            blank["overlay"] = None
        if error:
            return {**values, **blank, "status": "error", "error": error}
        try:
            anchor = anchor_from_maps(*run)
            geometry = original_geometry(self.bb, read_size, original.size, grid)
            enhanced = enhance(original, anchor.anchor, self.cfg.enhance, geometry=geometry)
            png = _png(enhanced)
            result = {**values, "anchor_guided": {"bytes": png, "path": f"{row.row_id}.png"},
                      **anchor_columns(anchor.anchor, grid), "size": list(original.size), "status": "ok",
                      "error": None}
            ov = None
            if self.opts.overlays:
                # several views: their maps drawn on the image through their own geometries first
                heat = heat_of_layout(anchor.anchor, original.size, 0.0, geometry)[0] \
                    if isinstance(geometry, LayoutGeometry) else anchor.anchor
                ov = _png(side_by_side(original, overlay(original, heat), enhanced))
                result["overlay"] = {"bytes": ov, "path": f"{row.row_id}.png"}
            if self.source.writes_files:
                _write_atomic(self.out / "images" / f"{row.row_id}.png", png)
                if ov is not None:
                    _write_atomic(self.out / "overlays" / f"{row.row_id}.png", ov)
            return result
        except (ValueError, OSError) as exc:
            return {**values, **blank, "status": "error", "error": str(exc)}

    # model side ---------------------------------------------------------------------------------
    def anchors(self, decoded: list) -> list:
        """``(row, original, data, run, grid, read_size, error)`` for each decoded row (``run``: the
        arguments of :func:`adapt.anchor.build.anchor_from_maps`, evaluated in :meth:`finish`; ``read_size``:
        the size of the copy the model read), batched by layout."""
        results = {}
        good = [d for d in decoded if not d[4]]
        for d in decoded:
            if d[4]:
                results[id(d)] = (d[0], None, d[3], None, None, None, d[4])
        groups: dict[tuple, list] = {}
        for d in good:
            groups.setdefault(self.bb.grid_key(d[2]), []).append(d)
        bs = self.opts.batch_size
        for members in groups.values():
            for i in range(0, len(members), bs):
                self._run(members[i:i + bs], results)
        return [results[id(d)] for d in decoded]

    def _run(self, chunk: list, results: dict) -> None:
        try:
            anchors, grid = anchor_runs(self.bb, [d[2] for d in chunk], [d[0].question for d in chunk],
                                        self.cfg, self.noise)
        except (BackboneError, ValueError) as exc:
            if len(chunk) > 1:  # find the row that broke the batch; the others still export
                for d in chunk:
                    self._run([d], results)
                return
            d = chunk[0]
            results[id(d)] = (d[0], None, d[3], None, None, None, str(exc))
            return
        for d, a in zip(chunk, anchors):
            results[id(d)] = (d[0], d[1], d[3], a, grid, d[2].size, "")


def export_dataset(backbone: Backbone, source: Source, out: str | Path, cfg: AdaptConfig | None = None,
                   cache: BiasCache | None = None, opts: ExportOptions | None = None,
                   progress: Callable[[int, int | None, str], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, dist: Dist | None = None) -> ExportResult:
    """Export anchor-guided images of every row of ``source`` into ``out`` (see the module docstring).

    ``progress(done, total, name)`` after each row this process finishes (``total`` an estimate, or
    None); ``should_stop()`` is read between batches: what is done is kept and a rerun resumes. A bad
    row becomes a row with ``status: error``; what stops the whole run is an :class:`ExportError`."""
    cfg = (cfg or AdaptConfig()).validate()
    opts = opts or ExportOptions()
    dist = dist or Dist()
    out = Path(out)
    features = output_features(source, opts.overlays)
    config = export_config(backbone, cfg, source, opts)
    prepare_out(out, config, opts.overwrite, dist)
    if source.writes_files:
        (out / "images").mkdir(exist_ok=True)
        if opts.overlays:
            (out / "overlays").mkdir(exist_ok=True)
    qcol = source.question_column
    done = {r[ROW_ID]: r[qcol] for r in read_rows(out, [ROW_ID, qcol])}
    total = None if source.num_rows is None else max(0, source.num_rows - len(done)) // dist.world
    ex = _Exporter(backbone, source, out, cfg, cache, opts)
    writer = ShardWriter(out, dist.rank, features, opts.shard_rows)
    result = ExportResult()
    window = max(opts.batch_size * 2, 4)  # rows decoded ahead; also how often a stop is read

    def todo():
        for row in source.rows():
            if shard_of(row.row_id, dist.world) != dist.rank:
                continue
            if row.row_id in done:
                if (done[row.row_id] or "") != row.question:
                    writer.flush()
                    raise ExportError(f"{out} holds {row.name!r} exported for the question {done[row.row_id]!r}, "
                                      f"this run asks {row.question!r}; give another --out, or --overwrite to redo it")
                result.skipped += 1
                continue
            yield row

    def windows():
        buf = []
        for row in todo():
            buf.append(row)
            if len(buf) >= window:
                yield buf
                buf = []
        if buf:
            yield buf

    def collect(fut):
        row = fut.result()
        writer.add(row)
        if row["status"] == "ok":
            result.ok += 1
        else:
            result.error += 1
            name = row.get(source.name_column) if source.name_column else row[ROW_ID]
            result.failed.append((name or row[ROW_ID], row["error"]))
        if progress is not None:
            progress(result.ok + result.error, total, str(row.get(source.name_column or ROW_ID) or row[ROW_ID]))

    with ThreadPoolExecutor(max(1, opts.workers)) as pool:
        finishing: deque = deque()
        it = windows()
        nxt = next(it, None)
        pending = [pool.submit(ex.decode, r) for r in nxt] if nxt else None
        while pending is not None:
            if should_stop is not None and should_stop():
                result.cancelled = True
                break
            decoded = [f.result() for f in pending]
            nxt = next(it, None)  # the next window decodes while the model runs this one
            pending = [pool.submit(ex.decode, r) for r in nxt] if nxt else None
            for rec in ex.anchors(decoded):
                finishing.append(pool.submit(ex.finish, *rec))
            while finishing and (finishing[0].done() or len(finishing) > window):
                collect(finishing.popleft())
        while finishing:
            collect(finishing.popleft())
    writer.flush()
    dist.barrier()
    if dist.main:
        finalize(out, source, config, opts, result)
    return result


def finalize(out: Path, source: Source, config: dict, opts: ExportOptions, result: ExportResult) -> None:
    """The merged manifest (folder-style inputs) and the dataset card, from every process's shards."""
    name_col = source.name_column
    cols = [ROW_ID, source.question_column, "status", "error", "grid", "size"] + ([name_col] if name_col else [])
    rows = sorted(read_rows(out, cols), key=lambda r: r[ROW_ID])
    result.rows = len(rows)
    result.rows_ok = sum(r["status"] == "ok" for r in rows)
    result.rows_error = result.rows - result.rows_ok
    h = config_hash(config)
    if source.writes_files:
        lines = []
        for r in rows:
            line = {"id": r[ROW_ID], "source": r.get(name_col) or r[ROW_ID], "question": r[source.question_column],
                    "status": r["status"], "config": h}
            if r["status"] == "ok":
                line.update(output=f"images/{r[ROW_ID]}.png", size=r["size"], grid=r["grid"])
                if opts.overlays:
                    line["overlay"] = f"overlays/{r[ROW_ID]}.png"
            else:
                line["error"] = r["error"]
            lines.append(json.dumps(line))
        _write_atomic(out / "manifest.jsonl", "".join(l + "\n" for l in lines))
    _write_atomic(out / "README.md", card(source, config, opts, result))


def _shown_backbone(bid: str) -> str:
    """The model's folder name or hub id with its family: never the server's path to it."""
    family, name = (bid.split("|") + ["", ""])[:2]
    return f"{Path(name).name or name} ({family})"


def card(source: Source, config: dict, opts: ExportOptions, result: ExportResult) -> str:
    """The dataset card: what produced the dataset and how to load it."""
    cols = [c for c in source.features] + [ROW_ID, "anchor_guided", "anchor", "views", "grid", "size", "status",
                                           "error"] + (["overlay"] if opts.overlays else [])
    conf = json.dumps({k: config[k] for k in ("anchor", "enhance")}, indent=1)
    return f"""---
configs:
- config_name: default
  data_files:
  - split: train
    path: data/train-*.parquet
tags:
- adapt
- anchor-guided
---
# Anchor-guided images

Made with ADAPT's `export-anchors` (the anchor-guided visual enhancement of the paper's Sec. 4.1.4:
the visual anchor W from the first K decoding steps' text-to-image attention, debiased with noise
images, then low-anchor regions faded toward white) from {source.description}.

- backbone: `{_shown_backbone(config['backbone'])}`
- configuration hash: `{config_hash(config)}`
- command: `{opts.command or '(library call)'}`
- rows: {result.rows} ({result.rows_ok} ok, {result.rows_error} with `status: error` and the reason in `error`)

Columns: {', '.join(f'`{c}`' for c in cols)}. `anchor` is W over the image-token cells: each view's
`rows` × `cols` cells row-major, starting at the view's `offset`, views one after another (`views` lists
them; one grid: the view `image`, `grid` = rows, cols; several views, e.g. a base view and tiles:
`grid` = 1, len(anchor)); `newline` marks a view whose rows each end in one more image token in the
model's sequence (weight 0, not in `anchor`). `anchor_guided` is the enhanced image at the original's
size (`size` = width, height).

```python
import numpy as np
from datasets import load_dataset
ds = load_dataset("path/to/this/folder", split="train")
row = ds[0]
a = np.array(row["anchor"])
grids = {{v["name"]: a[v["offset"]:v["offset"] + v["rows"] * v["cols"]].reshape(v["rows"], v["cols"])
         for v in row["views"]}}
```

Configuration:

```json
{conf}
```
"""
