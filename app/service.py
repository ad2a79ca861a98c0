"""What the UI calls: loaded backbones, one analysis, ground truth of world scenes, batch export.

No gradio here, so the benchmark script and tests can call the same code path the UI does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from adapt.threads import use_threads

log = logging.getLogger("adapt.app")

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = "embedded"


# --------------------------------------------------------------------------------------------
# backbones
# --------------------------------------------------------------------------------------------
class Models:
    """Loaded backbones, least recently used first out (at most ``capacity`` in memory)."""

    def __init__(self, default: str = EMBEDDED, capacity: int = 2):
        self.default = default or EMBEDDED
        self.capacity = max(1, capacity)
        self._loaded: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()
        self.errors: dict[str, str] = {}

    @staticmethod
    def key(name: str | None) -> str:
        name = (name or "").strip()
        return name or EMBEDDED

    def get(self, name: str | None = None):
        """The backbone called ``name`` (``"embedded"``, a local directory or a hub id)."""
        from adapt.backbones import BackboneError, load_backbone

        key = self.key(name or self.default)
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            try:
                bb = load_backbone(key)
            except BackboneError as exc:
                self.errors[key] = str(exc)
                raise
            except Exception as exc:  # a broken checkpoint, out of memory, ...
                self.errors[key] = f"{type(exc).__name__}: {exc}"
                raise BackboneError(f"could not load the model '{key}': {type(exc).__name__}: {exc}") from exc
            self.errors.pop(key, None)
            self._loaded[key] = bb
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
            return bb

    def warm(self, examples: list[tuple[str, str]] = ()) -> None:
        """Load the default backbone in the background (the first visitor does not wait) and fill
        the bias-map cache for the example questions (a short run: the cache key ignores length)."""
        def run():
            try:
                bb = self.get(self.default)
            except Exception as exc:
                log.warning("default model %s not loaded: %s", self.default, exc)
                return
            knobs = Knobs.defaults()
            knobs.max_new_tokens = knobs.k + 1
            for path, question in list(dict.fromkeys(examples))[:4]:
                try:
                    from adapt.images import load_image

                    analyse(bb, load_image(path), question, knobs)
                except Exception as exc:  # a warm-up failure is only a slower first click
                    log.warning("warm-up on %s failed: %s", path, exc)

        threading.Thread(target=run, name="adapt-warm", daemon=True).start()

    def is_loaded(self, name: str | None) -> bool:
        return self.key(name) in self._loaded


def embedded_available() -> bool:
    from adapt.backbones import EMBEDDED_DIR

    return (EMBEDDED_DIR / "config.json").exists()


def model_notice(default: str) -> str:
    """A warning for the page when the default model cannot be used ('' when all is well)."""
    if Models.key(default) == EMBEDDED:
        if embedded_available():
            return ""
        from adapt.backbones import EMBEDDED_DIR

        where = f"expected in `{_rel(EMBEDDED_DIR)}`"
        what = "The embedded model is not installed"
    else:
        path = Path(default).expanduser()
        looks_local = default.startswith((".", "/", "~")) or path.exists()
        if not looks_local or (path / "config.json").exists():
            return ""
        where = f"`{default}` has no config.json"
        what = "The default model is missing"
    return (f"⚠️ **{what}** ({where}). Open a saved trace, or choose another backbone (a local LLaVA-1.5 / "
            "Qwen2.5-VL checkpoint directory or hub id) under *Method settings*.")


def _rel(p: Path) -> str:
    try:
        return str(Path(p).resolve().relative_to(REPO))
    except ValueError:
        return str(p)


# --------------------------------------------------------------------------------------------
# configuration from the UI knobs
# --------------------------------------------------------------------------------------------
@dataclass
class Knobs:
    """The Inspect tab's method settings, in the order of its inputs (defaults: ``defaults()``)."""

    k: int
    tau: float
    alpha: float
    w_spec: float
    w_smooth: float
    w_focus: float
    num_noise: int
    enhance: bool
    max_new_tokens: int
    asi_layers: str

    @classmethod
    def defaults(cls) -> "Knobs":
        from adapt.config import AdaptConfig

        c = AdaptConfig()
        return cls(k=c.anchor.k, tau=c.asi.tau, alpha=c.asi.alpha, w_spec=c.anchor.w_spec,
                   w_smooth=c.anchor.w_smooth, w_focus=c.anchor.w_focus, num_noise=c.anchor.num_noise,
                   enhance=c.enhance.enabled, max_new_tokens=c.max_new_tokens, asi_layers=c.asi.layers)

    def config(self):
        """The :class:`adapt.config.AdaptConfig` of these knobs (raises ConfigError when invalid)."""
        from adapt.config import AdaptConfig, ConfigError

        def num(v, name, typ):
            try:
                return typ(v)
            except (TypeError, ValueError):
                raise ConfigError(f"{name} must be a number, got {v!r}") from None

        return AdaptConfig().replace(**{
            "anchor.k": num(self.k, "K", int),
            "asi.tau": num(self.tau, "τ", float),
            "asi.alpha": num(self.alpha, "α", float),
            "anchor.w_spec": num(self.w_spec, "ω_spec", float),
            "anchor.w_smooth": num(self.w_smooth, "ω_smooth", float),
            "anchor.w_focus": num(self.w_focus, "ω_focus", float),
            "anchor.num_noise": num(self.num_noise, "noise images", int),
            "anchor.debias": num(self.num_noise, "noise images", int) > 0,
            "enhance.enabled": bool(self.enhance),
            "max_new_tokens": num(self.max_new_tokens, "max new tokens", int),
            "asi.layers": (self.asi_layers or "all").strip() or "all",
        })


