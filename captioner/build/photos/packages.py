"""Real photos from the Python packages and the repository: ``examples/`` and scikit-image's data.

``examples/ATTRIBUTION.md`` gives each example's description, author and licence;
``tests/data/captions_*.json`` hold hand-written captions of the examples and of scikit-image photos.
scikit-image states each photo's licence in the docstring of its loader (``skimage/data/_fetchers.py``):
the statement quoted below must still be there when the set is built. Photos whose loader states no
licence (moon, page, the stereo motorcycle) and drawings (the horse silhouette) are not taken.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path

from captioner.build.photos.record import Photo
from captioner.core.errors import DatasetError

REPOSITORY = Path(__file__).resolve().parents[3]
ENTITY = "n00001740"  # subjects below name their WordNet sense explicitly


@dataclass(frozen=True)
class _Skimage:
    file: str  # in skimage/data
    loader: str  # its loader in skimage/data/_fetchers.py, whose docstring states the licence
    licence: str
    quote: str  # the docstring's words for the licence
    subjects: tuple[str, ...]


_SKIMAGE = (
    _Skimage("clock_motion.png", "clock", "public domain", "Released into the public domain by the photographer",
             ("clock#1",)),
    _Skimage("coins.png", "coins", "no known copyright restrictions", "No known copyright restrictions",
             ("coin#1",)),
    _Skimage("hubble_deep_field.jpg", "hubble_deep_field", "public domain", "may be freely used in the public domain",
             ("galaxy#3",)),
    _Skimage("retina.jpg", "retina", "CC0-1.0", "Creative Commons CC0 1.0", ("retina#1",)),
    _Skimage("text.png", "text", "public domain", "released into the public domain",
             ("handwriting#1", "equation#1", "paper#1")),
    _Skimage("cell.png", "cell", "CC0-1.0", "This image is CC0", ("cell#2",)),
    _Skimage("brick.png", "brick", "CC0-1.0", "Creative Commons CC0 License", ("brick#1", "wall#1")),
    _Skimage("grass.png", "grass", "CC0-1.0", "Creative Commons CC0 License", ("grass#1",)),
    _Skimage("gravel.png", "gravel", "CC0-1.0", "Creative Commons CC0 License", ("gravel#1",)),
    _Skimage("ihc.png", "immunohistochemistry", "no known copyright restrictions", "No known copyright restrictions",
             ("tissue#1",)),
    _Skimage("microaneurysms.png", "microaneurysms", "CC0-1.0", "CC0 given by owner (Andreas Maier)", ("retina#1",)),
)

_EXAMPLE_SUBJECTS = {
    "astronaut.jpg": ("astronaut#1",), "camera.jpg": ("photographer#1", "camera#1", "tripod#1"),
    "chelsea-the-cat.jpg": ("cat#1",), "coffee.jpg": ("espresso#1", "cup#1"),
    "grace-hopper.jpg": ("woman#1", "military uniform#1"), "rocket.jpg": ("rocket#1",),
}


def package_photos(repository: Path = REPOSITORY) -> list[Photo]:
    """The repository's examples and scikit-image's photos, with their hand-written captions."""
    captions = _hand_written_captions(repository / "tests" / "data")
    return _examples(repository / "examples", captions) + _skimage_photos(captions)


def _hand_written_captions(folder: Path) -> dict[str, list[str]]:
    """``file_name`` (``examples/x.jpg``, ``skimage/y.png``) -> its captions, training ones first."""
    captions: dict[str, list[str]] = {}
    for name in ("captions_train.json", "captions_val.json"):
        data = json.loads((folder / name).read_text(encoding="utf-8"))
        files = {image["id"]: image["file_name"] for image in data["images"]}
        for annotation in data["annotations"]:
            captions.setdefault(files[annotation["image_id"]], []).append(annotation["caption"])
    return captions


def _examples(folder: Path, captions: dict[str, list[str]]) -> list[Photo]:
    rows = _attribution_rows((folder / "ATTRIBUTION.md").read_text(encoding="utf-8"))
    photos = []
    for file, subjects in _EXAMPLE_SUBJECTS.items():
        if file not in rows:
            raise DatasetError(f"examples/ATTRIBUTION.md has no row for {file}.")
        shows, source, author, licence = rows[file]
        path = folder / file
        photos.append(Photo(
            key=f"examples-{path.stem}", suffix=path.suffix, read=path.read_bytes, name=shows, descriptions=(shows,),
            captions=tuple(captions.get(f"examples/{file}", ())), subject_words=subjects, subject_from="curated",
            domain=ENTITY, source=f"captioner repository: examples/{file} ({source})",
            origin=_first_url(source) or _first_url(author), author=_unlink(author), licence_text=_unlink(licence)))
    return photos


def _attribution_rows(text: str) -> dict[str, tuple[str, str, str, str]]:
    """``| `file` | what it shows | source | author | licence |`` rows of ATTRIBUTION.md."""
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (cells[1], cells[2], cells[3], cells[4])
    return rows


def _skimage_photos(captions: dict[str, list[str]]) -> list[Photo]:
    import skimage.data._fetchers as fetchers  # the build extra; only the data folder and docstrings are read

    folder = Path(fetchers.__file__).parent
    photos = []
    for entry in _SKIMAGE:
        raw = inspect.getdoc(getattr(fetchers, entry.loader)) or ""
        doc = " ".join(raw.split())
        if entry.quote not in doc:
            raise DatasetError(f"scikit-image's {entry.loader}() no longer states {entry.quote!r}: "
                               "check the photo's licence before adding it to the set.")
        path = folder / entry.file
        paragraphs = _description(raw)
        photos.append(Photo(
            key=f"skimage-{path.stem}", suffix=path.suffix, read=path.read_bytes, name=paragraphs[0],
            descriptions=paragraphs, captions=tuple(captions.get(f"skimage/{entry.file}", ())),
            subject_words=entry.subjects, subject_from="curated", domain=ENTITY,
            source=f"scikit-image: skimage/data/{entry.file} (licence in the docstring of {entry.loader}())",
            origin=_first_url(doc), author=_author(doc), licence_text=entry.licence))
    return photos


def _description(docstring: str) -> tuple[str, ...]:
    """The docstring's paragraphs before its first section (``Notes``, ``Returns``, ...), at most two."""
    paragraphs = []
    for block in docstring.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or (len(lines) > 1 and set(lines[1]) <= {"-"}):
            break
        paragraphs.append(" ".join(" ".join(lines).split()))
    return tuple(paragraphs[:2])


def _first_url(text: str) -> str | None:
    found = re.search(r"https?://[^\s>`)]+", text)
    return found.group(0) if found else None


def _unlink(text: str) -> str:
    return re.sub(r"\s*\(?<https?://[^>]+>\)?", "", text).strip()


def _author(doc: str) -> str:
    found = re.search(r"(?:photographer|owner) \(([^)]+)\)", doc) or re.search(r"captured by (\w+)", doc)
    return found.group(1) if found else "unknown (scikit-image's data)"
