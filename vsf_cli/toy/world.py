"""The toy world: a seeded generator of 32x32 scenes (one object, its parts, distractors) and their captions."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

SIZE = 32
GROUND = 29  # the y where objects stand

# Every colour is reserved for one role, so the judge can read a scene by counting pixels.
# They are >= 85 apart in RGB and far from the blends of neighbours (body/background, body/wheel).
BACKGROUND = (235, 235, 225)
COLOURS = {"red": (210, 40, 40), "blue": (40, 90, 220), "green": (40, 160, 60), "yellow": (230, 215, 40), "purple": (140, 60, 180)}
PART_COLOURS = {"wheels": (30, 30, 30), "roof": (0, 150, 150)}
DISTRACTOR_COLOURS = {"ball": (250, 110, 190), "sun": (245, 135, 15)}

CLASSES = ("house", "car", "tower", "tree")
PARTS = ("roof", "wheels")
DISTRACTORS = ("ball", "sun")
SIZES = ("small", "big")
POSITIONS = ("left", "right")

# A class's usual colour gets half the draws, so "a tree" is green often enough for "green" to have something to remove.
TYPICAL_COLOUR = {"house": "red", "car": "blue", "tower": "yellow", "tree": "green"}
# Part priors: the primary part is drawn by default (as wheels on real cars); the other still occurs, so each
# part word is seen on several objects and not tied to one class.
PART_PRIOR = {
    "house": {"roof": 0.75, "wheels": 0.25},
    "car": {"wheels": 0.75, "roof": 0.25},
    "tower": {"roof": 0.75, "wheels": 0.25},
    "tree": {"roof": 0.0, "wheels": 0.25},
}
PRIMARY_PART = {"house": "roof", "car": "wheels", "tower": "roof"}
DISTRACTOR_PRIOR = {"ball": 0.4, "sun": 0.35}
TERSE = 0.10  # captions that name only class, size and position: what a user types, and what the benchmark asks
PARTS_ALONE = 0.08  # scenes of a part on its own ("wheels", "a roof")

VOCAB = (
    "a", "with", "and", "on", "the", "left", "right", "small", "big", *COLOURS, *CLASSES, *PARTS, *DISTRACTORS,
)


@dataclass
class Scene:
    """What was drawn: the ground truth the judge is scored against."""

    kind: str | None  # the object's class, or None for a part on its own
    colour: str | None
    parts: set[str] = field(default_factory=set)
    distractors: set[str] = field(default_factory=set)
    size: str | None = None  # named size, if the caption names one
    position: str | None = None


def held_out_prompts() -> list[str]:
    """Terse prompts never used as training captions: the benchmark's prompts (size and position both named)."""
    return [f"a {s} {c} on the {p}" for c in CLASSES for s in SIZES for p in POSITIONS]


_HELD_OUT = frozenset(held_out_prompts())


def _disc(img, cx, cy, r, colour):
    yy, xx = np.ogrid[:SIZE, :SIZE]
    img[(xx - cx) ** 2 + (yy - cy) ** 2 <= r * r] = colour


def _rect(img, x0, y0, x1, y1, colour):
    img[max(y0, 0) : max(y1, 0), max(x0, 0) : max(x1, 0)] = colour


def _triangle(img, x0, x1, y_top, y_base, colour):
    """An isosceles triangle with its base [x0, x1) on row y_base - 1 and its apex on row y_top."""
    h = y_base - y_top
    mid = (x0 + x1 - 1) / 2
    half = (x1 - x0) / 2
    for i, y in enumerate(range(y_top, y_base)):
        w = half * (i + 1) / h
        a, b = int(round(mid - w + 0.5)), int(round(mid + w + 0.5))
        if 0 <= y < SIZE:
            img[y, max(a, 0) : min(max(b, a + 1), SIZE)] = colour


def _object_box(rng, kind, size):
    """Body width and height for a class and a named size (None: anything in range)."""
    lo, hi = {"small": (0.0, 0.4), "big": (0.6, 1.0), None: (0.0, 1.0)}[size]
    u = rng.uniform(lo, hi)
    if kind == "house":
        s = round(8 + 6 * u)
        return s, s
    if kind == "car":
        w = round(12 + 8 * u)
        return w, round(w * 0.42)
    if kind == "tower":
        h = round(11 + 7 * u)
        return round(h * 0.45), h
    h = round(10 + 7 * u)  # tree: a triangle
    return round(h * 0.8), h


