"""The pair builder: for every preference record, the anchor-guided image v_w (made with the model being
tuned, through the ADAPT core) and the noise image v_l, saved once with a manifest (paper Sec. 4.3).

The built set is a folder::

    meta.json        what it was built from (backbone, data, noise step) — a rebuild with others is refused
    manifest.jsonl   one pair per line: id, kind, question, chosen, rejected, and its three image files
    skipped.jsonl    the records that were broken, with the reason
    images/          <id>-original.png, <id>-enhanced.png, <id>-noise.png

It is written as it goes, so an interrupted build resumes where it stopped; training then reads the
images from disk without running the model again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

from PIL import Image

from ..anchor import BiasCache
from ..config import AdaptConfig
from ..enhance import enhance
from ..export.anchors import NoiseMaps, anchor_batch, original_geometry
from ..images import fit
from ..noise import noised_image
from ..anchor.build import backbone_id
from ..prompts import QuestionError, clean_question
from .config import TrainError
from .data import PreferenceRecord, RawSet, RecordError, decode_row

SIDES = ("original", "enhanced", "noise")
# how earlier versions skipped a record whose image reaches the model as several views: such a record is
# built now, so a resumed build tries it again instead of keeping the old skip
_OLD_VIEWS_SKIP = "are not exported yet"


class RecordSource(Protocol):
    """Records by index; ``get`` raises :class:`RecordError` for a broken one."""

    def __len__(self) -> int: ...

    def get(self, i: int) -> PreferenceRecord: ...


class RawSource:
    """A public set's undecoded rows, decoded one at a time."""

    def __init__(self, raw: RawSet):
        self.raw = raw

    def __len__(self) -> int:
        return len(self.raw)

    def get(self, i: int) -> PreferenceRecord:
        return decode_row(self.raw, i)


class ListSource:
    """Records already in memory (the world's own preference set)."""

    def __init__(self, records: list[PreferenceRecord]):
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def get(self, i: int) -> PreferenceRecord:
        return self.records[i]


def noise_seed(record_id: str) -> int:
    """A per-record seed for ε, stable across runs and machines (not Python's salted ``hash``)."""
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:4], "little")


@dataclass
class PairSet:
    """A built pair set on disk (see the module docstring)."""

    root: Path
    pairs: list[dict]
    meta: dict
    skipped: list[dict]

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, pair: dict, side: str) -> Image.Image:
        with Image.open(self.root / pair[side]) as im:
            return im.convert("RGB")

    def counts(self) -> dict:
        out: dict[str, int] = {}
        for p in self.pairs:
            out[p["kind"]] = out.get(p["kind"], 0) + 1
        return out


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line torn by an interrupted write: that record is built again
    return rows


def load_pairs(root: str | Path) -> PairSet:
    """A pair set built by :func:`build_pairs`."""
    root = Path(root)
    if not (root / "meta.json").exists():
        raise TrainError(f"{root}: not a built pair set (no meta.json)")
    meta = json.loads((root / "meta.json").read_text())
    pairs = sorted((p for p in _read_jsonl(root / "manifest.jsonl") if all((root / p[s]).exists() for s in SIDES)),
                   key=lambda p: p["index"])  # batches of several grids write out of order
    built = {p["index"] for p in pairs}
    return PairSet(root, pairs, meta, [s for s in _read_jsonl(root / "skipped.jsonl") if s["index"] not in built])


