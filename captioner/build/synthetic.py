"""Synthetic training pairs: plausible ImageNet classifier outputs with short English captions.

No captioned photos exist offline, so the decoder of the bundled model learns from generated
pairs. Each sample is a ``SceneSpec`` (1-3 objects, an optional garment, an optional place), a
classifier distribution built from it the way a real classifier spreads its mass (over WordNet
siblings and cousins, plus unrelated noise), and the caption ``grammar.caption_for`` writes for it.

The generator draws specs whose groups sit clearly on one side of each of the grammar's thresholds
(mass >= 0.16, top share >= 0.58 or <= 0.42; in flat samples no group above 0.08 and no class above
0.3 of the named one's group), so the caption is learnable from the distribution, while noise and
spill make ``grammar.template_caption`` disagree on a small share of samples.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from captioner.build.grammar import MAX_SLOTS, Mention, SceneSpec, caption_for
from captioner.build.lexicon import ALIASES, NUM_CLASSES, lexicon

# --------------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------------

P_CLOTHING = 0.15
P_SCENE = 0.2
P_EXTRA_ALONE = 0.3  # a garment or place without other objects
P_WEARER = 0.2  # a garment worn by a person class (a groom wearing a suit)
P_GENERAL = 0.3  # share of mentions (in groups of 3 or more) spread over siblings
SLOT_FLOOR = 0.16  # least mass of a mentioned group (MENTION_MIN plus a margin)
SPILL_MAX = 0.06  # most of a slot's mass that goes to related classes outside its group
NOISE_GROUP_MAX = 0.06  # most unrelated noise mass in one group (with spill, < MENTION_MIN)
# Flat samples: a classifier that sees nothing it knows (textures, microscopy) spreads its mass
# thinly. The named class holds FLAT_MASS; no other group reaches FLAT_NOISE_GROUP_MAX and no
# other class FLAT_NOISE_CLASS_SHARE of the named class's group, and the large groups (dog,
# bird), whose uniform share alone would pass that, get no noise.
P_FLAT = 0.08
FLAT_MASS = (0.04, 0.10)
FLAT_NOISE_GROUP_MAX = 0.08
FLAT_NOISE_CLASS_SHARE = 0.3
FLAT_QUIET_GROUP_SIZE = 30
# Thin mass: a large group (dog, bird) holding up to THIN_MAX spread evenly enough over its
# classes that none passes THIN_CLASS_MAX; by rule 1 it is not mentioned.
P_THIN = 0.25
THIN_MAX = 0.35
THIN_CLASS_MAX = 0.01


@functools.cache
def _tables() -> tuple[dict[str, list[int]], list[int], list[list[int]], list[list[int]]]:
    """Plain-Python copies of what the per-sample code reads: pools per kind, group of each
    class, nearest classes inside and outside each class's group."""
    lex = lexicon()
    pools: dict[str, list[int]] = {"object": [], "person": [], "clothing": [], "scene": []}
    for entry in lex.classes:
        if entry.alias_of is None:
            pools[entry.kind].append(entry.index)
    return (pools, lex.group_of.tolist(), [a.tolist() for a in lex.near_in],
            [a.tolist() for a in lex.near_out])


class _Draws:
    """Uniform numbers fetched in batches: numpy's per-call overhead dominates tiny draws."""

    __slots__ = ("_rng", "_u", "_i")

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng, self._u, self._i = rng, [], 0

    def uniform(self, low: float = 0.0, high: float = 1.0) -> float:
        if self._i == len(self._u):
            self._u, self._i = self._rng.random(64).tolist(), 0
        value = self._u[self._i]
        self._i += 1
        return low + (high - low) * value

    def below(self, n: int) -> int:
        return min(int(self.uniform() * n), n - 1)

    def dirichlet(self, k: int, alpha: int = 1) -> list[float]:
        """Dirichlet(alpha, ..., alpha) for a whole alpha: normalised sums of exponentials."""
        g = [sum(-math.log(1.0 - self.uniform()) for _ in range(alpha)) + 1e-12 for _ in range(k)]
        total = sum(g)
        return [x / total for x in g]

    def pick(self, items: list[int], k: int) -> list[int]:
        """``k`` distinct items (a partial Fisher-Yates shuffle)."""
        items = list(items)
        for i in range(k):
            j = i + self.below(len(items) - i)
            items[i], items[j] = items[j], items[i]
        return items[:k]


