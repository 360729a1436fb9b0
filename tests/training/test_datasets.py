"""Each data set format read from a small fixture in that format, faults included."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from captioner.training.datasets import (FORMATS, CaptionedImage, SkipReason, read_dataset, require_images,
                                         split_holdout)
from captioner.core.errors import DatasetError


def make_images(folder: Path, *names: str) -> Path:
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\xff\xd8\xff\xe0 not decoded by the reader")
    return folder


def by_id(items: list[CaptionedImage]) -> dict[str, CaptionedImage]:
    return {item.image_id: item for item in items}


# ------------------------------------------------------------------------------------ coco


def write_coco(path: Path) -> Path:
    data = {
        "info": {"description": "tiny"},
        "images": [
            {"id": 1, "file_name": "COCO_1.jpg", "width": 10, "height": 10},
            {"id": 2, "file_name": "COCO_2.jpg"},
            {"id": 3, "file_name": "COCO_3_missing.jpg"},
            {"id": 4, "file_name": "COCO_4.jpg"},  # no captions at all
            {"file_name": "no_id.jpg"},  # broken entry
        ],
        "annotations": [
            {"id": 10, "image_id": 1, "caption": "A cat on a mat."},
            {"id": 11, "image_id": 1, "caption": "  A  cat\nsleeping. "},
            {"id": 12, "image_id": 2, "caption": "A dog in the park."},
            {"id": 13, "image_id": 2, "caption": "   "},  # empty
            {"id": 14, "image_id": 3, "caption": "A bird."},
            {"id": 15, "image_id": 99, "caption": "Nobody's image."},  # unknown id
            {"id": 16, "image_id": 2},  # broken: no caption
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_coco_reads_captions_and_counts_faults(tmp_path: Path) -> None:
    images = make_images(tmp_path / "train2014", "COCO_1.jpg", "COCO_2.jpg", "COCO_4.jpg")
    items, report = read_dataset("coco", write_coco(tmp_path / "captions_train2014.json"), images)

    found = by_id(items)
    assert list(found) == ["1", "2"]
    assert found["1"].captions == ["A cat on a mat.", "A cat sleeping."]
    assert found["1"].image_path == images / "COCO_1.jpg"
    assert found["2"].captions == ["A dog in the park."]
    assert found["1"].split is None
    assert (report.images, report.captions) == (2, 3)
    assert report.skipped == {
        SkipReason.BROKEN_LINE: 2,
        SkipReason.EMPTY_CAPTION: 1,
        SkipReason.UNKNOWN_IMAGE: 1,
        SkipReason.MISSING_IMAGE: 1,
        SkipReason.NO_CAPTIONS: 1,
    }
    assert report.skipped["missing image file"] == 1  # the keys are the plain texts users see
    assert any("99" in example for example in report.examples[SkipReason.UNKNOWN_IMAGE])
    assert any("COCO_3_missing.jpg" in e for e in report.examples[SkipReason.MISSING_IMAGE])
    summary = report.summary()
    assert "Loaded 2 images with 3 captions" in summary
    assert "missing image file: 1" in summary and "caption for unknown image id: 1" in summary


def test_coco_split_argument_labels_items(tmp_path: Path) -> None:
    images = make_images(tmp_path / "val2014", "COCO_1.jpg", "COCO_2.jpg")
    items, report = read_dataset("coco", write_coco(tmp_path / "c.json"), images, split="val")
    assert {item.split for item in items} == {"val"}
    assert "split val" in report.summary()


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"images": []}', "not COCO captions"),
        ('[1, 2, 3]', "not COCO captions"),
        ('{"images": [{"filename": "a.jpg", "sentences": []}]}', "use format 'karpathy'"),
    ],
)
def test_coco_wrong_shape_raises(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "captions.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError, match=message):
        read_dataset("coco", path, tmp_path)


def test_absent_files_and_unknown_format_raise(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Annotations file not found"):
        read_dataset("coco", tmp_path / "nope.json", tmp_path)
    path = write_coco(tmp_path / "c.json")
    with pytest.raises(DatasetError, match="Image folder not found"):
        read_dataset("coco", path, tmp_path / "no_such_dir")
    with pytest.raises(DatasetError, match="Unknown data set format"):
        read_dataset("yolo", path, tmp_path)
    assert FORMATS == ("coco", "karpathy", "flickr8k", "csv", "folder")


# -------------------------------------------------------------------------------- karpathy


def write_karpathy(path: Path) -> Path:
    def image(
        imgid: int, filename: str, split: str, raws: list[str | None], filepath: str | None = None
    ) -> dict:
        sentences = []
        for raw in raws:
            tokens = raw.lower().strip(".").split() if raw is not None else ["a", "tokenised", "caption"]
            sentence: dict = {"tokens": tokens, "imgid": imgid}
            if raw is not None:
                sentence["raw"] = raw
            sentences.append(sentence)
        entry = {"imgid": imgid, "filename": filename, "split": split, "sentences": sentences}
        if filepath is not None:
            entry["filepath"] = filepath
            entry["cocoid"] = 1000 + imgid
        return entry

    data = {
        "dataset": "coco",
        "images": [
            image(0, "a.jpg", "train", ["A red bus.", "A bus on a street."], filepath="train2014"),
            image(1, "b.jpg", "restval", ["Two dogs playing."], filepath="val2014"),
            image(2, "c.jpg", "val", ["A plate of food.", ""], filepath="val2014"),  # empty raw
            image(3, "d.jpg", "test", [None], filepath="val2014"),  # tokens only
            image(4, "e_missing.jpg", "test", ["Nothing here."], filepath="val2014"),
            {"imgid": 5, "split": "train"},  # broken: no filename/sentences
        ],
    }
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


KARPATHY_FILES = ("train2014/a.jpg", "val2014/b.jpg", "val2014/c.jpg", "val2014/d.jpg")


def test_karpathy_all_splits_with_filepath(tmp_path: Path) -> None:
    images = make_images(tmp_path / "coco", *KARPATHY_FILES)
    items, report = read_dataset("karpathy", write_karpathy(tmp_path / "dataset_coco.json"), images)

    found = by_id(items)
    assert list(found) == ["1000", "1001", "1002", "1003"]
    assert found["1000"].image_path == images / "train2014" / "a.jpg"
    assert found["1000"].captions == ["A red bus.", "A bus on a street."]
    assert found["1001"].split == "train"  # restval counts as train
    assert found["1002"].captions == ["A plate of food."]
    assert found["1003"].captions == ["a tokenised caption"]
    assert report.skipped[SkipReason.EMPTY_CAPTION] == 1
    assert report.skipped[SkipReason.MISSING_IMAGE] == 1
    assert report.skipped[SkipReason.BROKEN_LINE] == 1


def test_karpathy_tokens_used_when_raw_is_absent(tmp_path: Path) -> None:
    path = tmp_path / "dataset_flickr8k.json"
    path.write_text(json.dumps({"images": [
        {"imgid": 7, "filename": "x.jpg", "split": "test",
         "sentences": [{"tokens": ["a", "man", "surfing"]}]},
    ]}), encoding="utf-8")
    items, _ = read_dataset("karpathy", path, make_images(tmp_path / "img", "x.jpg"))
    assert items[0].captions == ["a man surfing"]
    assert items[0].image_path == tmp_path / "img" / "x.jpg"  # no filepath: directly in the folder
    assert items[0].image_id == "7"


@pytest.mark.parametrize(
    "split, expected", [("train", {"1000", "1001"}), ("val", {"1002"}), ("test", {"1003"})]
)
def test_karpathy_split_selects(tmp_path: Path, split: str, expected: set[str]) -> None:
    images = make_images(tmp_path / "coco", *KARPATHY_FILES)
    items, report = read_dataset("karpathy", write_karpathy(tmp_path / "d.json"), images, split=split)
    assert set(by_id(items)) == expected
    assert {item.split for item in items} == {split}
    assert report.split == split


def test_karpathy_bad_split_and_coco_file_raise(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="Unknown split 'dev'"):
        read_dataset("karpathy", write_karpathy(tmp_path / "d.json"), tmp_path, split="dev")
    with pytest.raises(DatasetError, match="use format 'coco'"):
        read_dataset("karpathy", write_coco(tmp_path / "c.json"), tmp_path)


# -------------------------------------------------------------------------------- flickr8k


TOKENS = (
    "1000_a.jpg#0\tA child in a pink dress is climbing up a set of stairs .\n"
    "1000_a.jpg#1\tA girl going into a wooden building .\n"
    "1001_b.jpg#0\tA black dog and a spotted dog are fighting\n"
    "1001_b.jpg#1\t   \n"  # empty caption
    "this line has no tab at all\n"  # broken
    "\n"
    "1002_missing.jpg#0\tA little girl covered in paint .\n"
    "1003_c.jpg#0\tA man lays on a bench .\r\n"
    "2258277193_586949ec62.jpg.1#0\tThe real Flickr8k file has this line too .\n"
)


def write_flickr(folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    token = folder / "Flickr8k.token.txt"
    token.write_bytes(TOKENS.encode() + b"1003_c.jpg#1\tbad bytes \xff\xfe here\n")
    (folder / "Flickr_8k.trainImages.txt").write_text("1000_a.jpg\n1001_b.jpg\nnot_annotated.jpg\n")
    (folder / "Flickr_8k.devImages.txt").write_text("1003_c.jpg\n")
    (folder / "Flickr_8k.testImages.txt").write_text("1002_missing.jpg\n")
    images = make_images(folder / "Flicker8k_Dataset", "1000_a.jpg", "1001_b.jpg", "1003_c.jpg")
    return token, images


def test_flickr8k_reads_all_and_counts_faults(tmp_path: Path) -> None:
    token, images = write_flickr(tmp_path)
    items, report = read_dataset("flickr8k", token, images)

    found = by_id(items)
    assert list(found) == ["1000_a.jpg", "1001_b.jpg", "1003_c.jpg"]
    assert found["1000_a.jpg"].captions == [
        "A child in a pink dress is climbing up a set of stairs .",
        "A girl going into a wooden building .",
    ]
    assert found["1003_c.jpg"].captions == ["A man lays on a bench ."]
    assert found["1003_c.jpg"].image_path == images / "1003_c.jpg"
    assert report.skipped == {
        SkipReason.EMPTY_CAPTION: 1,
        SkipReason.BROKEN_LINE: 2,  # no tab; not UTF-8
        SkipReason.MISSING_IMAGE: 2,  # 1002_missing.jpg, 2258277193_586949ec62.jpg.1
    }
    assert any("line 5" in e for e in report.examples[SkipReason.BROKEN_LINE])
    assert (report.images, report.captions) == (3, 4)


def test_flickr8k_split_file_keeps_listed_images(tmp_path: Path) -> None:
    token, images = write_flickr(tmp_path)
    split_file = tmp_path / "Flickr_8k.trainImages.txt"
    items, report = read_dataset("flickr8k", token, images, split_file=split_file)
    assert [item.image_id for item in items] == ["1000_a.jpg", "1001_b.jpg"]
    assert {item.split for item in items} == {"train"}  # from the list's file name
    assert report.skipped[SkipReason.NOT_IN_DATA] == 1
    assert "not_annotated.jpg" in report.examples[SkipReason.NOT_IN_DATA][0]
    assert SkipReason.MISSING_IMAGE not in report.skipped  # images outside the split are not looked at


def test_flickr8k_split_finds_the_standard_list(tmp_path: Path) -> None:
    token, images = write_flickr(tmp_path)
    items, _ = read_dataset("flickr8k", token, images, split="val")
    assert [(item.image_id, item.split) for item in items] == [("1003_c.jpg", "val")]
    items, report = read_dataset("flickr8k", token, images, split="test")
    assert items == [] and report.skipped == {
        SkipReason.EMPTY_CAPTION: 1, SkipReason.BROKEN_LINE: 2, SkipReason.MISSING_IMAGE: 1,
    }


def test_flickr8k_errors(tmp_path: Path) -> None:
    token, images = write_flickr(tmp_path)
    (tmp_path / "Flickr_8k.testImages.txt").unlink()
    with pytest.raises(DatasetError, match="No split list for 'test'"):
        read_dataset("flickr8k", token, images, split="test")
    with pytest.raises(DatasetError, match="Split list not found"):
        read_dataset("flickr8k", token, images, split_file=tmp_path / "absent.txt")
    with pytest.raises(DatasetError, match="not a Flickr8k token file"):
        read_dataset("flickr8k", write_coco(tmp_path / "c.json"), images)


# ------------------------------------------------------------------------------- csv/jsonl


def test_csv_groups_rows_and_counts_faults(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", "a.png", "sub/b.png")
    absolute = make_images(tmp_path / "elsewhere", "c.png") / "c.png"
    path = tmp_path / "captions.csv"
    path.write_text(
        "image,caption\n"
        "a.png,A cat on a sofa.\n"
        'a.png,"A cat, sleeping on a sofa."\n'
        "sub/b.png,A red car.\n"
        "sub/b.png,A red car, parked.\n"  # broken: unquoted comma -> 3 fields
        "a.png\n"  # broken: 1 field
        "sub/b.png,\n"  # empty caption
        "missing.png,A missing picture.\n"
        f"{absolute},An absolute path.\n"
        "\n",
        encoding="utf-8",
    )
    items, report = read_dataset("csv", path, images)

    found = by_id(items)
    assert list(found) == ["a.png", "sub/b.png", str(absolute)]
    assert found["a.png"].captions == ["A cat on a sofa.", "A cat, sleeping on a sofa."]
    assert found["sub/b.png"].image_path == images / "sub" / "b.png"
    assert found[str(absolute)].image_path == absolute
    assert report.skipped == {
        SkipReason.BROKEN_LINE: 2, SkipReason.EMPTY_CAPTION: 1, SkipReason.MISSING_IMAGE: 1,
    }
    assert any("expected 2 fields, found 3" in e for e in report.examples[SkipReason.BROKEN_LINE])


def test_csv_split_column_selects(tmp_path: Path) -> None:
    images = make_images(tmp_path, "a.png", "b.png")
    path = tmp_path / "c.csv"
    path.write_text("image,caption,split\na.png,one,train\nb.png,two,val\na.png,three,train\n")
    items, _ = read_dataset("csv", path, images, split="train")
    assert [(item.image_id, item.captions, item.split) for item in items] == [
        ("a.png", ["one", "three"], "train")
    ]
    items, _ = read_dataset("csv", path, images)
    assert [item.split for item in items] == ["train", "val"]


def test_csv_without_header_raises(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("a.png,A cat.\n")
    with pytest.raises(DatasetError, match="columns 'image' and 'caption'"):
        read_dataset("csv", path, tmp_path)
    path.write_text("")
    with pytest.raises(DatasetError, match="empty"):
        read_dataset("csv", path, tmp_path)
    other = tmp_path / "c.xml"
    other.write_text("<x/>")
    with pytest.raises(DatasetError, match=r"\.csv .* \.jsonl"):
        read_dataset("csv", other, tmp_path)


def test_jsonl_counts_broken_lines(tmp_path: Path) -> None:
    images = make_images(tmp_path / "img", "a.jpg", "b.jpg")
    path = tmp_path / "captions.jsonl"
    path.write_text(
        '{"image": "a.jpg", "caption": "A boat on a lake."}\n'
        '{"image": "b.jpg", "caption": "A kite."\n'  # broken JSON
        '{"image": "b.jpg", "caption": "A kite in the sky."}\n'
        '["a.jpg", "not an object"]\n'  # wrong shape
        '{"image": "a.jpg", "caption": ""}\n'  # empty
        '{"image": "gone.jpg", "caption": "Nothing."}\n'  # missing image
        '{"image": "a.jpg", "caption": "A small boat."}\n',
        encoding="utf-8",
    )
    items, report = read_dataset("csv", path, tmp_path / "img")
    assert [(item.image_id, item.captions) for item in items] == [
        ("a.jpg", ["A boat on a lake.", "A small boat."]),
        ("b.jpg", ["A kite in the sky."]),
    ]
    assert report.skipped == {
        SkipReason.BROKEN_LINE: 2, SkipReason.EMPTY_CAPTION: 1, SkipReason.MISSING_IMAGE: 1,
    }
    assert report.examples[SkipReason.BROKEN_LINE][0].startswith("line 2: invalid JSON")


def test_jsonl_of_the_wrong_shape_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"file": "a.jpg"}\n{"file": "b.jpg"}\n')
    with pytest.raises(DatasetError, match="not JSON Lines"):
        read_dataset("csv", path, tmp_path)


def test_report_keeps_at_most_five_examples(tmp_path: Path) -> None:
    path = tmp_path / "c.csv"
    path.write_text("image,caption\n" + "".join(f"m{i}.png,caption {i}\n" for i in range(12)))
    items, report = read_dataset("csv", path, tmp_path)
    assert items == []
    assert report.skipped[SkipReason.MISSING_IMAGE] == 12
    assert len(report.examples[SkipReason.MISSING_IMAGE]) == 5


# ---------------------------------------------------------------------------- split_holdout


def test_split_holdout_is_deterministic_and_disjoint() -> None:
    items = [CaptionedImage(Path(f"{i}.jpg"), [f"c{i}"], None, str(i)) for i in range(50)]
    train, val = split_holdout(items, 0.2, seed=3)
    assert len(val) == 10 and len(train) == 40
    assert {i.image_id for i in train}.isdisjoint(i.image_id for i in val)
    assert {i.split for i in train} == {"train"} and {i.split for i in val} == {"val"}
    # Same ids held out whatever the order of the input; another seed picks others.
    again_train, again_val = split_holdout(list(reversed(items)), 0.2, seed=3)
    assert {i.image_id for i in again_val} == {i.image_id for i in val}
    assert {i.image_id for i in split_holdout(items, 0.2, seed=4)[1]} != {i.image_id for i in val}
    assert [i.image_id for i in train] == sorted((i.image_id for i in train), key=int)  # order kept


def test_split_holdout_limits() -> None:
    two = [CaptionedImage(Path(f"{i}.jpg"), ["c"], None, str(i)) for i in range(2)]
    train, val = split_holdout(two, 0.01, seed=0)
    assert (len(train), len(val)) == (1, 1)
    assert len(split_holdout(two, 0.99, seed=0)[0]) == 1
    with pytest.raises(ValueError):
        split_holdout(two, 1.0, seed=0)
    with pytest.raises(DatasetError):
        split_holdout(two[:1], 0.5, seed=0)


# ---------------------------------------------------------------------------------- folder


@pytest.mark.parametrize("table", ["captions.csv", "captions.jsonl"])
def test_folder_reads_its_own_table_with_several_captions_per_image(tmp_path: Path, table: str) -> None:
    folder = make_images(tmp_path / "photos", "cat.jpg", "sub/dog.png")
    rows = [("cat.jpg", "a cat on a sofa"), ("sub/dog.png", "a dog"), ("cat.jpg", "a sleeping cat"),
            ("gone.jpg", "a photo that is not there")]
    if table.endswith(".csv"):
        text = "image,caption\n" + "".join(f'{image},"{caption}"\n' for image, caption in rows)
    else:
        text = "".join(json.dumps({"image": image, "caption": caption}) + "\n" for image, caption in rows)
    (folder / table).write_text(text, encoding="utf-8")
    items, report = read_dataset("folder", None, folder)
    found = by_id(items)
    assert found["cat.jpg"].captions == ["a cat on a sofa", "a sleeping cat"]
    assert found["sub/dog.png"].image_path == folder / "sub" / "dog.png"
    assert report.skipped == {SkipReason.MISSING_IMAGE: 1} and report.format == "folder"


def test_folder_without_or_with_two_tables_says_what_it_needs(tmp_path: Path) -> None:
    folder = make_images(tmp_path / "photos", "cat.jpg")
    with pytest.raises(DatasetError, match="captions.csv or captions.jsonl"):
        read_dataset("folder", None, folder)
    (folder / "captions.csv").write_text("image,caption\ncat.jpg,a cat\n")
    (folder / "captions.jsonl").write_text('{"image": "cat.jpg", "caption": "a cat"}\n')
    with pytest.raises(DatasetError, match="both"):
        read_dataset("folder", None, folder)
    items, _ = read_dataset("folder", folder / "captions.jsonl", folder)  # named: that one
    assert [i.captions for i in items] == [["a cat"]]


def test_every_image_missing_names_the_count_a_few_files_and_the_folder(tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-folder"
    wrong.mkdir()
    annotations = tmp_path / "captions.csv"
    annotations.write_text("image,caption\n" + "".join(f"photo{i}.jpg,a photo\n" for i in range(17)))
    items, report = read_dataset("csv", annotations, wrong)
    with pytest.raises(DatasetError) as raised:
        require_images(items, report, wrong)
    message = str(raised.value)
    assert "none of the 17 images" in message and str(wrong.resolve()) in message
    assert "photo0.jpg" in message and "--images" in message


def test_too_few_images_to_hold_out_counts_the_missing_ones(tmp_path: Path) -> None:
    folder = make_images(tmp_path, "a.jpg")
    annotations = tmp_path / "captions.csv"
    annotations.write_text("image,caption\na.jpg,a cat\nb.jpg,a dog\nc.jpg,a bird\n")
    items, report = read_dataset("csv", annotations, folder)
    with pytest.raises(DatasetError, match=r"1 found; 2 more are missing from the image folder \(e.g. .*b.jpg"):
        split_holdout(items, 0.2, report=report)
