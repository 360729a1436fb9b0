"""The real-photo set builder: Qt resources, credits and licences, WordNet subjects, the written set."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from captioner.build.imagenet import wordnet
from captioner.build.photos.__main__ import main
from captioner.build.photos.credits import licence_id, parse_credits
from captioner.build.photos.gcompris import RCC_DIR
from captioner.build.photos.qt_resources import QtResources
from captioner.build.photos.record import ANIMAL, NATURAL_OBJECT
from captioner.build.photos.subjects import Subject, caption_for, resolve
from captioner.core.errors import DatasetError
from captioner.training.datasets import read_dataset

needs_gcompris = pytest.mark.skipif(not (RCC_DIR / "explore_farm_animals.rcc").is_file(),
                                    reason="GCompris's data is not installed (apt-get install gcompris-qt-data)")
needs_wordnet = pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                                   reason="WordNet is not installed (apt-get install wordnet-base)")


@needs_gcompris
def test_qt_resources_read_the_installed_files():
    resources = QtResources(RCC_DIR / "explore_farm_animals.rcc")
    folder = "/gcompris/src/activities/explore_farm_animals/resource"
    assert f"{folder}/animals/horse.webp" in resources.paths()
    with Image.open(io.BytesIO(resources.read(f"{folder}/animals/horse.webp"))) as image:
        assert image.format == "WEBP" and min(image.size) > 100
    board = resources.read(f"{folder}/board/board1.qml").decode()  # a zlib-compressed entry
    assert "qsTr(\"Horse\")" in board
    with pytest.raises(DatasetError, match="holds no"):
        resources.read(f"{folder}/animals/unicorn.webp")


def test_a_file_that_is_not_a_qt_resource_is_refused(tmp_path):
    (tmp_path / "x.rcc").write_bytes(b"PK\x03\x04 not a resource file")
    with pytest.raises(DatasetError, match="not a Qt resource file"):
        QtResources(tmp_path / "x.rcc")


def test_credits_read_every_layout_the_package_uses():
    text = """Copyright: Kurt Kaiser
License: CC0-1.0
Source: https://commons.wikimedia.org/wiki/File:American_Bison_9.jpg
Files:
bison.webp

Copyright: aussiegall
Source: https://commons.wikimedia.org/wiki/File:Pollinationn.jpg
License: CC-BY-2.0
Comments: cropping, sharpening
Files: bee.webp

Copyright:
  Copyright 2011 NASA
  Copyright 2018 Someone
License: Public Domain
Comment: original source at https://en.wikipedia.org/wiki/File:Mercury.jpg
Files:
  mercury.webp