def _draw_slots(draws: _Draws) -> tuple[list[tuple[str, int]], bool]:
    """(kind, class) per slot, each from a different group, and whether the sample is flat."""
    pools, group_of, _, _ = _tables()
    if draws.uniform() < P_FLAT:  # one faint class in a flat distribution
        kinds = list(pools)
        kind = kinds[draws.below(len(kinds))] if draws.uniform() < 0.2 else "object"
        return [(kind, pools[kind][draws.below(len(pools[kind]))])], True
    has_clothing = draws.uniform() < P_CLOTHING
    has_scene = draws.uniform() < P_SCENE
    extras = int(has_clothing) + int(has_scene)
    if extras and draws.uniform() < P_EXTRA_ALONE:
        n_objects = 0
    else:  # 1, 2 or 3 objects with odds 6 : 3 : 1, as room allows
        odds = [6.0, 3.0, 1.0][: MAX_SLOTS - extras]
        x, n_objects = draws.uniform(0.0, sum(odds)), 1
        while x >= odds[n_objects - 1] and n_objects < len(odds):
            x -= odds[n_objects - 1]
            n_objects += 1
    kinds = (["scene"] if has_scene else []) + (["clothing"] if has_clothing else [])
    if has_clothing and n_objects and draws.uniform() < P_WEARER:
        kinds.append("person")
        n_objects -= 1
    kinds += ["object"] * n_objects
    slots, used = [], set()
    for kind in kinds:
        pool = pools[kind]
        index = pool[draws.below(len(pool))]
        while group_of[index] in used:
            index = pool[draws.below(len(pool))]
        used.add(group_of[index])
        slots.append((kind, index))
    return slots, False


def _slot_masses(draws: _Draws, n: int) -> list[float]:
    """Each slot's share of the distribution: >= SLOT_FLOOR, distinct enough to order."""
    total = draws.uniform(max(0.3, SLOT_FLOOR * n + 0.05 * n), 0.98)
    if n == 1:
        return [total]
    for _ in range(20):
        weights = draws.dirichlet(n, 2)
        masses = sorted((SLOT_FLOOR + (total - n * SLOT_FLOOR) * w for w in weights), reverse=True)
        if min(a - b for a, b in zip(masses, masses[1:])) >= 0.05:
            break
    return draws.pick(masses, n)


_ALIAS_OF = {target: alias for alias, target in ALIASES.items()}


def _within_group(draws: _Draws, index: int, flat: bool) -> tuple[list[int], list[float], bool]:
    """How one slot's mass spreads inside its group: (classes, shares, named specifically).

    In a flat sample the named class must stay the most probable one, so its mass stays mostly
    on it (named specifically).
    """
    near = _tables()[2][index]
    if len(near) >= 2 and not flat and draws.uniform() < P_GENERAL:
        k = min(len(near), 2 + draws.below(3))
        classes = [index] + draws.pick(near[:6], k)
        shares = draws.dirichlet(len(classes), 2)
        top, flat = max(shares), 1.0 / len(classes)
        limit = draws.uniform(0.25, 0.42)
        if top > limit:  # mix toward uniform until no class holds SPECIFIC_SHARE
            lam = (limit - flat) / (top - flat)
            shares = [lam * x + (1 - lam) * flat for x in shares]
        specific = False
    elif not near:
        classes, shares, specific = [index], [1.0], True
    else:
        top = draws.uniform(0.58, 0.995)
        k = 1 + draws.below(min(len(near), 4))
        classes = [index] + draws.pick(near[:6], k)
        shares = [top] + [(1 - top) * x for x in draws.dirichlet(k)]
        specific = True
    # A class's alias fires with it (missile and projectile); together they keep its share.
    for pos in range(len(classes)):
        alias = _ALIAS_OF.get(classes[pos])
        if alias is not None and draws.uniform() < 0.5:
            moved = shares[pos] * draws.uniform(0.0, 0.5)
            shares[pos] -= moved
            classes.append(alias)
            shares.append(moved)
    return classes, shares, specific


