"""Real photos with their names and descriptions from GCompris (Debian's ``gcompris-qt-data``).

Read from the Qt resource files the package installs, activity by activity:

- explore farm animals, explore world animals, explore monuments, explore world music: a photo
  per board entry with its title and one or two sentences (``title``, ``text``, ``text2``);
- solar system: a photo of the Sun and of each planet, with its name;
- details: photos of castles and monuments with a one-line caption (the activity's paintings are
  left out: only pictures the credits say are based on a photo are kept);
- erase: animal photos named by their file names;
- categorization: fishes, tools, monuments, renewable energy and household objects, named by their
  category (fishes) or their file names.

Every photo's author, licence and original come from the ``README`` beside it in the package.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator
from pathlib import Path

from captioner.build.photos.credits import Credit, parse_credits
from captioner.build.photos.qt_resources import QtResources
from captioner.build.photos.record import ANIMAL, ARTIFACT, NATURAL_OBJECT, PHYSICAL_ENTITY, Photo
from captioner.core.errors import DatasetError

RCC_DIR = Path("/usr/share/gcompris-qt/rcc")
PACKAGE = "gcompris-qt-data"
_ROOT = "/gcompris/src/activities"

# Described things for photos whose name is not an English noun phrase WordNet knows (a place's
# name, a region, a file name), chosen from the photo's name, its description and its original's
# title. Keys are photo keys.
CURATED: dict[str, tuple[str, ...]] = {
    "monuments-chichenItza": ("pyramid",), "monuments-christTheRedeemer": ("statue",),
    "monuments-machuPicchu": ("ruins",), "monuments-petra": ("temple",), "monuments-hawaMahal": ("palace",),
    "monuments-gatewayofIndia": ("arch#4",), "monuments-ajantaCave": ("cave",), "monuments-charminar": ("mosque",),
    "monuments-rangGhar": ("building",), "monuments-qutubMinar": ("minaret",), "monuments-montStMichel": ("abbey",),
    "monuments-citedeCarcassonne": ("castle#2",), "monuments-pontduGard": ("aqueduct",),
    "monuments-chateaudeChambord": ("chateau",), "monuments-chateaudeChenonceau": ("chateau",),
    "monuments-rocamadour": ("village",), "monuments-palaisdesPapes": ("palace",),
    "monuments-neuschwansteinCastle": ("castle#2",), "monuments-trierImperialBaths": ("ruins",),
    "monuments-aulaPalatina": ("basilica",), "monuments-cabrillo": ("statue",), "monuments-canyondeChelly": ("canyon",),
    "monuments-castillodeSanMarcos": ("fort#2",), "monuments-castleClinton": ("fort#2",), "monuments-fortSumter": ("fort#2",),
    "monuments-georgeWashingtonBirthplace": ("house",), "monuments-navajo": ("cliff dwelling",),
    "monuments-lincolnMemorial": ("memorial",), "monuments-victoriaMemorial": ("memorial",),
    "music-australia": ("wind instrument",), "music-africa": ("drum",), "music-middleeast": ("lute#2",),
    "music-japan": ("drum",), "music-ireland": ("musician",), "music-italy": ("singer",),
    "music-orchestra": ("musician",), "music-mexico": ("guitar",), "music-america": ("drum", "guitar"),
    "details-OperaSidney": ("opera house",), "details-TowerBridgeLondon": ("bridge",),
    "details-Louvre_2007_02_24_c": ("Louvre", "pyramid"), "details-Chenonceau": ("chateau",),
    "details-FanoeWindmill": ("windmill",), "details-Neuschwanstein": ("castle#2",), "details-EilanDonanCastle": ("castle#2",),
    "details-Nagoya": ("castle#2",), "details-EgeskovSlotSpejling": ("castle#2",), "details-GizahPyramids": ("pyramid",), "details-NDP": ("cathedral",),
    "erase-chamaeleon": ("chameleon",), "erase-dolphin": ("dolphin#2",), "erase-northern_harrier": ("hen harrier",),
    "animals-hedgehog": ("hedgehog#2",), "monuments-greatPyramidOfGiza": ("pyramid",), "monuments-meidumPyramid": ("pyramid",),
    "categorization-monuments-arcDeTriomphe": ("triumphal arch",),
    "categorization-monuments-bayterek": ("tower",), "categorization-monuments-burj": ("skyscraper",),
    "categorization-monuments-christTheRedeemer": ("statue",), "categorization-monuments-empireState": ("Empire State Building",),
    "categorization-monuments-greatPyramid": ("pyramid",), "categorization-monuments-IndiaGate": ("arch#4",),
    "categorization-monuments-jucheTower": ("tower",), "categorization-monuments-kutubMinar": ("minaret",),
    "categorization-monuments-leMusee": ("Louvre", "pyramid"), "categorization-monuments-monument1": ("mosque",),
    "categorization-monuments-monument2": ("arch#4",), "categorization-monuments-monument3": ("church",),
    "categorization-monuments-operaHouse": ("opera house",), "categorization-monuments-usCapitol": ("Capitol",),
    "categorization-monuments-victoriaMemorial": ("memorial",), "categorization-monuments-zimniPalace": ("palace",),
    "categorization-monuments-leaningTowerOfPisa": ("Leaning Tower",),
    "categorization-tools-cuttingTool": ("cutting implement",), "categorization-tools-multimeter": ("meter",),
    "categorization-tools-measuringTape": ("tape measure",), "categorization-tools-nailCutter": ("clipper#4",),
    "categorization-tools-screDriver": ("screwdriver",),
    "categorization-tools-screwDriver": ("screwdriver",), "categorization-tools-plier": ("pliers",),
    "categorization-tools-hammer": ("hammer#2",), "categorization-others-plate": ("plate#4",), "categorization-tools-sideCutter": ("wire cutter",),
    "categorization-tools-spray": ("atomizer",), "categorization-others-blackslate": ("blackboard",),
    "categorization-others-buffetset": ("cup", "saucer"), "categorization-others-bulb": ("light bulb",),
    "categorization-others-weighingMachine": ("scale",), "categorization-others-bucket": ("pail",),
    "categorization-renewable-geothermal": ("power station",), "categorization-renewable-solar1": ("cooker",),
    "categorization-renewable-solar2": ("oven",), "categorization-renewable-solar3": ("oven",),
    "categorization-renewable-solar4": ("solar array",), "categorization-renewable-solar5": ("solar panel",),
    "categorization-renewable-solar6": ("solar panel",), "categorization-renewable-solar7": ("solar panel",),
    "categorization-renewable-solar8": ("solar collector",), "categorization-renewable-windmill6": ("wind generator",),
}

_EXPLORE = (("explore_farm_animals", "farm", ANIMAL), ("explore_world_animals", "animals", ANIMAL),
            ("explore_monuments", "monuments", PHYSICAL_ENTITY), ("explore_world_music", "music", PHYSICAL_ENTITY))
_CATEGORIES = (("fishes", ANIMAL), ("tools", ARTIFACT), ("others", ARTIFACT), ("monuments", PHYSICAL_ENTITY),
               ("renewable", ARTIFACT))
_STRING = r'"((?:[^"\\]|\\.)*)"'


def gcompris_photos(rcc_dir: Path = RCC_DIR) -> list[Photo]:
    """Every photo of the activities above, in a stable order."""
    if not (rcc_dir / "explore_farm_animals.rcc").is_file():
        raise DatasetError(f"GCompris's resource files are not in {rcc_dir}: install them with "
                           "`apt-get install gcompris-qt-data`.")
    photos: list[Photo] = []
    for activity, prefix, domain in _EXPLORE:
        photos += _explore(rcc_dir, activity, prefix, domain)
    photos += _solar_system(rcc_dir)
    photos += _details(rcc_dir)
    photos += _erase(rcc_dir)
    for category, domain in _CATEGORIES:
        photos += _categorization(rcc_dir, category, domain)
    return photos


@functools.cache
def _resources(path: Path) -> QtResources:
    return QtResources(path)


def _text(rcc_dir: Path, activity: str, path: str) -> str:
    return _resources(rcc_dir / f"{activity}.rcc").read(path).decode("utf-8")


def _credits(rcc_dir: Path, activity: str, folder: str) -> dict[str, Credit]:
    return parse_credits(_text(rcc_dir, activity, f"{folder}/README"))


def _credit(credits: dict[str, Credit], file: str) -> Credit:
    """The file's credit; a file its README does not name has no licence (and is left out of the set)."""
    return credits.get(file) or Credit(author="unknown", licence_text="")


