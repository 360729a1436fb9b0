"""The words of the bundled model's grammar: each ImageNet class's phrase, its general word (its
nearest curated basic-level category among its WordNet 3.0 ancestors) and its kind (object, person,
garment, place), with the class distances the generator spreads mass over.

Curated tables first (general words, phrases, aliases, places, garments); everything else is
derived from WordNet by ``lexicon()``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from captioner.build.imagenet import imagenet_classes

NUM_CLASSES = 1000

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