def build_pairs(backbone, source: RecordSource, out: str | Path, data: str, noise_step: int = 500,
                adapt_cfg: AdaptConfig | None = None, cache: BiasCache | None = None,
                progress: Callable[[int, int], None] | None = None,
                should_stop: Callable[[], bool] | None = None, batch_size: int = 8) -> PairSet:
    """Build (or finish building) the pair set of ``source`` in ``out`` and return it.

    v_w: the anchor-guided image of the record's image for its question (Eq. 1–9 and Sec. 4.1.4 with
    ``adapt_cfg``, the model being tuned), made by the exporter's batched anchor-only path
    (:func:`adapt.export.anchor_batch`: ``batch_size`` records of one image-token grid per model call,
    the noise images' maps once per question); v_l: the image under diffusion-style forward noise at
    ``noise_step`` (:func:`adapt.noise.noised_image`, a per-record seed). A broken record is written to
    ``skipped.jsonl`` with its reason and the others go on; an empty result is a :class:`TrainError`."""
    cfg = (adapt_cfg or AdaptConfig()).validate()
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    meta = {"backbone": backbone_id(backbone), "data": data, "noise_step": noise_step, "records": len(source),
            "anchor": cfg.to_dict()["anchor"], "enhance": cfg.to_dict()["enhance"]}
    meta_path = out / "meta.json"
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        changed = [k for k in ("backbone", "data", "noise_step", "anchor", "enhance") if old.get(k) != meta[k]]
        if changed:
            raise TrainError(f"{out} holds pairs built with another {', '.join(changed)}; give a new --pairs folder")
    else:
        meta_path.write_text(json.dumps(meta, indent=1))
    done = {p["index"] for p in _read_jsonl(out / "manifest.jsonl")} | \
        {p["index"] for p in _read_jsonl(out / "skipped.jsonl") if _OLD_VIEWS_SKIP not in p.get("reason", "")}
    n = len(source)
    noise = NoiseMaps(backbone, cfg, cache)
    with open(out / "manifest.jsonl", "a") as man, open(out / "skipped.jsonl", "a") as skip:
        def skipped(i: int, reason: str) -> None:
            skip.write(json.dumps({"index": i, "reason": reason}) + "\n")
            skip.flush()
            if progress is not None:
                progress(i + 1, n)

        def write(i: int, rec: PreferenceRecord, question: str, enhanced: Image.Image) -> None:
            noisy = noised_image(rec.image, step=noise_step, seed=noise_seed(rec.id))
            files = {}
            for side, im in (("original", rec.image), ("enhanced", enhanced), ("noise", noisy)):
                rel = f"images/{i:06d}-{side}.png"
                tmp = out / (rel + ".tmp")
                im.save(tmp, format="PNG")
                os.replace(tmp, out / rel)
                files[side] = rel
            man.write(json.dumps({"index": i, "id": rec.id, "kind": rec.kind, "question": question,
                                  "chosen": rec.chosen, "rejected": rec.rejected, **files,
                                  **({"meta": rec.meta} if rec.meta else {})}) + "\n")
            man.flush()
            if progress is not None:
                progress(i + 1, n)

        def run(batch: list[tuple[int, PreferenceRecord, str]]) -> None:
            groups: dict[tuple, list] = {}
            for item in batch:
                groups.setdefault(backbone.grid_key(fit(item[1].image)), []).append(item)
            for group in groups.values():
                try:
                    read = [fit(r.image) for _, r, _ in group]
                    anchors, grid = anchor_batch(backbone, read, [q for _, _, q in group], cfg, noise)
                except ValueError as exc:  # one record broke the batch: find it, keep the others
                    if len(group) > 1:
                        for item in group:
                            run([item])
                    else:
                        skipped(group[0][0], str(exc))
                    continue
                for (i, rec, q), a, im in zip(group, anchors, read):
                    # several views (base + hi-res, tiles + thumbnail, ...): each painted through its own geometry
                    enhanced = enhance(rec.image, a.anchor, cfg.enhance,
                                       geometry=original_geometry(backbone, im.size, rec.image.size, grid))
                    write(i, rec, q, enhanced)

        batch: list[tuple[int, PreferenceRecord, str]] = []
        for i in range(n):
            if i in done:
                continue
            if should_stop is not None and should_stop():
                break
            try:
                rec = source.get(i)
                try:
                    question = clean_question(rec.question, backbone.processor)
                except QuestionError as exc:
                    raise RecordError(str(exc)) from None
            except RecordError as exc:
                skipped(i, str(exc))
                continue
            batch.append((i, rec, question))
            if len(batch) >= batch_size:
                run(batch)
                batch = []
        if batch:
            run(batch)
    pairs = load_pairs(out)
    if not pairs.pairs:
        reasons = sorted({s["reason"] for s in pairs.skipped})[:3]
        raise TrainError(f"no usable preference pairs: all {len(pairs.skipped)} records were skipped"
                         + (f" ({'; '.join(reasons)})" if reasons else ""))
    return pairs
