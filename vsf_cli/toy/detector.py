"""The exact judge: reads class, colour, parts and distractors back from a toy-world image by its reserved colours."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from vsf_cli.toy import world

_NAMES = ["background", *world.COLOURS, *world.PART_COLOURS, *world.DISTRACTOR_COLOURS]
_PALETTE = np.array([world.BACKGROUND, *world.COLOURS.values(), *world.PART_COLOURS.values(), *world.DISTRACTOR_COLOURS.values()], np.float32)
_BODY = [_NAMES.index(c) for c in world.COLOURS]
MAX_DISTANCE = 60.0  # half the smallest palette gap is ~42; blends farther than this from every colour are ignored
MIN_PIXELS = {"wheels": 6, "roof": 6, "ball": 6, "sun": 8}  # smallest drawn: a 2-radius disc is 13 px, a roof ~10
MIN_BODY = 24  # pixels of the body component (the smallest tower is 5 x 11)
MIN_COLOUR_SHARE = 0.25  # a colour counts as present at >= 25% of the body (or >= 12 px anywhere)


@dataclass
class Reading:
    """What the judge saw in one image."""

    kind: str | None
    colour: str | None
    colours: set[str] = field(default_factory=set)
    parts: set[str] = field(default_factory=set)
    distractors: set[str] = field(default_factory=set)

    def has(self, word: str) -> bool:
        """Whether the image shows `word`: a class, colour, part or distractor name."""
        return word in {self.kind} | self.colours | self.parts | self.distractors


def labels(img: np.ndarray) -> np.ndarray:
    """Per pixel, the index of the nearest palette colour, or -1 when none is within MAX_DISTANCE."""
    d = np.linalg.norm(img.astype(np.float32)[:, :, None, :] - _PALETTE[None, None], axis=-1)
    lab = d.argmin(-1)
    lab[d.min(-1) > MAX_DISTANCE] = -1
    return lab


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected component of a boolean mask (a 32x32 BFS is cheap in Python)."""
    seen = np.zeros_like(mask)
    best: list[tuple[int, int]] = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        comp, queue = [], deque([(y0, x0)])
        while queue:
            y, x = queue.popleft()
            comp.append((y, x))
            for ny, nx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        if len(comp) > len(best):
            best = comp
    out = np.zeros_like(mask)
    if best:
        ys, xs = zip(*best)
        out[list(ys), list(xs)] = True
    return out


def _shape(component: np.ndarray) -> str | None:
    """Class from the body's outline: cars are wide, towers tall, trees narrow to the top, houses square."""
    if component.sum() < MIN_BODY:
        return None
    rows = component.sum(1)
    rows = rows[rows > 0]
    h, w = len(rows), int(component.any(0).sum())
    if w / h >= 1.6:
        return "car"
    if h / w >= 1.6:
        return "tower"
    third = max(1, h // 3)
    return "tree" if rows[:third].mean() < 0.6 * rows[-third:].mean() else "house"


def read(img: np.ndarray) -> Reading:
    """Judge one (32, 32, 3) uint8 image."""
    lab = labels(img)
    counts = {name: int((lab == i).sum()) for i, name in enumerate(_NAMES)}
    body = _largest_component(np.isin(lab, _BODY))
    kind = _shape(body)
    colour, colours = None, set()
    if kind is not None:
        in_body = {c: int((lab[body] == _NAMES.index(c)).sum()) for c in world.COLOURS}
        colour = max(in_body, key=in_body.get)
        area = int(body.sum())
        colours = {c for c in world.COLOURS if in_body[c] >= MIN_COLOUR_SHARE * area or counts[c] >= max(12, MIN_COLOUR_SHARE * area)}
    parts = {p for p in world.PART_COLOURS if counts[p] >= MIN_PIXELS[p]}
    distractors = {d for d in world.DISTRACTOR_COLOURS if counts[d] >= MIN_PIXELS[d]}
    return Reading(kind, colour, colours, parts, distractors)


def accuracy(n: int = 2000, seed: int = 12345, degrade=None) -> dict[str, float]:
    """Agreement with the ground truth on n fresh renders (optionally passed through `degrade(img, rng)` first).

    Fields: class, colour (the body's), each part and distractor (present/absent), and all of them at once.
    """
    import random

    rng = random.Random(seed)
    hits = {"class": 0, "colour": 0, **{p: 0 for p in world.PARTS}, **{d: 0 for d in world.DISTRACTORS}, "all": 0}
    for _ in range(n):
        img, _, scene = world.sample(rng)
        if degrade is not None:
            img = degrade(img, rng)
        r = read(img)
        ok = {
            "class": r.kind == scene.kind,
            "colour": r.colour == scene.colour,
            **{p: (p in r.parts) == (p in scene.parts) for p in world.PARTS},
            **{d: (d in r.distractors) == (d in scene.distractors) for d in world.DISTRACTORS},
        }
        ok["all"] = all(ok.values())
        for k, v in ok.items():
            hits[k] += v
    return {k: v / n for k, v in hits.items()}


def blur_noise(img: np.ndarray, rng) -> np.ndarray:
    """A stand-in for a generator's softness: a light 3x3 blur plus Gaussian noise (sigma 6)."""
    x = img.astype(np.float32)
    pad = np.pad(x, ((1, 1), (1, 1), (0, 0)), mode="edge")
    k = [[0.05, 0.1, 0.05], [0.1, 0.4, 0.1], [0.05, 0.1, 0.05]]
    x = sum(k[i][j] * pad[i : i + world.SIZE, j : j + world.SIZE] for i in range(3) for j in range(3))
    noise = np.random.default_rng(rng.randrange(2**32)).normal(0, 6, x.shape)
    return np.clip(x + noise, 0, 255).astype(np.uint8)


if __name__ == "__main__":
    print("clean renders:", {k: round(v, 4) for k, v in accuracy().items()})
    print("blurred + noisy:", {k: round(v, 4) for k, v in accuracy(degrade=blur_noise).items()})
