"""A generated multi-domain shapes dataset: the offline stand-in for Sketchy/DomainNet.

Each class is a shape; each domain renders it differently (textured photo, black-on-white
sketch, flat clipart with outline), so raw image features carry a real domain gap while class
identity is shared across domains. Written as ``root/<domain>/<class>/<n>.png`` plus ``root/{seen,unseen}_classes.txt``.

24 classes, 6 of them unseen, drawn at random from the seed as any user's unseen classes are a
draw from the classes of the world: the selection's folds, random class sets too, are then fair
evidence for them. With 12 classes the folds held out two or three classes each, and which ones
decided the verdict more than the method did (fold gains of -0.09 to +0.13 for one head); a
hand-picked unseen set of look-alikes of seen shapes (hexagon, star6, trapezoid, ...) ranked the
options in the opposite order to eight random 6-class sets.

:func:`make_web_pool` draws a separate set of every class with the domain mix of web data (mostly
photos) for the stand-in CLIP to pretrain on, from its own random stream: none of its images is
one of the dataset's.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = (
    "circle", "square", "triangle", "pentagon", "hexagon", "star",
    "cross", "diamond", "ring", "crescent", "arrow", "heart",
    "ellipse", "semicircle", "rectangle", "trapezoid", "parallelogram", "star4",
    "star6", "octagon", "chevron", "egg", "frame", "tee",
)  # fmt: skip
DOMAINS = ("photo", "sketch", "clipart")
UNSEEN_SHARE = 0.25
_S = 128  # render size; downsampled for anti-aliasing


def _polygon(n: int, r: float, rot: float, cx: float, cy: float, inner: float | None = None) -> list[tuple[float, float]]:
    pts = []
    steps = n * 2 if inner else n
    for i in range(steps):
        rad = (inner if inner and i % 2 else 1.0) * r
        a = rot + 2 * math.pi * i / steps
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _rotate(points: Sequence[tuple[float, float]], rot: float, cx: float, cy: float) -> list[tuple[float, float]]:
    c, s = math.cos(rot), math.sin(rot)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in points]


def shape_mask(name: str, rng: random.Random) -> Image.Image:
    """A white-on-black mask of one randomly placed, scaled and rotated shape."""
    m = Image.new("L", (_S, _S), 0)
    d = ImageDraw.Draw(m)
    r = rng.uniform(0.26, 0.4) * _S
    cx, cy = _S / 2 + rng.uniform(-0.08, 0.08) * _S, _S / 2 + rng.uniform(-0.08, 0.08) * _S
    rot = rng.uniform(0, 2 * math.pi)
    box = (cx - r, cy - r, cx + r, cy + r)
    if name == "circle":
        d.ellipse(box, fill=255)
    elif name == "ring":
        d.ellipse(box, fill=255)
        d.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif name == "crescent":
        d.ellipse(box, fill=255)
        off = r * 0.45
        d.ellipse((cx - r + off * math.cos(rot), cy - r + off * math.sin(rot), cx + r + off * math.cos(rot), cy + r + off * math.sin(rot)), fill=0)
    elif name in ("square", "triangle", "pentagon", "hexagon"):
        n = {"square": 4, "triangle": 3, "pentagon": 5, "hexagon": 6}[name]
        d.polygon(_polygon(n, r, rot, cx, cy), fill=255)
    elif name == "star":
        d.polygon(_polygon(5, r, rot, cx, cy, inner=0.42), fill=255)
    elif name == "diamond":
        pts = [(0, -r), (0.55 * r, 0), (0, r), (-0.55 * r, 0)]
        d.polygon(_rotate(pts, rot, cx, cy), fill=255)
    elif name == "cross":
        a, b = r, r * 0.33
        pts = [(-b, -a), (b, -a), (b, -b), (a, -b), (a, b), (b, b), (b, a), (-b, a), (-b, b), (-a, b), (-a, -b), (-b, -b)]
        d.polygon(_rotate(pts, rot, cx, cy), fill=255)
    elif name == "arrow":
        pts = [(-r, -0.2 * r), (0.2 * r, -0.2 * r), (0.2 * r, -0.55 * r), (r, 0), (0.2 * r, 0.55 * r), (0.2 * r, 0.2 * r), (-r, 0.2 * r)]
        d.polygon(_rotate(pts, rot, cx, cy), fill=255)
    elif name == "heart":
        ts = [2 * math.pi * i / 60 for i in range(60)]
        pts = [(16 * math.sin(t) ** 3 * r / 17, -(13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t)) * r / 17) for t in ts]
        d.polygon(_rotate(pts, rot * 0.3, cx, cy), fill=255)
    elif name in _OUTLINES:
        d.polygon(_rotate([(x * r, y * r) for x, y in _OUTLINES[name]], rot, cx, cy), fill=255)
    elif name in ("star4", "star6", "octagon"):
        n, inner = {"star4": (4, 0.35), "star6": (6, 0.55), "octagon": (8, None)}[name]
        d.polygon(_polygon(n, r, rot, cx, cy, inner=inner), fill=255)
    elif name == "egg":
        d.polygon(_rotate([(-0.6 * r, 0.0), (0.0, -1.1 * r), (0.6 * r, 0.0)], rot, cx, cy), fill=255)
        ox, oy = _rotate([(0.0, 0.35 * r)], rot, 0.0, 0.0)[0]
        d.ellipse((cx + ox - 0.6 * r, cy + oy - 0.6 * r, cx + ox + 0.6 * r, cy + oy + 0.6 * r), fill=255)
    elif name == "frame":
        d.polygon(_rotate([(-0.8 * r, -0.8 * r), (0.8 * r, -0.8 * r), (0.8 * r, 0.8 * r), (-0.8 * r, 0.8 * r)], rot, cx, cy), fill=255)
        d.polygon(_rotate([(-0.45 * r, -0.45 * r), (0.45 * r, -0.45 * r), (0.45 * r, 0.45 * r), (-0.45 * r, 0.45 * r)], rot, cx, cy), fill=0)
    else:
        raise ValueError(f"unknown shape {name!r}; known: {SHAPES}")
    return m


_ARC = [2 * math.pi * i / 48 for i in range(48)]
#: shapes drawn as one polygon, in units of the shape's radius
_OUTLINES: dict[str, list[tuple[float, float]]] = {
    "ellipse": [(math.cos(t), 0.5 * math.sin(t)) for t in _ARC],
    "semicircle": [(math.cos(math.pi * i / 32), 0.4 - math.sin(math.pi * i / 32)) for i in range(33)],
    "rectangle": [(-1.0, -0.45), (1.0, -0.45), (1.0, 0.45), (-1.0, 0.45)],
    "trapezoid": [(-1.0, 0.6), (1.0, 0.6), (0.45, -0.6), (-0.45, -0.6)],
    "parallelogram": [(-1.0, 0.5), (0.4, 0.5), (1.0, -0.5), (-0.4, -0.5)],
    "chevron": [(-1.0, -0.7), (-0.3, -0.7), (0.6, 0.0), (-0.3, 0.7), (-1.0, 0.7), (-0.1, 0.0)],
    "tee": [(-1.0, -1.0), (1.0, -1.0), (1.0, -0.4), (0.3, -0.4), (0.3, 1.0), (-0.3, 1.0), (-0.3, -0.4), (-1.0, -0.4)],
}


def _outline(mask: Image.Image, width: int) -> Image.Image:
    edges = mask.filter(ImageFilter.FIND_EDGES)
    return edges.filter(ImageFilter.MaxFilter(width)).point(lambda v: 255 if v > 40 else 0)


def _color(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return (rng.randint(lo, hi), rng.randint(lo, hi), rng.randint(lo, hi))


def render(name: str, domain: str, rng: random.Random, size: int = 64) -> Image.Image:
    mask = shape_mask(name, rng)
    nrng = np.random.default_rng(rng.getrandbits(32))
    if domain == "photo":
        noise = nrng.integers(0, 255, (_S // 8, _S // 8, 3), dtype=np.uint8)
        bg = Image.fromarray(noise).resize((_S, _S), Image.BICUBIC).filter(ImageFilter.GaussianBlur(3))
        tex = (np.array(Image.new("RGB", (_S, _S), _color(rng, 30, 230)), dtype=np.int16) + nrng.integers(-35, 35, (_S, _S, 3))).clip(0, 255)
        img = Image.composite(Image.fromarray(tex.astype(np.uint8)), bg, mask.filter(ImageFilter.GaussianBlur(1)))
    elif domain == "sketch":
        img = Image.new("RGB", (_S, _S), (255, 255, 255))
        stroke = _outline(mask, rng.choice((3, 5))).filter(ImageFilter.GaussianBlur(0.6))
        img.paste((20, 20, 20), mask=stroke)
    elif domain == "clipart":
        img = Image.new("RGB", (_S, _S), _color(rng, 170, 255))
        img.paste(_color(rng, 0, 200), mask=mask)
        img.paste((0, 0, 0), mask=_outline(mask, 7))
    else:
        raise ValueError(f"unknown synthetic domain {domain!r}; known: {DOMAINS}")
    return img.resize((size, size), Image.LANCZOS)


def make_shapes_dataset(
    root: str | Path,
    *,
    classes: Sequence[str] = SHAPES,
    domains: Sequence[str] = DOMAINS,
    per_class: int = 40,
    unseen: Sequence[str] | None = None,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write the dataset and its class split files; returns ``root``. ``unseen``: the zero-shot
    classes, by default a quarter of ``classes`` drawn from ``seed``."""
    root = Path(root)
    if unseen is None:
        unseen = random.Random(seed).sample(list(classes), max(1, round(UNSEEN_SHARE * len(classes))))
    rng = random.Random(seed)
    for domain in domains:
        for name in classes:
            out = root / domain / name
            out.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                render(name, domain, rng, size).save(out / f"{i:04d}.png")
    unseen = [c for c in classes if c in set(unseen)]
    (root / "unseen_classes.txt").write_text("\n".join(unseen) + "\n")
    (root / "seen_classes.txt").write_text("\n".join(c for c in classes if c not in set(unseen)) + "\n")
    return root


def make_web_pool(
    root: str | Path,
    *,
    per_class: int = 100,
    mix: dict[str, float] | None = None,
    classes: Sequence[str] = SHAPES,
    domains: Sequence[str] = DOMAINS,
    size: int = 64,
    seed: int = 0,
) -> Path:
    """Write ``root/<domain>/<class>/<n>.png``: ``per_class`` images of every class, unseen ones
    included, shared among the domains by the web mix (:func:`clair_vec.datasets.web_pool.domain_weights`).
    The random stream is the dataset's seed offset by a constant, so no image here is one of
    :func:`make_shapes_dataset`'s."""
    from clair_vec.datasets.web_pool import domain_weights

    root = Path(root)
    rng = random.Random(1_000_003 + seed)
    for domain, share in domain_weights(domains, mix).items():
        for name in classes:
            out = root / domain / name
            out.mkdir(parents=True, exist_ok=True)
            for i in range(round(per_class * share)):
                render(name, domain, rng, size).save(out / f"{i:04d}.png")
    return root