@dataclass
class _Structure:
    """One drawn sample before noise: its scene, the mass its slots put on classes, and the
    noise it allows."""

    spec: SceneSpec
    cols: list[int]
    vals: list[float]
    quiet_groups: list[int]  # no noise here: the scene's groups, a thin one, the large ones when flat
    noise_group_max: float
    noise_class_max: float


def _draw_structure(draws: _Draws) -> _Structure:
    """A scene and the classifier mass its slots put on classes."""
    _, group_of, _, near_out = _tables()
    slots, flat = _draw_slots(draws)
    masses = [draws.uniform(*FLAT_MASS)] if flat else _slot_masses(draws, len(slots))
    cols: list[int] = []
    vals: list[float] = []
    mentions: list[tuple[float, str, Mention]] = []
    for (kind, index), mass in zip(slots, masses):
        classes, shares, specific = _within_group(draws, index, flat)
        spill = 0.0 if flat else draws.uniform(0.0, SPILL_MAX) * mass
        cols += classes
        vals += [x * (mass - spill) for x in shares]
        near = near_out[index]
        if near and spill > 0:
            k = 1 + draws.below(min(3, len(near)))
            cols += near[:k]
            vals += [x * spill for x in draws.dirichlet(k)]
        top = classes[max(range(len(shares)), key=shares.__getitem__)]
        mentions.append((mass, kind, Mention(top, specific)))
    mentions.sort(key=lambda t: -t[0])
    spec = SceneSpec(
        objects=tuple(m for _, kind, m in mentions if kind in ("object", "person")),
        clothing=next((m for _, kind, m in mentions if kind == "clothing"), None),
        scene=next((m for _, kind, m in mentions if kind == "scene"), None),
    )
    quiet = [group_of[index] for _, index in slots]
    thin = [g for g in _large_groups() if g not in quiet]
    if thin and draws.uniform() < P_THIN:
        group = thin[draws.below(len(thin))]
        members = _large_groups()[group]
        total = draws.uniform(0.02, min(THIN_MAX, THIN_CLASS_MAX * len(members) / 1.5, 0.8 * (1 - sum(vals))))
        weights = [0.5 + draws.uniform() for _ in members]  # each within 1.5x of the even share
        scale = total / sum(weights)
        cols += members
        vals += [w * scale for w in weights]
        quiet.append(group)
    if not flat:
        return _Structure(spec, cols, vals, quiet, NOISE_GROUP_MAX, 1.0)
    quiet += list(_large_groups())
    return _Structure(spec, cols, vals, quiet, FLAT_NOISE_GROUP_MAX, FLAT_NOISE_CLASS_SHARE * masses[0])


@functools.cache
def _large_groups() -> dict[int, list[int]]:
    """The groups of more than ``FLAT_QUIET_GROUP_SIZE`` classes (dog, bird), with their classes."""
    return {g: [i for i in group.members if i not in ALIASES] for g, group in enumerate(lexicon().groups)
            if len(group.members) > FLAT_QUIET_GROUP_SIZE}


