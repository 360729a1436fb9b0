"""The README written beside the photo set: what it is, how it was made, and every photo's credit."""

from __future__ import annotations

from collections import Counter

from captioner.build.photos.assemble import Built, licence_counts


def readme(built: Built) -> str:
    entries = built.entries
    splits = Counter(entry.split for entry in entries)
    sources = Counter(entry.photo.source.split(":")[0] for entry in entries)
    subject_from = Counter(entry.photo.subject_from for entry in entries)
    lines = [
        "# captioner real-photo set",
        "",
        f"{len(entries)} real photos ({splits['train']} for training, {splits['heldout']} held out), each with what",
        "its source says it shows, written by people: a name, a description or captions. Built by",
        "`python -m captioner.build.photos OUT_DIR` from installed packages; nothing is downloaded.",
        "",
        "| source | photos |",
        "|---|---|",
        *[f"| {source} | {count} |" for source, count in sources.most_common()],
        "",
        "## Files",
        "",
        "- `photos/`: each photo exactly as its package ships it (WebP, JPEG or PNG).",
        "- `manifest.jsonl`: one photo a line: `file`, `key`, `split` (`train` | `heldout`), `name` (what the",
        "  source calls it), `descriptions` (the source's own sentences, verbatim), `captions` (those in the",
        "  COCO files), `subjects` (the described thing as WordNet 3.0 noun synsets: `synset`, `lemma`,",
        "  `named_as`, `gloss`), `subject_from`, `source`, `origin`, `author`, `licence`, `licence_text`,",
        "  `width`, `height`, `sha256`.",
        "- `captions_train.json`, `captions_heldout.json`: COCO captions format, `file_name` relative to",
        "  `photos/`: `python -m captioner train --format coco --annotations captions_train.json --images photos",
        "  --val-annotations captions_heldout.json ...`.",
        "",
        "## How it is made",
        "",
        "- Captions: the project's hand-written captions where it has them (`tests/data`: the examples and",
        "  scikit-image's photos); otherwise one caption made from the source's name for the photo, reduced",
        "  to the words WordNet confirms (\"a polar bear\", \"the eiffel tower\", \"a cathedral\" for \"Reims",
        "  Cathedral\"), with an article.",
        f"- Subjects ({subject_from['name']} from the source's own name for the photo, {subject_from['curated']}"
        " chosen by hand from the name, the description and the original's title where the name is a",
        "  place or a region): the WordNet synset of what the photo shows, used to judge whether a caption",
        "  is right.",
        "- Licences: only photos whose source states a licence that lets anyone use, adapt and share them",
        "  (public domain, CC0, \"no known copyright restrictions\", CC BY, CC BY-SA, GPL, GFDL) are taken;",
        "  attribution and share-alike terms apply to those that say so (the table below).",
        "- Duplicates (the same original, or the same picture by a 64-bit difference hash) are kept once.",
        "",
        "| licence | photos |",
        "|---|---|",
        *[f"| {licence} | {count} |" for licence, count in sorted(licence_counts(built).items())],
        "",
        "## Left out",
        "",
        *([f"- {source}: {why}" for source, why in built.left_out] or ["Nothing."]),
        "",
        "## Credits",
        "",
        "| file | shows | author | licence | original |",
        "|---|---|---|---|---|",
        *[f"| `{e.file}` | {_cell(e.photo.name)} | {_cell(e.photo.author)} | {e.licence} | {_cell(e.photo.origin or '')} |"
          for e in entries],
        "",
    ]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return " ".join(text.replace("|", "\\|").split())
