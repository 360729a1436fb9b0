"""The bundled model's caption_phrases.json: generated from the grammar, shipped as generated, read back."""

import json
from pathlib import Path

import numpy as np
import pytest

from captioner.build import grammar, lexicon, synthetic
from captioner.build.phrases import phrase_file, write_phrase_file
from captioner.core.confidence.phrases import FILE_NAME, PhraseTable
from captioner.core.repository.storage import BUNDLED_MODEL_DIR

pytestmark = pytest.mark.skipif(not Path("/usr/share/wordnet/data.noun").is_file(),
                                reason="WordNet (wordnet-base) missing")


def test_the_shipped_file_is_what_the_build_writes(tmp_path):
    written = write_phrase_file(tmp_path)
    assert written.read_bytes() == (BUNDLED_MODEL_DIR / FILE_NAME).read_bytes()
    assert PhraseTable.load(written).num_classes == 1000


def test_every_caption_the_grammar_writes_reads_back_as_its_phrases():
    table = PhraseTable.from_dict(phrase_file())
    rng = np.random.default_rng(7)
    log_probs, captions, specs = synthetic._draw_rows(rng, synthetic._Draws(rng), 400)
    unread = [c for c in captions if table.read(c) is None]
    assert not unread, unread[:5]
    for caption in captions:
        assert table.write(table.read(caption)) == caption
    for log_p in log_probs[:100]:
        caption = grammar.template_caption(log_p)
        assert table.write(table.read(caption)) == caption


def test_phrases_name_the_classes_of_the_lexicon():
    table = PhraseTable.from_dict(phrase_file())
    lex = lexicon.lexicon()
    tabby = table.phrase("a tabby cat")
    assert tabby.classes == (281,) and tabby.general == "a cat" and not tabby.is_general
    cat = table.phrase("a cat")
    assert cat.is_general and set(cat.classes) == set(lex.groups[lex.classes[281].group].members)
    assert table.phrase("a cup of espresso").classes == (967,)
    missile = table.phrase("a missile")
    assert set(missile.classes) == {657, 744}  # projectile is the same thing to a viewer (an alias)
    shore = table.phrase("on a seashore")
    assert shore.kind == "scene" and shore.alone == "a seashore"
    data = json.loads(json.dumps(phrase_file()))
    assert len({p["text"] for p in data["phrases"]}) == len(data["phrases"])