# --------------------------------------------------------------------------------------------
# ground truth of world scenes (the embedded model's world)
# --------------------------------------------------------------------------------------------
def image_key(image: Image.Image) -> str:
    img = image.convert("RGB")
    h = hashlib.sha1(f"{img.size}".encode())
    h.update(img.tobytes())
    return h.hexdigest()


class SceneRegistry:
    """Ground truth (object categories) of world scenes, found by the image's pixels."""

    def __init__(self, capacity: int = 512):
        self._known: OrderedDict[str, dict] = OrderedDict()
        self.capacity = capacity
        self._lock = threading.Lock()

    def add(self, image: Image.Image, meta: dict) -> str:
        key = image_key(image)
        with self._lock:
            self._known[key] = dict(meta)
            while len(self._known) > self.capacity:
                self._known.popitem(last=False)
        return key

    def add_key(self, key: str, meta: dict) -> None:
        with self._lock:
            self._known[key] = dict(meta)

    def lookup(self, image: Image.Image) -> dict | None:
        meta = self._known.get(image_key(image))
        return dict(meta) if meta is not None else None


def scene_meta(scene) -> dict:
    return {"objects": list(scene.categories), "scene_seed": scene.seed, "split": scene.split,
            "is_trap": bool(scene.is_trap), "source": "adapt.world"}


def random_trap_scene(rng_seed: int | None = None):
    """A fresh trap scene of the test split (a primary shape without its usual companion)."""
    import random

    from adapt.world.datasets import make_split

    i = random.Random(rng_seed).randrange(0, 5000)
    scenes = make_split("test", 2 * (i // 2) + 2)  # odd indices are traps
    return scenes[-1]


def add_hallucinations(trace) -> None:
    """Fill ``meta["hallucinated"]`` from the answers when ground truth is known and it is missing."""
    meta = trace.meta
    if not isinstance(meta, dict) or meta.get("objects") is None or meta.get("hallucinated"):
        return
    from adapt.world.language import read_objects

    truth = set(meta["objects"])
    hal = {}
    for run in ("unsteered", "steered"):
        a = getattr(trace, run)
        if a is not None:
            hal[run] = list(dict.fromkeys(c for c in read_objects(a.text) if c not in truth))
    meta["hallucinated"] = hal


# --------------------------------------------------------------------------------------------
# one analysis
# --------------------------------------------------------------------------------------------
_bias_cache = None
_bias_lock = threading.Lock()


def bias_cache():
    global _bias_cache
    with _bias_lock:
        if _bias_cache is None:
            from adapt.pipeline import default_bias_cache

            _bias_cache = default_bias_cache()
        return _bias_cache


def analyse(backbone, image: Image.Image, question: str, knobs: Knobs, meta: dict | None = None,
            progress=None):
    """One full analysis (anchor, both answers) → Trace, ground truth attached when known."""
    from adapt.pipeline import analyse as run

    config = knobs.config()
    use_threads(backbone)
    trace = run(backbone, image, question, config=config, bias_cache=bias_cache(), progress=progress,
                meta=dict(meta) if meta else None)
    if meta and not trace.meta:
        trace.meta = dict(meta)
    elif meta:
        for k, v in meta.items():
            trace.meta.setdefault(k, v)
    add_hallucinations(trace)
    return trace


# --------------------------------------------------------------------------------------------
# scratch files served to the browser
# --------------------------------------------------------------------------------------------
SCRATCH = Path(os.environ.get("ADAPT_APP_SCRATCH") or Path(tempfile.gettempdir()) / "adapt-app")
SCRATCH_TTL = 6 * 3600


def scratch_dir(prefix: str = "run") -> Path:
    """A fresh folder for one request's downloads; folders older than SCRATCH_TTL are removed."""
    SCRATCH.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for old in SCRATCH.iterdir():
        try:
            if now - old.stat().st_mtime > SCRATCH_TTL:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass
    return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=SCRATCH))


def safe_stem(name: str, fallback: str = "image") -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._") or fallback
    return stem[:80]


# --------------------------------------------------------------------------------------------
# batch export
# --------------------------------------------------------------------------------------------
MAX_EXPORT_FILES = 500
MAX_ZIP_TOTAL = 1024 * 1024 * 1024
IMAGE_EXT = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass
class Item:
    name: str
    data: bytes | None
    error: str = ""


