"""ImageNet class order, synset ids and the WordNet 3.0 reader (Debian's wordnet-base)."""

import pytest

from captioner.build.imagenet import ENTITY, WordNet, imagenet_classes, imagenet_synset_ids, wordnet
from captioner.core.errors import DatasetError
from captioner.core.model.imagenet_classes import imagenet_class_names


def test_names_and_synset_ids_share_the_classifiers_order():
    names, ids = imagenet_class_names(), imagenet_synset_ids()
    assert len(names) == len(ids) == 1000
    assert len(set(ids)) == 1000
    assert (names[0], ids[0]) == ("tench", "n01440764")
    assert (names[281], ids[281]) == ("tabby", "n02123045")
    assert (names[285], ids[285]) == ("Egyptian cat", "n02124075")
    assert (names[967], ids[967]) == ("espresso", "n07920052")


def test_stored_class_names_are_torchvisions_public_list():
    from torchvision.models import ResNet50_Weights

    assert imagenet_class_names() == list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def test_class_lemmas_come_from_wordnet():
    classes = imagenet_classes()
    assert classes[0].lemmas == ("tench", "Tinca tinca")
    assert "tabby cat" in classes[281].lemmas
    assert classes[967].lemmas == ("espresso",)
    assert "coffee" in classes[967].gloss
    # Every class's first lemma is its name, up to torchvision's disambiguations.
    same = sum(c.lemmas[0].lower() == c.name.lower() for c in classes)
    assert same > 900


def _chain_lemmas(index: int) -> list[str]:
    net = wordnet()
    return [net.synset(sid).lemmas[0] for sid in imagenet_classes()[index].hypernyms]


def test_tabby_is_a_cat_and_an_animal():
    chain = _chain_lemmas(281)
    assert chain[:2] == ["domestic cat", "cat"]
    assert "animal" in chain
    assert chain.index("cat") < chain.index("animal")
    assert imagenet_classes()[281].hypernyms[-1] == ENTITY


def test_espresso_is_coffee_and_a_beverage():
    assert _chain_lemmas(967)[:2] == ["coffee", "beverage"]


def test_ancestors_follow_every_hypernym_path():
    bakery = imagenet_classes()[415]
    # WordNet files a bakery both as a workplace and as a shop; the first chain sees only one.
    assert "n04202417" in bakery.ancestors and "n04602044" in bakery.ancestors
    assert "n04202417" not in bakery.hypernyms
    assert bakery.ancestors[bakery.synset_id] == 0
    assert bakery.ancestors[ENTITY] == max(bakery.ancestors.values())


def test_reader_parses_instance_hypernyms(tmp_path):
    # A line in data.noun's format, with an "@i" pointer and a two-digit hex word count.
    words = " ".join(f"{w} 0" for w in ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j_k"])
    line = f"00000000 05 n 0a {words} 001 @i 00000099 n 0000 | gloss text  \n"
    (tmp_path / "data.noun").write_text(line)
    synset = WordNet(tmp_path).synset("n00000000")
    assert synset.lemmas == tuple("abcdefghi") + ("j k",)
    assert synset.hypernyms == ("n00000099",)
    assert synset.gloss == "gloss text"


def test_missing_database_names_the_path_and_the_package(tmp_path):
    with pytest.raises(DatasetError) as info:
        WordNet(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "data.noun") in str(info.value)
    assert "apt-get install wordnet-base" in str(info.value)


def test_unknown_synset_is_a_clear_error():
    with pytest.raises(DatasetError, match="no noun synset n00000042"):
        wordnet().synset("n00000042")
    with pytest.raises(DatasetError):
        wordnet().synset("tabby")
