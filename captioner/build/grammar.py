"""The grammar of the bundled model's captions: what a classifier distribution mentions, and the sentence.

No captioned photos exist offline, so the decoder of the bundled model learns from generated
pairs. Each sample is a :class:`SceneSpec` (1-3 objects, an optional garment, an optional
place), a classifier distribution built from it the way a real classifier spreads its mass
(over WordNet siblings and cousins, plus unrelated noise), and the caption the grammar writes
for it.

The caption is a deterministic function of the distribution's structure. Classes are grouped
by a *general word* (their nearest ancestor among the curated basic-level categories below:
every dog breed is in "dog", tabby / tiger cat / Egyptian cat in "cat"); a class without one
is a group of its own. The rule, used by both the generator and :func:`template_caption`:

1. A group's mass is the sum of its ``GROUP_TOP`` most probable classes (alias classes count for
   their target): a classifier that spreads 0.3 thinly over a hundred dog breeds, as it does on
   a lawn, does not see a dog.
2. Groups with mass >= ``MENTION_MIN`` are mentioned, heaviest first, at most ``MAX_SLOTS`` in
   all, at most one place (``scene``) and one garment (``clothing``); when none reaches it (a
   flat distribution: textures, microscopy), the group of the single most probable class alone
   is mentioned.
3. A mentioned group is named by its top class when that class holds >= ``SPECIFIC_SHARE`` of
   the group's mass (or the group has one class), otherwise by its general word.
4. :func:`caption_for` writes the mentions as one short sentence.

The generator draws specs whose groups sit clearly on one side of each threshold (mass >= 0.16,
top share >= 0.58 or <= 0.42; in flat samples no group above 0.08 and no class above 0.3 of the
named one's group), so the caption is learnable from the distribution, while noise and spill make
the template disagree on a small share of samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from captioner.build.lexicon import ALIASES, NUM_CLASSES, SCENE_GENERAL_PHRASES, SCENES, SERVINGS, lexicon

MENTION_MIN = 0.12
SPECIFIC_SHARE = 0.5
MAX_SLOTS = 3
GROUP_TOP = 5
MAX_TOKENS = 12


# --------------------------------------------------------------------------------------------
# Grammar
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mention:
    """One thing a caption names: a class, by its own phrase or by its group's general word."""

    index: int
    specific: bool


@dataclass(frozen=True)
class SceneSpec:
    """The ground truth of one sample: objects heaviest first, an optional garment and place."""

    objects: tuple[Mention, ...] = ()
    clothing: Mention | None = None
    scene: Mention | None = None


def mention_np(mention: Mention) -> str:
    """The noun phrase a mention is written as."""
    lex = lexicon()
    entry = lex.classes[mention.index]
    group = lex.groups[entry.group]
    if mention.specific or group.word is None:
        return entry.np
    return group.np


def _scene_phrase(mention: Mention, alone: bool) -> str:
    lex = lexicon()
    entry = lex.classes[mention.index]
    group = lex.groups[entry.group]
    if not mention.specific and group.word is not None:
        return group.np if alone else SCENE_GENERAL_PHRASES[group.word]
    after, by_itself = SCENES[ALIASES.get(entry.index, entry.index)]
    return (by_itself or entry.np) if alone else after


def _join(nps: list[str]) -> str:
    if len(nps) <= 2:
        return " and ".join(nps)
    return " ".join(nps[:-1]) + " and " + nps[-1]


