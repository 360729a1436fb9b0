"""The example gallery listing, and reading model cards for display."""

from __future__ import annotations

from captioner.web.gallery import list_examples
from captioner.core.repository.modelcard import summarize_card


def test_examples_are_the_image_files_in_the_folder(tmp_path, example_photos):
    for name in ("b.JPG", "a.png", ".hidden.jpg", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_examples(tmp_path)] == ["a.png", "b.JPG"]
    assert list_examples(tmp_path / "missing") == []
    assert len(list_examples(tmp_path, limit=1)) == 1
    assert {p.stem for p in list_examples(next(iter(example_photos.values())).parent)} == set(example_photos)


def test_every_shipped_example_has_an_attribution_entry(example_photos):
    attribution = (next(iter(example_photos.values())).parent / "ATTRIBUTION.md").read_text(encoding="utf-8")
    for photo in list_examples(next(iter(example_photos.values())).parent):
        assert f"`{photo.name}`" in attribution, f"{photo.name} has no entry in examples/ATTRIBUTION.md"


CARD = """---
library_name: captioner
license: apache-2.0
datasets: [coco]
---

# Show-and-Tell (ResNet-152)

Captions photos in one English sentence.

It was trained on COCO.

## Training
Five epochs.

## Limitations and bias
Repeats the biases of COCO.

### Gender
Guesses gender from looks.

```
# not a heading
```

## Out-of-scope use
Not for medical images.

## Citation
Vinyals et al.
"""


def test_card_summary_limits_and_metadata():
    card = summarize_card(CARD)
    assert card.title == "Show-and-Tell (ResNet-152)"
    assert card.summary == "Captions photos in one English sentence.\n\nIt was trained on COCO."
    assert [heading for heading, _ in card.limits] == ["Limitations and bias", "Out-of-scope use"]
    limits = card.limits[0][1]
    assert "Repeats the biases" in limits and "### Gender" in limits and "# not a heading" in limits
    assert "Five epochs" not in limits and "Vinyals" not in card.limits[1][1]
    assert card.metadata["license"] == "apache-2.0" and card.body.startswith("# Show-and-Tell")


def test_cards_without_or_with_broken_front_matter():
    assert summarize_card("Just text.").summary == "Just text."
    broken = summarize_card("---\nlicense: [\n---\n# Title\nBody.\n")
    assert broken.metadata == {} and broken.title == "Title" and broken.summary == "Body."
    assert summarize_card("") == summarize_card("")  # no error on an empty card