def render(scene: Scene, rng: random.Random) -> np.ndarray:
    """Draw a scene as a (32, 32, 3) uint8 array; distractors that do not fit are dropped from `scene`."""
    img = np.empty((SIZE, SIZE, 3), np.uint8)
    img[:] = BACKGROUND
    occupied = []  # x-ranges on the ground taken by something
    top = SIZE
    if scene.kind is not None:
        w, h = _object_box(rng, scene.kind, scene.size)
        lo, hi = 1 + w // 2 + 1, SIZE - 1 - (w - w // 2) - 1
        if scene.position == "left":
            hi = min(hi, 12)
        elif scene.position == "right":
            lo = max(lo, 20)
        elif scene.position is None:
            lo, hi = max(lo, 8), min(hi, 24)
        cx = rng.randint(min(lo, hi), max(lo, hi))
        x0, x1 = cx - w // 2, cx - w // 2 + w
        r = rng.choice((2, 3)) if "wheels" in scene.parts else 0
        y1 = GROUND - r
        y0 = y1 - h
        colour = COLOURS[scene.colour]
        if scene.kind == "tree":
            _triangle(img, x0, x1, y0, y1, colour)
        else:
            _rect(img, x0, y0, x1, y1, colour)
        top = y0
        if "roof" in scene.parts:
            over = rng.choice((0, 1))
            rh = rng.randint(3, 6)
            _triangle(img, x0 - over, x1 + over, y0 - rh, y0, PART_COLOURS["roof"])
            top = y0 - rh
        if r:
            n = 3 if w >= 17 and rng.random() < 0.5 else 2
            for i in range(n):
                wx = x0 + r + round(i * (w - 1 - 2 * r) / (n - 1))
                _disc(img, wx, y1, r, PART_COLOURS["wheels"])
        occupied.append((x0 - 1, x1 + 1))
    else:  # a part on its own
        part = next(iter(scene.parts))
        if part == "wheels":
            r = rng.choice((2, 3))
            n = rng.randint(2, 4)
            x = rng.randint(2, 8)
            for _ in range(n):
                _disc(img, x + r, GROUND - r, r, PART_COLOURS["wheels"])
                x += 2 * r + 1 + rng.randint(0, 2)
            occupied.append((1, x + 1))
        else:
            w, rh = rng.randint(9, 16), rng.randint(4, 7)
            x0 = rng.randint(2, SIZE - 2 - w)
            y = rng.randint(GROUND - 8, GROUND)
            _triangle(img, x0, x0 + w, y - rh, y, PART_COLOURS["roof"])
            occupied.append((x0 - 1, x0 + w + 1))
            top = y - rh
    if "sun" in scene.distractors:
        r = rng.choice((3, 4))
        corners = [c for c in (r + 2, SIZE - r - 3) if top > 2 * r + 3 or not any(a <= c + r and c - r <= b for a, b in occupied)]
        if corners:
            _disc(img, rng.choice(corners), r + 2, r, DISTRACTOR_COLOURS["sun"])
        else:
            scene.distractors.discard("sun")
    if "ball" in scene.distractors:
        r = rng.choice((2, 3))
        free = [x for x in range(r + 1, SIZE - r - 1) if not any(a <= x + r and x - r <= b for a, b in occupied)]
        if free:
            _disc(img, rng.choice(free), GROUND - r - 1, r, DISTRACTOR_COLOURS["ball"])
        else:
            scene.distractors.discard("ball")
    return img


def _and(items: list[str]) -> str:
    return " and ".join(items)


def caption(scene: Scene, rng: random.Random, terse: bool) -> str:
    """The grammar. Full captions name every part and distractor drawn; terse ones name only class, size, position."""
    where = f" on the {scene.position}" if scene.position else ""
    size = f"{scene.size} " if scene.size else ""
    if scene.kind is None:
        subject = "wheels" if "wheels" in scene.parts else "a roof"
    elif terse:
        return f"a {size}{scene.kind}{where}"
    else:
        parts = [("a roof" if p == "roof" else p) for p in PARTS if p in scene.parts]
        subject = f"a {size}{scene.colour} {scene.kind}" + (f" with {_and(parts)}" if parts else "")
    others = [f"a {d}" for d in DISTRACTORS if d in scene.distractors]
    rng.shuffle(others)
    if others and rng.random() < 0.3:
        return f"{_and(others)} and {subject}{where}"
    return _and([subject + where] + others)


def sample(rng: random.Random) -> tuple[np.ndarray, str, Scene]:
    """One training example: image, caption and ground truth, all drawn from `rng`."""
    while True:
        terse = rng.random() < TERSE
        if rng.random() < PARTS_ALONE and not terse:
            scene = Scene(kind=None, colour=None, parts={rng.choice(PARTS)})
        else:
            kind = rng.choice(CLASSES)
            colour = TYPICAL_COLOUR[kind] if rng.random() < 0.5 else rng.choice(list(COLOURS))
            parts = {p for p, q in PART_PRIOR[kind].items() if rng.random() < q}
            scene = Scene(kind=kind, colour=colour, parts=parts)
            scene.size = rng.choice((None, None, *SIZES))
            scene.position = rng.choice((None, None, *POSITIONS))
        scene.distractors = {d for d, q in DISTRACTOR_PRIOR.items() if rng.random() < q}
        img = render(scene, rng)
        text = caption(scene, rng, terse)
        if text not in _HELD_OUT:
            return img, text, scene


def batch(rng: random.Random, n: int) -> tuple[np.ndarray, list[str], list[Scene]]:
    """n examples as (n, 32, 32, 3) uint8, captions and scenes."""
    items = [sample(rng) for _ in range(n)]
    return np.stack([i[0] for i in items]), [i[1] for i in items], [i[2] for i in items]