def _fields(text: str) -> Iterator[tuple[str, str]]:
    """``"key": qsTr("value")`` and ``"key": "value"`` pairs of a QML or JavaScript data file, in order."""
    pattern = rf'"?(\w+)"?\s*:\s*(?:qsTr\(\s*{_STRING}\s*\)|(?:\w+\s*\+\s*)?{_STRING})'
    for match in re.finditer(pattern, text):
        value = match.group(2) if match.group(2) is not None else match.group(3)
        yield match.group(1), json.loads(f'"{value}"')


def _records(text: str, first: str) -> list[dict[str, str]]:
    """Groups of fields, a new group at each ``first`` key."""
    records: list[dict[str, str]] = []
    for key, value in _fields(text):
        if key == first:
            records.append({})
        if records:
            records[-1].setdefault(key, value)
    return records


def _photo(rcc_dir: Path, activity: str, resource: str, key: str, name: str, descriptions: tuple[str, ...],
           credit: Credit, domain: str) -> Photo:
    rcc = rcc_dir / f"{activity}.rcc"
    curated = CURATED.get(key) or CURATED.get(re.sub(r"\d+$", "", key))
    return Photo(
        key=key, suffix=Path(resource).suffix, read=functools.partial(_resources(rcc).read, resource),
        name=name, descriptions=tuple(d for d in descriptions if d), captions=(),
        subject_words=curated or (name,), subject_from="curated" if curated else "name", domain=domain,
        source=f"{PACKAGE}: {rcc.name}:{resource}", origin=credit.origin, author=credit.author,
        licence_text=credit.licence_text)