Copyright: 2000, 2008 Bruno Coudoin and others
License: CC-BY 4.0
EilanDonanCastle_0.webp
EilanDonanCastle_background.webp
Comment: based on a photo by Guillaume Piolle, license CC-BY 3.0, source at https://example.org/castle.jpg
"""
    credits = parse_credits(text)
    assert credits["bison.webp"].author == "Kurt Kaiser"
    assert credits["bison.webp"].origin.endswith("American_Bison_9.jpg")
    assert credits["bee.webp"].licence_text == "CC-BY-2.0"
    assert credits["mercury.webp"].author == "2011 NASA; 2018 Someone"
    assert credits["mercury.webp"].origin == "https://en.wikipedia.org/wiki/File:Mercury.jpg"
    castle = credits["EilanDonanCastle_background.webp"]
    assert castle.based_on_photo and castle.licence_text == "CC-BY 4.0"
    assert castle.author.startswith("Guillaume Piolle (photo); ")
    assert castle.origin == "https://example.org/castle.jpg"
    assert not credits["bison.webp"].based_on_photo


@pytest.mark.parametrize("text, expected", [
    ("Public Domain", "public-domain"), ("public-domain", "public-domain"), ("CC0-1.0", "CC0-1.0"),
    ("CC0", "CC0-1.0"), ("CC-BY-SA 4.0", "CC-BY-SA-4.0"), ("CC-BY 2.0", "CC-BY-2.0"), ("CC-BY-SA-2.5", "CC-BY-SA-2.5"),
    ("GPLv2+", "GPL-2.0-or-later"), ("GPLv3", "GPL-3.0-only"), ("GFDL-NIV-1.2+", "GFDL-1.2-or-later"),
    ("Public domain (work of the U.S. federal government; see note)", "public-domain"),
    ("no known copyright restrictions", "no-known-copyright-restrictions"),
    ("CC-BY-NC 4.0", None), ("CC-BY-NC-SA-3.0", None), ("CC-BY-ND 4.0", None), ("All rights reserved", None),
    ("", None), ("Fair use", None),
])
def test_only_licences_that_let_anyone_use_and_share_are_accepted(text, expected):
    assert licence_id(text) == expected


@needs_wordnet
def test_subjects_are_the_sense_under_the_domain_or_the_head_noun():
    net = wordnet()
    (mercury,) = resolve(net, ("Mercury",), NATURAL_OBJECT)
    assert "planet" in net.synset(mercury.synset).gloss
    (macaw,) = resolve(net, ("Scarlet macaw",), ANIMAL)
    assert macaw.phrase == "macaw" and net.synset(macaw.synset).lemmas[0] == "macaw"
    (hedgehog,) = resolve(net, ("hedgehog#2",), ANIMAL)
    assert "Erinaceus europaeus" in net.synset(hedgehog.synset).lemmas
    with pytest.raises(DatasetError, match="no noun for 'zzyzx'"):
        resolve(net, ("zzyzx",), ANIMAL)


@needs_wordnet
def test_short_captions_name_the_subject_with_the_right_article():
    net = wordnet()

    def caption(word, domain="n00001930"):
        (subject,) = resolve(net, (word,), domain)
        return caption_for(net, subject)

    assert caption("Polar bear", ANIMAL) == "a polar bear"
    assert caption("owl", ANIMAL) == "an owl"
    assert caption("Eiffel Tower") == "the eiffel tower"
    assert caption("Reims Cathedral") == "a cathedral"
    assert caption("camels", ANIMAL) == "camels"
    assert caption("scissors", "n00021939") == "scissors"
    assert caption("Uranus", NATURAL_OBJECT) == "uranus"
    assert caption_for(net, Subject(net.noun_synsets("sun")[0], "Sun")) == "the sun"


@pytest.fixture(scope="module")
def photo_set(tmp_path_factory) -> Path:
    if not (RCC_DIR / "explore_farm_animals.rcc").is_file() or not Path("/usr/share/wordnet/data.noun").is_file():
        pytest.skip("needs gcompris-qt-data and wordnet-base")
    out = tmp_path_factory.mktemp("photoset") / "set"
    assert main([str(out)]) == 0
    return out


def _manifest(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]


def test_the_set_holds_real_photos_with_sources_licences_and_subjects(photo_set):
    lines = _manifest(photo_set)
    assert len(lines) >= 250
    accepted = {"public-domain", "CC0-1.0", "no-known-copyright-restrictions"}
    for line in lines:
        assert line["licence"] in accepted or line["licence"].startswith(("CC-BY-", "GPL-", "GFDL-")), line
        assert line["source"] and line["author"] and line["licence_text"]
        assert line["subjects"] and all(s["synset"].startswith("n") and len(s["synset"]) == 9 for s in line["subjects"])
        assert line["captions"] and all(c == c.strip() and c for c in line["captions"])
        with Image.open(photo_set / line["file"]) as image:
            assert image.size == (line["width"], line["height"])
    keys = [line["key"] for line in lines]
    assert len(keys) == len(set(keys))
    assert {line["split"] for line in lines} == {"train", "heldout"}
    by_key = {line["key"]: line for line in lines}
    assert by_key["farm-horse"]["captions"] == ["a horse"]
    assert "single-toed hooves" in " ".join(by_key["farm-horse"]["descriptions"])
    assert by_key["solar-mercury"]["subjects"][0]["lemma"] == "Mercury"
    assert by_key["examples-coffee"]["captions"][0].startswith("a cup of coffee")  # hand-written captions
    # No painting of the details activity and no drawing of the lang activity got in.
    assert not any("Gogh" in key or "lang" in key for key in keys)


def test_duplicates_and_files_without_licence_are_left_out_and_said_so(photo_set):
    keys = {line["key"] for line in _manifest(photo_set)}
    assert "monuments-colosseum" in keys and "categorization-monuments-colosseum" not in keys
    readme = (photo_set / "README.md").read_text()
    assert "categorization/resource/images/monuments/colosseum.webp: the same original as monuments-colosseum" in readme
    assert "aulaPalatina.webp: the package's credits name no licence for this file" in readme
    for key in keys:
        assert f"`{key}." in readme  # a credits row per photo


def test_the_coco_splits_are_read_by_training(photo_set):
    train, _ = read_dataset("coco", photo_set / "captions_train.json", photo_set / "photos")
    held, _ = read_dataset("coco", photo_set / "captions_heldout.json", photo_set / "photos")
    assert len(train) + len(held) == len(_manifest(photo_set))
    assert len(held) >= 0.1 * (len(train) + len(held))
    assert not {item.image_path for item in train} & {item.image_path for item in held}


def test_a_folder_that_is_not_a_set_is_never_overwritten(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main([str(tmp_path)]) == 1
    assert "is not a photo set this command wrote" in capsys.readouterr().err
    assert (tmp_path / "mine.txt").read_text() == "keep me"
