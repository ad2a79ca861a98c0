"""Procedural scenes of the synthetic world: layout, sampling (with co-occurrence priors), rendering.

Everything is deterministic from an integer seed.  A scene is a few coloured shapes on a
textured background, one per cell of a 3x3 layout, each with an exact pixel box.

Priors: the world has *pairs* (primary -> companion).  In the training distribution a scene
that contains the primary contains its companion with probability ``prior_strength``; the
companion is often small and faint (hard to see), so a model learns to name it from the
primary's presence as much as from the pixels.  *Trap* scenes contain a primary without its
companion: a prior-driven model names the absent companion.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

CATEGORIES = ["circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon", "ring", "arrow"]
COLOURS = {
    "red": (215, 38, 38),
    "green": (34, 160, 60),
    "blue": (38, 80, 215),
    "yellow": (225, 190, 20),
    "purple": (140, 55, 185),
    "orange": (240, 125, 20),
}
COLOUR_NAMES = list(COLOURS)
# primary -> companion.  Companions are the ones that are often hard to see.
PAIRS = {"star": "moon", "heart": "ring", "square": "diamond"}
PARTNER = {**PAIRS, **{b: a for a, b in PAIRS.items()}}

IMAGE_SIZE = 96
GRID = 3  # layout cells per side
CELL = IMAGE_SIZE // GRID
POSITIONS = [
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
]
SIZE_RANGES = {"large": (22, 28), "medium": (16, 21), "small": (11, 14), "tiny": (7, 9)}

# Defaults of the world (all overridable through WorldConfig).
DEFAULT_PRIOR_STRENGTH = 0.9


@dataclass(frozen=True)
class WorldConfig:
    prior_strength: float = DEFAULT_PRIOR_STRENGTH  # P(companion | primary) outside trap scenes
    companion_hard: float = 0.5  # P(a companion is tiny and faint)
    other_small: float = 0.2  # P(a non-companion object is small)
    other_hard: float = 0.0  # P(a non-companion object is tiny and faint)
    min_objects: int = 3
    max_objects: int = 6
    repeat_category: float = 0.15  # P(a new object may repeat a category already present)
    clutter: tuple[int, int] = (2, 6)  # grey specks on the background (not objects)


DEFAULT_CONFIG = WorldConfig()


@dataclass(frozen=True)
class WorldObject:
    category: str
    colour: str
    position: str  # one of POSITIONS
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (pixels, x1/y1 exclusive)
    size: str  # large / medium / small / tiny
    opacity: float  # 1.0 = solid; tiny companions are faint (0.35-0.55)

    @property
    def hard(self) -> bool:
        return self.size == "tiny"

    @property
    def cell(self) -> int:
        return POSITIONS.index(self.position)


@dataclass
class Scene:
    """One scene of the world.  ``objects`` is the exact ground truth."""

    seed: int
    objects: list[WorldObject]
    is_trap: bool = False
    split: str = ""
    config: WorldConfig = field(default=DEFAULT_CONFIG, repr=False)

    # ---- ground truth helpers -------------------------------------------------------
    @property
    def categories(self) -> list[str]:
        """Distinct categories present, in layout order."""
        seen: list[str] = []
        for o in sorted(self.objects, key=lambda o: o.cell):
            if o.category not in seen:
                seen.append(o.category)
        return seen

    def count(self, category: str) -> int:
        return sum(o.category == category for o in self.objects)

    @property
    def absent_partners(self) -> list[str]:
        """Partners of present categories that are themselves absent (the prior traps)."""
        cats = set(self.categories)
        return [PARTNER[c] for c in CATEGORIES if c in cats and c in PARTNER and PARTNER[c] not in cats]

    # ---- rendering ----------------------------------------------------------------
    def image(self) -> Image.Image:
        return render(self)[0]

    def masks(self) -> list[np.ndarray]:
        """Per-object coverage masks (float32 HxW in [0,1], same order as ``objects``)."""
        return render(self)[1]

    # ---- text and benchmarks (implemented in language.py / datasets.py) ------------
    def description(self, rng: random.Random | None = None) -> str:
        from .language import describe

        return describe(self, rng)

    def pope_questions(self, kind: str = "random") -> list[dict]:
        from .datasets import pope_questions

        return pope_questions(self, kind)

    def grounding_items(self) -> list[dict]:
        from .datasets import grounding_items

        return grounding_items(self)


# ---------------------------------------------------------------------------------------
# sampling
# ---------------------------------------------------------------------------------------
def _pick_category(rng: random.Random, present: list[str], cfg: WorldConfig, exclude: set[str]) -> str:
    pool = [c for c in CATEGORIES if c not in exclude]
    if rng.random() >= cfg.repeat_category:
        fresh = [c for c in pool if c not in present]
        if fresh:
            pool = fresh
    return rng.choice(pool)


def sample_scene(seed: int, trap: bool = False, cfg: WorldConfig = DEFAULT_CONFIG, split: str = "") -> Scene:
    """Sample the scene of ``seed``.  ``trap=True``: a primary is present, its companion absent."""
    rng = random.Random(seed * 7919 + 17)
    n = rng.randint(cfg.min_objects, cfg.max_objects)
    cats: list[str] = []
    exclude: set[str] = set()
    if trap:
        primary = rng.choice(sorted(PAIRS))
        cats.append(primary)
        exclude.add(PAIRS[primary])
    while len(cats) < n:
        c = _pick_category(rng, cats, cfg, exclude)
        cats.append(c)
    # the co-occurrence prior: primary present -> companion present w.p. prior_strength
    for a, b in PAIRS.items():
        if b not in exclude and a in cats and b not in cats and rng.random() < cfg.prior_strength:
            cats.append(b)
    cats = cats[: GRID * GRID]
    cells = rng.sample(range(GRID * GRID), len(cats))
    objects = []
    companions = set(PAIRS.values())
    for c, cell in zip(cats, cells):
        colour = rng.choice(COLOUR_NAMES)
        if c in companions and rng.random() < cfg.companion_hard:
            size = "tiny"
        elif c not in companions and rng.random() < cfg.other_hard:
            size = "tiny"
        elif rng.random() < cfg.other_small:
            size = "small"
        else:
            size = rng.choice(["large", "medium"])
        lo, hi = SIZE_RANGES[size]
        s = rng.randint(lo, hi)
        opacity = round(rng.uniform(0.35, 0.55), 3) if size == "tiny" else 1.0
        r, col = divmod(cell, GRID)
        x0 = col * CELL + rng.randint(1, CELL - s - 1)
        y0 = r * CELL + rng.randint(1, CELL - s - 1)
        objects.append(WorldObject(c, colour, POSITIONS[cell], (x0, y0, x0 + s, y0 + s), size, opacity))
    objects.sort(key=lambda o: o.cell)
    return Scene(seed=seed, objects=objects, is_trap=trap, split=split, config=cfg)


# ---------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------
SS = 4  # supersampling for anti-aliased masks


def _unit_polygon(category: str) -> list[tuple[float, float]] | None:
    if category == "triangle":
        return [(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)]
    if category == "diamond":
        return [(0.5, 0.0), (1.0, 0.5), (0.5, 1.0), (0.0, 0.5)]
    if category == "square":
        return [(0.05, 0.05), (0.95, 0.05), (0.95, 0.95), (0.05, 0.95)]
    if category == "cross":
        a, b = 0.33, 0.67
        return [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1), (a, b), (0, b), (0, a), (a, a)]
    if category == "star":
        pts = []
        for k in range(10):
            ang = -math.pi / 2 + k * math.pi / 5
            rad = 0.5 if k % 2 == 0 else 0.2
            pts.append((0.5 + rad * math.cos(ang), 0.55 + rad * math.sin(ang)))
        return pts
    if category == "heart":
        pts = []
        for k in range(40):
            t = 2 * math.pi * k / 40
            x = 16 * math.sin(t) ** 3
            y = 13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)
            pts.append((0.5 + x / 34, 0.45 - y / 34))
        return pts
    if category == "arrow":
        return [(0, 0.35), (0.55, 0.35), (0.55, 0.1), (1, 0.5), (0.55, 0.9), (0.55, 0.65), (0, 0.65)]
    return None


def _object_mask(obj: WorldObject) -> np.ndarray:
    x0, y0, x1, y1 = obj.box
    w, h = x1 - x0, y1 - y0
    W, H = w * SS, h * SS
    m = Image.new("L", (W, H), 0)
    d = ImageDraw.Draw(m)
    poly = _unit_polygon(obj.category)
    if poly is not None:
        d.polygon([(x * (W - 1), y * (H - 1)) for x, y in poly], fill=255)
    elif obj.category == "circle":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
    elif obj.category == "ring":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        t = 0.28
        d.ellipse([W * t, H * t, W * (1 - t), H * (1 - t)], fill=0)
    elif obj.category == "moon":
        d.ellipse([0, 0, W - 1, H - 1], fill=255)
        d.ellipse([W * 0.32, -H * 0.08, W * 1.25, H * 0.86], fill=0)
    else:  # pragma: no cover
        raise ValueError(obj.category)
    small = m.resize((w, h), Image.BOX)
    full = np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)
    full[y0:y1, x0:x1] = np.asarray(small, np.float32) / 255.0
    return full


def _background(rng: np.random.Generator) -> np.ndarray:
    base = rng.uniform(195, 235, size=3)
    tint = rng.uniform(-12, 12, size=3)
    yy, xx = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
    kind = rng.integers(0, 3)
    f = rng.uniform(0.15, 0.45)
    ang = rng.uniform(0, math.pi)
    if kind == 0:  # stripes
        pat = np.sin(f * (xx * math.cos(ang) + yy * math.sin(ang)))
    elif kind == 1:  # checker-like
        pat = np.sign(np.sin(f * xx)) * np.sign(np.sin(f * yy))
    else:  # blobs
        pat = np.sin(f * 0.5 * xx + rng.uniform(0, 6)) * np.cos(f * 0.6 * yy + rng.uniform(0, 6))
    amp = rng.uniform(4, 10)
    img = base[None, None, :] + (amp * pat)[..., None] + (pat[..., None] > 0) * tint[None, None, :] * 0.3
    img = img + rng.normal(0, rng.uniform(3, 8), size=img.shape)
    return img


def render(scene: Scene) -> tuple[Image.Image, list[np.ndarray]]:
    """Render the scene; returns the RGB image and the per-object coverage masks."""
    rng = np.random.default_rng(scene.seed * 31 + 5)
    img = _background(rng)
    # clutter: small grey specks that are not objects
    lo, hi = scene.config.clutter
    for _ in range(int(rng.integers(lo, hi + 1))):
        s = int(rng.integers(2, 5))
        x, y = int(rng.integers(0, IMAGE_SIZE - s)), int(rng.integers(0, IMAGE_SIZE - s))
        g = rng.uniform(120, 170)
        img[y : y + s, x : x + s] = img[y : y + s, x : x + s] * 0.4 + g * 0.6
    masks = []
    for obj in scene.objects:
        m = _object_mask(obj)
        a = (m * obj.opacity)[..., None]
        col = np.array(COLOURS[obj.colour], np.float32)
        # slight per-object shade variation
        col = np.clip(col + rng.normal(0, 8, size=3), 0, 255)
        img = img * (1 - a) + col[None, None, :] * a
        masks.append(m)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB"), masks


def patch_labels(scene: Scene, patch: int = 12, min_cover: float = 0.10,
                 masks: list[np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Dense per-patch ground truth: (category index + 1 or 0, colour index + 1 or 0) per patch.

    A patch is labelled with the object covering most of it, if it covers >= ``min_cover``.
    ``masks`` (from :func:`render`) saves rendering the scene again."""
    g = IMAGE_SIZE // patch
    cat = np.zeros((g, g), np.int64)
    col = np.zeros((g, g), np.int64)
    best = np.zeros((g, g), np.float32)
    for obj, m in zip(scene.objects, masks if masks is not None else render(scene)[1]):
        cov = m.reshape(g, patch, g, patch).mean(axis=(1, 3))
        upd = (cov >= min_cover) & (cov > best)
        best[upd] = cov[upd]
        cat[upd] = CATEGORIES.index(obj.category) + 1
        col[upd] = COLOUR_NAMES.index(obj.colour) + 1
    return cat, col