def collect_items(paths: list[str]) -> tuple[list[Item], dict[str, str]]:
    """Images from uploaded files and zips (read in memory, names flattened), and any per-image
    questions found in ``.jsonl`` files (``{"image": name, "question": q}``)."""
    items: list[Item] = []
    questions: dict[str, str] = {}
    for p in paths or []:
        path = Path(p)
        name = path.name
        suffix = path.suffix.lower()
        try:
            if suffix == ".zip":
                _from_zip(path, items, questions)
            elif suffix == ".jsonl":
                questions.update(_questions_jsonl(path.read_text(encoding="utf-8", errors="replace")))
            else:
                items.append(Item(name, path.read_bytes()))
        except (OSError, zipfile.BadZipFile) as exc:
            items.append(Item(name, None, f"could not read {name}: {type(exc).__name__}"))
        if len(items) > MAX_EXPORT_FILES:
            raise ValueError(f"too many images: at most {MAX_EXPORT_FILES} per export")
    return items, questions


def _from_zip(path: Path, items: list[Item], questions: dict) -> None:
    from adapt.images import MAX_BYTES

    with zipfile.ZipFile(path) as z:
        members = [m for m in z.infolist() if not m.is_dir() and not Path(m.filename).name.startswith(".")
                   and "__MACOSX" not in m.filename]
        if sum(m.file_size for m in members) > MAX_ZIP_TOTAL:
            raise ValueError(f"{path.name}: more than {MAX_ZIP_TOTAL // 2**20} MB uncompressed")
        for m in members:
            name = Path(m.filename).name
            suffix = Path(name).suffix.lower()
            if suffix == ".jsonl":
                questions.update(_questions_jsonl(z.read(m).decode("utf-8", "replace")))
            elif suffix in IMAGE_EXT:
                if m.file_size > MAX_BYTES:
                    items.append(Item(name, None, f"{name}: larger than {MAX_BYTES // 2**20} MB"))
                else:
                    items.append(Item(name, z.read(m)))
            else:
                items.append(Item(name, None, f"{name}: not an image (skipped)"))


def _questions_jsonl(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("image") and row.get("question"):
            out[Path(str(row["image"])).name] = str(row["question"])
    return out


def parse_question_lines(text: str) -> dict[str, str]:
    """``name: question`` / ``name | question`` / ``name<TAB>question`` lines → {name: question}."""
    out = {}
    for line in (text or "").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^(.+?)\s*(?:\t|\|| :|:\s)\s*(.+)$", line)
        if m:
            out[Path(m.group(1).strip()).name] = m.group(2).strip()
    return out


def export_batch(backbone, paths: list[str], question: str, per_image: str, knobs: Knobs, progress=None,
                 overlays: bool = True):
    """Anchor-guided images + ``manifest.jsonl`` (the CLI's format, :func:`adapt.export.export_anchors`)
    as one zip; bad files are reported and skipped, the rest still exported.

    Returns (zip path, report rows [file, question, status, detail], preview images)."""
    from adapt.export import ExportItem, export_anchors

    items, questions = collect_items(paths)
    questions.update(parse_question_lines(per_image))
    if not items:
        raise ValueError("no images to export: upload image files or a zip of images")
    default_q = (question or "").strip()
    cfg = knobs.config()
    work = scratch_dir("export")
    src, out = work / "input", work / "anchor-export"
    src.mkdir()
    out.mkdir()
    todo, errors, used = [], [], set()
    for item in items:
        q = questions.get(item.name, default_q)
        item_id = safe_stem(item.name)
        while item_id in used:
            item_id += "_"
        used.add(item_id)
        if not item.error and not q:
            item.error = "no question: give one question for all images or one for this file"
        if item.error:
            errors.append({"id": item_id, "source": item.name, "question": q, "status": "error",
                           "error": item.error})
            continue
        path = src / (item_id + (Path(item.name).suffix.lower() or ".img"))
        path.write_bytes(item.data)
        todo.append(ExportItem(id=item_id, image=str(path), question=q))
    names = {it.id: Path(it.image).name for it in todo}
    names.update({e["id"]: e["source"] for e in errors})
    originals = {safe_stem(i.name): i.name for i in items}

    def report_progress(done, total, item_id):
        if progress:
            progress(done / max(1, total), f"{done}/{total}: {originals.get(item_id, item_id)}")

    if todo:
        use_threads(backbone)
        export_anchors(backbone, todo, out, cfg, cache=bias_cache(), overlays=overlays, progress=report_progress)
    manifest = out / "manifest.jsonl"
    with manifest.open("a") as f:
        for e in errors:
            f.write(json.dumps(e) + "\n")
    report, previews = [], []
    for line in manifest.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        name = originals.get(r.get("id"), r.get("source", ""))
        if r.get("status") == "ok":
            report.append([name, r.get("question", ""), "ok", r.get("output", "")])
            if len(previews) < 12 and r.get("output"):
                previews.append((str(out / r["output"]), name))
        else:
            err = str(r.get("error", "error"))
            report.append([name, r.get("question", ""), "skipped", err])
    zpath = work / "anchor-export.zip"
    with zipfile.ZipFile(zpath, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(out.rglob("*")):
            if f.is_file():
                z.write(f, Path("anchor-export") / f.relative_to(out))
    if progress:
        progress(1.0, "done")
    return zpath, report, previews
