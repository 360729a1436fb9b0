import pytest

from captioner.core.errors import ModelFormatError
from captioner.core.model.vocabulary import END_ID, START_ID, UNK_ID, Vocabulary, tokenize


def test_tokenize_lowercases_and_drops_punctuation():
    assert tokenize("A Dog's red ball, on the GRASS!") == ["a", "dog's", "red", "ball", "on", "the", "grass"]
    assert tokenize("  ") == []
    assert tokenize("two-tone café 3d") == ["two", "tone", "café", "3d"]


def test_build_keeps_words_at_threshold_most_frequent_first():
    vocab = Vocabulary.build(["a cat", "a cat", "a dog", "a bird"], min_count=2)
    assert vocab.tokens == ["<pad>", "<start>", "<end>", "<unk>", "a", "cat"]


def test_encode_decode_round_trip_with_unknown_words():
    vocab = Vocabulary.build(["a cat on a mat"] * 4)
    ids = vocab.encode("A cat on a sofa")
    assert ids[0] == START_ID and ids[-1] == END_ID and UNK_ID in ids
    assert vocab.decode(ids) == "a cat on a <unk>"
    assert vocab.decode([START_ID, vocab.index["cat"], END_ID, vocab.index["mat"]]) == "cat"


def test_save_load(tmp_path):
    vocab = Vocabulary.build(["a cat on a mat"] * 4)
    vocab.save(tmp_path / "vocab.json")
    assert Vocabulary.load(tmp_path / "vocab.json").tokens == vocab.tokens


@pytest.mark.parametrize("content, message", [
    ('["a", "b"]', "must start with"),
    ('{"a": 1}', "JSON list"),
    ('["<pad>", "<start>", "<end>", "<unk>", "x", "x"]', "repeats"),
    ("not json", "not valid JSON"),
])
def test_bad_vocab_files_are_refused(tmp_path, content, message):
    (tmp_path / "vocab.json").write_text(content)
    with pytest.raises(ModelFormatError, match=message):
        Vocabulary.load(tmp_path / "vocab.json")


def test_size_must_match_config(tmp_path):
    Vocabulary.build(["a cat"] * 4).save(tmp_path / "vocab.json")
    with pytest.raises(ModelFormatError, match="vocab_size=9"):
        Vocabulary.load(tmp_path / "vocab.json", expected_size=9)