def _noise(rng: np.random.Generator, amount: np.ndarray, taken: np.ndarray, group_max: np.ndarray,
           class_max: np.ndarray) -> np.ndarray:
    """Unrelated mass a classifier leaves: softmax of random logits at random temperatures.

    ``amount`` (rows,) is each row's total, ``taken`` (rows, groups) marks the groups of the
    row's scene, which get none of it (it is unrelated). No group gets more than
    ``group_max`` (rows,) and no class more than ``class_max`` (rows,): the row is blended
    toward uniform until it holds. With ``NOISE_GROUP_MAX`` and spill a group stays below
    ``MENTION_MIN``.
    """
    lex = lexicon()
    rows = len(amount)
    allowed = ~taken[:, lex.group_of]  # (rows, classes)
    sharpness = rng.uniform(0.5, 2.5, size=(rows, 1))
    noise = rng.standard_normal((rows, NUM_CLASSES)) * sharpness
    noise -= noise.max(axis=1, keepdims=True)
    np.exp(noise, out=noise)
    noise *= allowed
    noise *= (amount / noise.sum(axis=1))[:, None]
    uniform = allowed * (amount / allowed.sum(axis=1))[:, None]
    blend = np.minimum(_blend_within(_per_group(noise), _per_group(uniform), group_max),
                       _blend_within(noise, uniform, class_max))[:, None]
    return blend * noise + (1.0 - blend) * uniform


def _blend_within(values: np.ndarray, uniform: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """Per row, the largest weight w in [0, 1] with w * values + (1 - w) * uniform <= limit."""
    over = values > limit[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        weights = np.where(over, (limit[:, None] - uniform) / (values - uniform), 1.0)
    return np.clip(weights.min(axis=1), 0.0, 1.0)


@functools.cache
def _group_layout() -> tuple[np.ndarray, np.ndarray]:
    """Classes ordered by group and where each group starts (for ``np.add.reduceat``)."""
    group_of = lexicon().group_of
    starts = np.concatenate(([0], np.cumsum(np.bincount(group_of))[:-1]))
    return np.argsort(group_of, kind="stable"), starts


def _per_group(values: np.ndarray) -> np.ndarray:
    order, starts = _group_layout()
    return np.add.reduceat(values[:, order], starts, axis=1)


def _to_log_probs(p: np.ndarray) -> np.ndarray:
    p /= p.sum(axis=-1, keepdims=True)
    return np.log(np.maximum(p, 1e-30)).astype(np.float32)


def _draw_rows(rng: np.random.Generator, draws: _Draws, rows: int) -> tuple[np.ndarray, list[str], list[SceneSpec]]:
    """``rows`` pairs: the scenes are drawn one by one in Python; the 1000-wide part (noise,
    scatter, log) is done for all rows at once."""
    row_of: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    specs: list[SceneSpec] = []
    placed, group_max, class_max = np.empty(rows), np.empty(rows), np.empty(rows)
    taken = np.zeros((rows, len(lexicon().groups)), dtype=bool)
    for r in range(rows):
        drawn = _draw_structure(draws)
        specs.append(drawn.spec)
        row_of += [r] * len(drawn.cols)
        cols += drawn.cols
        vals += drawn.vals
        placed[r] = sum(drawn.vals)
        group_max[r], class_max[r] = drawn.noise_group_max, drawn.noise_class_max
        taken[r, drawn.quiet_groups] = True
    p = _noise(rng, np.maximum(0.0, 1.0 - placed), taken, group_max, class_max)
    np.add.at(p, (np.array(row_of), np.array(cols)), np.array(vals))
    return _to_log_probs(p), [caption_for(spec) for spec in specs], specs


def generate_pairs(n: int, seed: int | Sequence[int], chunk: int = 4096) -> tuple[np.ndarray, list[str]]:
    """``n`` pairs, deterministic in ``seed``: log-probabilities (n, 1000) float32 and captions,
    made ``chunk`` rows at a time."""
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng(seed)
    draws = _Draws(rng)
    out = np.empty((n, NUM_CLASSES), dtype=np.float32)
    captions: list[str] = []
    for start in range(0, n, chunk):
        out[start : start + chunk], chunk_captions, _ = _draw_rows(rng, draws, min(chunk, n - start))
        captions += chunk_captions
    return out, captions
