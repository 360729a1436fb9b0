"""Synthetic training pairs: plausible ImageNet classifier outputs with short English captions.

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
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from captioner.build.imagenet import imagenet_classes

NUM_CLASSES = 1000
MENTION_MIN = 0.12
SPECIFIC_SHARE = 0.5
MAX_SLOTS = 3
GROUP_TOP = 5
MAX_TOKENS = 12

# --------------------------------------------------------------------------------------------
# Class knowledge (curated). Everything else is derived from WordNet 3.0.
# --------------------------------------------------------------------------------------------

# General words, most specific first: a class takes the nearest of these among its WordNet
# ancestors (ties go to the earlier entry). A word may stand for several synsets.
GENERAL_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dog", ("n02084071",)),
    ("wolf", ("n02114100",)),
    ("fox", ("n02118333",)),
    ("wild dog", ("n02115335",)),
    ("cat", ("n02121808", "n02121620")),  # domestic cat; cat (lynx, cougar)
    ("big cat", ("n02127808",)),
    ("bear", ("n02131653",)),
    ("monkey", ("n02484322",)),
    ("ape", ("n02470325",)),
    ("lemur", ("n02496913",)),
    ("elephant", ("n02503517",)),
    ("whale", ("n02062744",)),
    ("pig", ("n02395003",)),
    ("antelope", ("n02419796",)),
    ("sheep", ("n02411705",)),
    ("rabbit", ("n02323902",)),
    ("rodent", ("n02329401",)),
    ("parrot", ("n01816887",)),
    ("bird of prey", ("n01604330",)),
    ("bird", ("n01503061",)),
    ("shark", ("n01482330",)),
    ("fish", ("n02512053",)),
    ("snake", ("n01726692",)),
    ("lizard", ("n01674464",)),
    ("turtle", ("n01662784",)),
    ("frog", ("n01639765",)),
    ("salamander", ("n01629276",)),
    ("spider", ("n01772222",)),
    ("butterfly", ("n02274259",)),
    ("beetle", ("n02164464",)),
    ("insect", ("n02159955",)),
    ("crab", ("n01976957",)),
    ("mushroom", ("n12992868", "n07734744")),
    ("flower", ("n11669921",)),
    ("person", ("n00007846",)),
    ("car", ("n02958343",)),
    ("truck", ("n04490091",)),
    ("bus", ("n02924116",)),
    ("train", ("n03684823", "n04468005", "n02959942")),  # locomotive, train, railway car
    ("bicycle", ("n02834778",)),
    ("motorcycle", ("n03790512",)),
    ("sailboat", ("n04128837",)),
    ("ship", ("n04194289",)),
    ("boat", ("n02858304",)),
    ("aircraft", ("n02686568",)),
    ("guitar", ("n03467517",)),
    ("piano", ("n03928116",)),
    ("drum", ("n03249569",)),
    ("brass instrument", ("n02891788",)),
    ("woodwind instrument", ("n04598582",)),
    ("musical instrument", ("n03800933",)),
    ("clock", ("n03046257",)),
    ("timepiece", ("n04437953",)),
    ("computer", ("n03082979",)),
    ("screen", ("n03211117",)),
    ("telephone", ("n04401088",)),
    ("camera", ("n02942699",)),
    ("lamp", ("n03636248",)),
    ("chair", ("n03001627",)),
    ("table", ("n04379243",)),
    ("bed", ("n02818832", "n02766320")),  # bed; baby bed
    ("furniture", ("n03405725",)),
    ("bottle", ("n02876657",)),
    ("bag", ("n02773037",)),
    ("box", ("n02883344",)),
    ("pot", ("n03990474",)),
    ("glass", ("n03438257",)),
    ("bowl", ("n02880940",)),
    ("cart", ("n02970849", "n03484083")),  # cart; handcart
    ("kitchen appliance", ("n03620052",)),
    ("appliance", ("n03528263",)),
    ("tool", ("n04451818", "n03489162")),
    ("gun", ("n03467984",)),
    ("weapon", ("n04565375",)),
    ("ball", ("n02778669",)),
    ("pen", ("n03906997",)),
    ("helmet", ("n03513137",)),
    ("hat", ("n03497657", "n03502509")),  # hat; headdress
    ("shoes", ("n03380867", "n03381126")),  # the two footwear synsets
    ("coat", ("n03057021",)),
    ("dress", ("n03236735",)),
    ("skirt", ("n04230808",)),
    ("swimsuit", ("n04371563",)),
    ("tie", ("n03815615",)),
    ("robe", ("n04097866", "n03450516")),  # robe; gown
    ("armor", ("n02739668",)),
    ("building", ("n02913152",)),
    ("bridge", ("n02898711",)),
    ("fence", ("n03327234",)),
    ("roof", ("n04105068",)),
    ("dish", ("n07557434",)),
    ("bread", ("n07679356",)),
    ("dessert", ("n07609840",)),
    ("squash", ("n07715561",)),
    ("fruit", ("n07705931", "n13134947")),  # edible fruit; fruit (acorn, hip)
    ("vegetable", ("n07707451",)),
    ("drink", ("n07881800",)),
)
# General words for places (only places take these).
SCENE_GENERAL_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (("shop", ("n04202417",)),)
# General words written without an article ("a person wearing shoes").
GENERAL_WITHOUT_ARTICLE = frozenset({"shoes", "armor", "bread"})
# Where WordNet's nearest category is wrong for captions: class -> general word (None: none).
GROUP_OVERRIDES: dict[int, str | None] = {
    664: "screen",  # monitor
    851: "screen",  # television
    670: "motorcycle",  # motor scooter
    829: "train",  # streetcar
    916: None,  # web site (a "computer" in WordNet)
    496: None,  # Christmas stocking (footwear in WordNet)
    704: None,  # parking meter (a timepiece in WordNet)
}
# Classes that are the same thing to a viewer: their mass counts for the target class, and they
# are never named themselves.
ALIASES: dict[int, int] = {
    836: 837,  # sunglass (a burning glass) -> sunglasses
    744: 657,  # projectile -> missile
    848: 482,  # tape player -> cassette player
    876: 435,  # tub -> bathtub
    987: 998,  # corn -> ear of corn
    638: 639,  # maillot (dancer's tights) -> maillot, tank suit
}

# Noun phrases where torchvision's name is ambiguous, duplicated, obscure or unidiomatic.
PHRASES: dict[int, str] = {
    4: "hammerhead shark", 7: "rooster", 21: "kite bird", 33: "loggerhead turtle",
    40: "anole", 41: "whiptail lizard", 67: "diamondback rattlesnake", 75: "black widow spider",
    87: "african grey parrot", 134: "crane", 161: "basset hound", 168: "redbone coonhound",
    191: "airedale terrier", 192: "cairn terrier", 194: "dandie dinmont terrier",
    195: "boston terrier", 199: "scottish terrier", 204: "lhasa apso", 216: "clumber spaniel",
    217: "english springer spaniel", 152: "japanese chin", 255: "leonberger", 256: "newfoundland dog",
    260: "chow chow", 263: "pembroke corgi", 264: "cardigan corgi", 268: "mexican hairless dog",
    281: "tabby cat", 296: "polar bear", 315: "praying mantis", 313: "stick insect",
    321: "admiral butterfly", 322: "ringlet butterfly", 323: "monarch butterfly",
    326: "lycaenid butterfly", 332: "angora rabbit", 339: "horse", 341: "pig", 349: "bighorn sheep",
    354: "camel", 364: "sloth", 370: "guenon monkey", 371: "patas monkey", 375: "colobus monkey",
    378: "capuchin monkey", 380: "titi monkey", 383: "ring tailed lemur", 387: "red panda",
    391: "coho salmon", 397: "pufferfish", 408: "amphibious vehicle", 410: "beehive",
    412: "trash can", 418: "ballpoint pen", 421: "banister", 428: "wheelbarrow",
    436: "station wagon", 437: "lighthouse", 439: "bearskin hat", 444: "tandem bicycle",
    455: "bottle cap", 458: "brass plaque", 459: "bra", 468: "taxi", 469: "cauldron",
    477: "toolkit", 487: "mobile phone", 491: "chainsaw", 509: "candy store",
    517: "construction crane", 521: "slow cooker", 533: "dishcloth", 540: "oil rig",
    553: "filing cabinet", 555: "fire truck", 564: "four poster bed", 570: "gas mask",
    575: "golf cart", 589: "hand dryer", 592: "hard disk", 595: "combine harvester",
    607: "jack o lantern", 608: "jeans", 612: "rickshaw", 628: "ocean liner",
    630: "loafers", 634: "sawmill", 635: "compass", 639: "swimsuit", 648: "medicine cabinet",
    673: "computer mouse", 680: "baby bottle", 681: "notebook computer", 687: "pipe organ",
    697: "pajamas", 699: "pan flute", 705: "railway carriage", 707: "payphone",
    714: "guitar pick", 717: "pickup truck", 724: "pirate ship", 726: "wood plane",
    737: "soda bottle", 738: "flowerpot", 746: "hockey puck", 749: "quill pen", 751: "race car",
    757: "camper van", 758: "fishing reel", 767: "eraser", 769: "ruler", 773: "salt shaker",
    776: "saxophone", 778: "weighing scale", 800: "slot machine", 829: "tram", 840: "mop",
    850: "teddy bear", 853: "thatched roof", 882: "vacuum cleaner", 881: "upright piano",
    897: "washing machine", 908: "airplane wing", 913: "shipwreck", 916: "website",
    930: "baguette", 934: "hot dog", 935: "mashed potatoes", 936: "cabbage",
    948: "granny smith apple", 962: "meatloaf", 964: "pot pie", 970: "mountain",
    986: "yellow lady slipper", 989: "rose hip", 998: "ear of corn", 999: "toilet paper",
    514: "cowboy boots", 502: "clogs", 770: "running shoes", 774: "sandals", 806: "socks",
    658: "mittens", 615: "knee pads", 984: "rapeseed",
}
# Plural and mass nouns: written without an article.
WITHOUT_ARTICLE = frozenset({
    608, 630, 697, 837, 842, 447, 702, 490, 885, 911, 958, 960, 961, 937, 514, 502, 770, 774,
    806, 658, 615, 551, 838, 631, 585,
})
# Served food and drink: class -> (container, container classes the caption then leaves out).
SERVINGS: dict[int, tuple[str, tuple[int, ...]]] = {
    967: ("cup", (504, 968)),  # espresso: coffee mug, cup
    966: ("glass", (572,)),  # red wine: goblet
    969: ("glass", (441, 572)),  # eggnog
    925: ("bowl", (809, 659)),  # consomme: soup bowl, mixing bowl
    924: ("bowl", (809, 659)),  # guacamole
    959: ("plate", (923,)),  # carbonara: plate (of food)
    935: ("plate", (923,)),  # mashed potatoes
    999: ("roll", ()),  # toilet paper
    711: ("bottle", ()),  # perfume
}
# Places: class -> (phrase after other things, phrase when alone or None for "a <place>").
SCENES: dict[int, tuple[str, str | None]] = {
    970: ("in the mountains", "a view of a mountain"),
    972: ("on a cliff", None),
    973: ("on a coral reef", None),
    974: ("near a geyser", None),
    975: ("by a lake", "a lakeside"),
    976: ("on a promontory", None),
    977: ("on a sandbar", None),
    978: ("on a seashore", None),
    979: ("in a valley", "a view of a valley"),
    980: ("near a volcano", "a volcano"),
    984: ("in a field of rapeseed", "a field of rapeseed"),
    415: ("in a bakery", None),
    424: ("in a barbershop", None),
    454: ("in a bookshop", None),
    467: ("in a butcher shop", None),
    509: ("in a candy store", None),
    582: ("in a grocery store", None),
    788: ("in a shoe shop", None),
    860: ("in a tobacco shop", None),
    865: ("in a toyshop", None),
    624: ("in a library", None),
    762: ("in a restaurant", None),
    819: ("on a stage", None),
    580: ("in a greenhouse", None),
    718: ("on a pier", None),
    706: ("on a patio", None),
}
SCENE_GENERAL_PHRASES = {"shop": "in a shop"}
# Garments and things worn: descendants of these synsets, plus a few more, minus a few.
CLOTHING_ROOTS = ("n03051540", "n03380867", "n02739668")  # clothing, footwear, armor
# cloak, sunglasses, necklace, gas mask, ski mask, breastplate, pickelhaube
CLOTHING_EXTRA = frozenset({501, 837, 679, 570, 796, 461, 715})
CLOTHING_EXCLUDE = frozenset({496, 529, 787})  # Christmas stocking, diaper, shield
PERSON_ROOT = "n00007846"

# --------------------------------------------------------------------------------------------
# Lexicon (derived)
# --------------------------------------------------------------------------------------------

_WORD = re.compile(r"[a-z0-9]+")
_FUNCTION_WORDS = frozenset("a an the of and with on in by near wearing view".split())


def tokens(text: str) -> list[str]:
    """Lowercase alphanumeric words: the tokenisation captions are written for."""
    return _WORD.findall(text.lower().replace("'", ""))


def _normalise(text: str) -> str:
    return " ".join(tokens(text))


def with_article(phrase: str) -> str:
    """``phrase`` with "a" or "an" by its first sound (enough for these nouns)."""
    word = phrase.split()[0]
    if word[0] in "aeio":
        vowel = not word.startswith(("eu", "one"))
    elif word[0] == "u":
        vowel = not word.startswith(("uni", "use", "usu", "uti", "ura", "uro"))
    elif word[0] == "h":
        vowel = word.startswith(("hour", "honest", "heir"))
    else:
        vowel = False
    return ("an " if vowel else "a ") + phrase


@dataclass(frozen=True)
class Group:
    """Classes a caption may name by one general word."""

    word: str | None  # None: a single class without a general word
    kind: str  # object | person | clothing | scene
    members: tuple[int, ...]
    np: str  # noun phrase as written: "a dog", "shoes"; for a single class its phrase


@dataclass(frozen=True)
class ClassEntry:
    """How captions speak of one ImageNet class."""

    index: int
    phrase: str  # bare noun phrase: "tabby cat"
    np: str  # as written: "a tabby cat", "jeans", "a cup of espresso"
    kind: str  # object | person | clothing | scene
    group: int  # index into Lexicon.groups
    alias_of: int | None


@dataclass(frozen=True)
class Lexicon:
    """Everything the grammar and the generator know about the 1000 classes."""

    classes: tuple[ClassEntry, ...]
    groups: tuple[Group, ...]
    group_of: np.ndarray  # (1000,) int: group index per class
    near_in: tuple[np.ndarray, ...]  # per class: nearest other members of its group
    near_out: tuple[np.ndarray, ...]  # per class: nearest classes outside its group


def _kind(index: int, ancestors) -> str:
    if index in SCENES:
        return "scene"
    if PERSON_ROOT in ancestors:
        return "person"
    worn = any(root in ancestors for root in CLOTHING_ROOTS) and index not in CLOTHING_EXCLUDE
    if worn or index in CLOTHING_EXTRA:
        return "clothing"
    return "object"


def _general_word(index: int, kind: str, ancestors) -> str | None:
    if index in GROUP_OVERRIDES:
        return GROUP_OVERRIDES[index]
    table = SCENE_GENERAL_WORDS if kind == "scene" else GENERAL_WORDS
    best = None
    for order, (word, synsets) in enumerate(table):
        for sid in synsets:
            if sid in ancestors and (best is None or (ancestors[sid], order) < best[0]):
                best = ((ancestors[sid], order), word)
    return best[1] if best else None


def _tree_distances(classes) -> np.ndarray:
    """Path length between every two classes through their nearest common WordNet ancestor."""
    members: dict[str, list[tuple[int, int]]] = {}
    for c in classes:
        for sid, depth in c.ancestors.items():
            members.setdefault(sid, []).append((c.index, depth))
    dist = np.full((NUM_CLASSES, NUM_CLASSES), 255, dtype=np.int16)
    for pairs in members.values():
        idx = np.array([i for i, _ in pairs])
        depth = np.array([d for _, d in pairs], dtype=np.int16)
        sub = np.ix_(idx, idx)
        dist[sub] = np.minimum(dist[sub], depth[:, None] + depth[None, :])
    return dist


@functools.cache
def lexicon() -> Lexicon:
    """The caption lexicon of the 1000 classes (built from WordNet once per process)."""
    classes = imagenet_classes()
    kinds, words = [], []
    for c in classes:
        kind = _kind(c.index, c.ancestors)
        kinds.append(kind)
        words.append(_general_word(c.index, kind, c.ancestors))
    for alias, target in ALIASES.items():
        kinds[alias], words[alias] = kinds[target], words[target]

    keys: dict[tuple, int] = {}
    group_of = np.empty(NUM_CLASSES, dtype=np.int64)
    for c in classes:
        target = ALIASES.get(c.index, c.index)
        key = (words[c.index], kinds[c.index]) if words[c.index] else ("class", target)
        group_of[c.index] = keys.setdefault(key, len(keys))

    phrases = [PHRASES.get(c.index, _normalise(c.name)) for c in classes]
    for alias, target in ALIASES.items():
        phrases[alias] = phrases[target]

    def class_np(index: int) -> str:
        phrase = phrases[index]
        if index in SERVINGS:
            return f"{with_article(SERVINGS[index][0])} of {phrase}"
        return phrase if index in WITHOUT_ARTICLE else with_article(phrase)

    entries = tuple(
        ClassEntry(c.index, phrases[c.index], class_np(ALIASES.get(c.index, c.index)), kinds[c.index],
                   int(group_of[c.index]), ALIASES.get(c.index))
        for c in classes
    )
    groups = []
    for (word, kind_or_target), g in sorted(keys.items(), key=lambda kv: kv[1]):
        members = tuple(int(i) for i in np.flatnonzero(group_of == g))
        if word == "class":
            target = kind_or_target
            groups.append(Group(None, kinds[target], members, entries[target].np))
        else:
            np_ = word if word in GENERAL_WITHOUT_ARTICLE else with_article(word)
            groups.append(Group(word, kind_or_target, members, np_))

    dist = _tree_distances(classes)
    order = np.argsort(dist, axis=1, kind="stable")  # nearest first, ties by index
    near_in, near_out = [], []
    named = np.array([i not in ALIASES for i in range(NUM_CLASSES)])
    for i in range(NUM_CLASSES):
        candidates = order[i][(order[i] != i) & named[order[i]]]
        same = group_of[candidates] == group_of[i]
        near_in.append(candidates[same][:8])
        out = [c for c in SERVINGS.get(i, ("", ()))[1]] + [int(c) for c in candidates[~same][:6]]
        near_out.append(np.array(list(dict.fromkeys(out))[:6], dtype=np.int64))
    return Lexicon(entries, tuple(groups), group_of, tuple(near_in), tuple(near_out))


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