def _explore(rcc_dir: Path, activity: str, prefix: str, domain: str) -> list[Photo]:
    folder = f"{_ROOT}/{activity}/resource"
    boards = sorted(p for p in _resources(rcc_dir / f"{activity}.rcc").paths() if p.startswith(f"{folder}/board/"))
    photos = []
    for board in boards:
        for record in _records(_text(rcc_dir, activity, board), "title"):
            image = record.get("image2", "").removeprefix("qrc:")
            if not image.startswith(folder):
                continue
            relative = image[len(folder) + 1 :]
            readme = folder if activity == "explore_monuments" else f"{folder}/{relative.split('/')[0]}"
            credit = _credit(_credits(rcc_dir, activity, readme), relative[len(readme) - len(folder):].lstrip("/"))
            texts = (record.get("text", ""),) + ((record["text2"],) if record.get("text2") != record["title"] else ())
            photos.append(_photo(rcc_dir, activity, image, f"{prefix}-{Path(image).stem}", record["title"],
                                 texts, credit, domain))
    return photos


def _solar_system(rcc_dir: Path) -> list[Photo]:
    folder = f"{_ROOT}/solar_system/resource"
    credits = _credits(rcc_dir, "solar_system", folder)
    photos = []
    for record in _records(_text(rcc_dir, "solar_system", f"{_ROOT}/solar_system/Dataset.js"), "realImg"):
        image = record["realImg"].removeprefix("qrc:")
        photos.append(_photo(rcc_dir, "solar_system", image, f"solar-{Path(image).stem}", record["bodyName"], (),
                             _credit(credits, Path(image).name), NATURAL_OBJECT))
    return photos


def _details(rcc_dir: Path) -> list[Photo]:
    folder = f"{_ROOT}/details/resource"
    credits = _credits(rcc_dir, "details", f"{folder}/image")
    boards = sorted(p for p in _resources(rcc_dir / "details.rcc").paths() if p.startswith(f"{folder}/board/"))
    photos = []
    for board in boards:
        text = _text(rcc_dir, "details", board)
        title = re.search(rf"instruction:\s*qsTr\(\s*{_STRING}", text)
        background = re.search(r'"pixmapfile"\s*:\s*"(image/[^"]+_background\.\w+)"', text)
        if title is None or background is None:
            continue
        credit = _credit(credits, background.group(1).removeprefix("image/"))
        if not credit.based_on_photo:
            continue  # a painting
        name = json.loads(f'"{title.group(1)}"')
        stem = Path(background.group(1)).stem.removesuffix("_background")
        photos.append(_photo(rcc_dir, "details", f"{folder}/{background.group(1)}", f"details-{stem}",
                             name, (name,), credit, PHYSICAL_ENTITY))
    return photos


def _erase(rcc_dir: Path) -> list[Photo]:
    folder = f"{_ROOT}/erase/resource"
    credits = _credits(rcc_dir, "erase", folder)
    photos = []
    for file in _pictures(rcc_dir, "erase", folder):
        name = Path(file).stem.replace("_", " ")
        photos.append(_photo(rcc_dir, "erase", f"{folder}/{file}", f"erase-{Path(file).stem}", name, (),
                             _credit(credits, file), ANIMAL))
    return photos


def _pictures(rcc_dir: Path, activity: str, folder: str) -> list[str]:
    """The photos (WebP files) directly in ``folder``, by file name."""
    paths = _resources(rcc_dir / f"{activity}.rcc").paths()
    return [p[len(folder) + 1 :] for p in paths if p.startswith(f"{folder}/") and p.endswith(".webp")
            and "/" not in p[len(folder) + 1 :]]


def _categorization(rcc_dir: Path, category: str, domain: str) -> list[Photo]:
    folder = f"{_ROOT}/categorization/resource/images/{category}"
    credits = _credits(rcc_dir, "categorization", folder)
    photos = []
    for file in _pictures(rcc_dir, "categorization", folder):
        credit = _credit(credits, file)
        stem = Path(file).stem
        words = re.sub(r"\d+$", "", stem)
        name = "fish" if category == "fishes" else re.sub(r"(?<=[a-z])(?=[A-Z])", " ", words).lower()
        photos.append(_photo(rcc_dir, "categorization", f"{folder}/{file}", f"categorization-{category}-{stem}",
                             name, (), credit, domain))
    return photos