def caption_for(spec: SceneSpec) -> str:
    """The caption of a scene: "a cup of espresso", "a person wearing a kimono with a dog".

    Objects come heaviest first ("a b and c"). A garment makes "a person" (or a person class
    among the objects) the subject: "<wearer> wearing <garment> with <objects>". A place follows
    with its preposition ("on a seashore") or stands alone ("a view of a valley"). A served food
    leaves out its container classes, equal phrases are written once, and past ``MAX_TOKENS``
    words the lightest object, then the place, is left out.
    """
    lex = lexicon()
    if not spec.objects and spec.clothing is None and spec.scene is None:
        raise ValueError("a scene needs at least one object, garment or place")
    objects = list(spec.objects)
    wearer = None
    if spec.clothing is not None:
        wearer = next((m for m in objects if lex.classes[m.index].kind == "person"), None)
        if wearer is not None:
            objects.remove(wearer)
    # "a cup of espresso" already says "cup": leave the cup itself out.
    served = {c for m in objects if m.specific and m.index in SERVINGS for c in SERVINGS[m.index][1]}
    nps = [mention_np(m) for m in objects if not (m.specific and m.index in served)]
    nps = list(dict.fromkeys(nps))  # never "a missile and a missile"
    scene = spec.scene

    def build() -> str:
        head = ""
        if spec.clothing is not None:
            head = f"{mention_np(wearer) if wearer else 'a person'} wearing {mention_np(spec.clothing)}"
            if nps:
                head += " with " + _join(nps)
        elif nps:
            head = _join(nps)
        if scene is None:
            return head
        return f"{head} {_scene_phrase(scene, alone=False)}" if head else _scene_phrase(scene, alone=True)

    # Too long: leave out the lightest object, then the place, then the garment's company.
    text = build()
    while len(text.split()) > MAX_TOKENS:
        if len(nps) > 1:
            nps.pop()
        elif scene is not None and (nps or spec.clothing is not None):
            scene = None
        elif nps and spec.clothing is not None:
            nps.pop()
        else:
            break
        text = build()
    return text


def grammar_phrases() -> list[str]:
    """Every phrase a caption is made of: a vocabulary built from them covers every caption."""
    lex = lexicon()
    phrases = ["a person wearing with and"]
    for entry in lex.classes:
        for mention in (Mention(entry.index, True), Mention(entry.index, False)):
            phrases.append(mention_np(mention))
            if entry.kind == "scene":
                phrases += [_scene_phrase(mention, alone=True), _scene_phrase(mention, alone=False)]
    return phrases


# --------------------------------------------------------------------------------------------
# Template baseline: the grammar applied to a classifier's output
# --------------------------------------------------------------------------------------------


@functools.cache
def _groups_over_top() -> list[tuple[int, np.ndarray]]:
    """(group, its classes) for the groups with more than ``GROUP_TOP`` classes."""
    return [(g, np.asarray(group.members)) for g, group in enumerate(lexicon().groups)
            if len(group.members) > GROUP_TOP]


def _group_masses(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities with aliases folded into their targets, and each group's mass (rule 1)."""
    lex = lexicon()
    folded = p.copy()
    for alias, target in ALIASES.items():
        folded[target] += folded[alias]
        folded[alias] = 0.0
    mass = np.bincount(lex.group_of, weights=folded, minlength=len(lex.groups))
    for g, members in _groups_over_top():
        mass[g] = np.partition(folded[members], -GROUP_TOP)[-GROUP_TOP:].sum()
    return folded, mass


def spec_from_distribution(log_probs: np.ndarray) -> SceneSpec:
    """The scene the rule reads from a classifier's log-probabilities (see the module doc)."""
    lp = np.asarray(log_probs, dtype=np.float64)
    if lp.shape != (NUM_CLASSES,) or not np.all(np.isfinite(lp) | (lp == -np.inf)):
        raise ValueError(f"expected {NUM_CLASSES} finite log-probabilities, got shape {lp.shape}")
    lex = lexicon()
    folded, mass = _group_masses(np.exp(lp))
    order = np.argsort(-mass, kind="stable")
    chosen = [g for g in order if mass[g] >= MENTION_MIN] or [lex.group_of[int(np.argmax(folded))]]
    objects, clothing, scene = [], None, None
    for g in chosen:
        group = lex.groups[g]
        members = np.asarray(group.members)
        top = int(members[np.argmax(folded[members])])
        specific = group.word is None or folded[top] >= SPECIFIC_SHARE * mass[g]
        mention = Mention(top, bool(specific))
        if group.kind == "scene":
            if scene is not None:
                continue
            scene = mention
        elif group.kind == "clothing":
            if clothing is not None:
                continue
            clothing = mention
        else:
            objects.append(mention)
        if len(objects) + (clothing is not None) + (scene is not None) == MAX_SLOTS:
            break
    return SceneSpec(tuple(objects), clothing, scene)


def template_caption(log_probs: np.ndarray) -> str:
    """The deterministic baseline: the grammar applied to the classifier's top groups."""
    return caption_for(spec_from_distribution(log_probs))
