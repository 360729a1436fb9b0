"""Decoding: greedy, batched beam search, N-best, <end> handling, teacher forcing."""

import pytest
import torch

from captioner.core.model import search
from captioner.core.model.network import packed_targets
from captioner.core.model.vocabulary import END_ID
from tests.helpers.models import make_tiny_model


@pytest.fixture(scope="module")
def model():
    return make_tiny_model(seed=1)[0]


@pytest.fixture(scope="module")
def embeddings():
    torch.manual_seed(2)
    return torch.randn(6, 32)


def _ends_properly(tokens, max_length):
    return (END_ID not in tokens[:-1]) and (tokens[-1] == END_ID or len(tokens) == max_length)


def test_beam_size_one_equals_greedy(model, embeddings):
    greedy = search.greedy(model.steps, embeddings, 12)
    beam = search.beam_search(model.steps, embeddings, 1, 12)
    assert [h.tokens for h in greedy] == [hs[0].tokens for hs in beam]
    assert [h.score for h in greedy] == pytest.approx([hs[0].score for hs in beam], abs=1e-5)


def test_captions_stop_at_end(model, embeddings):
    for h in search.greedy(model.steps, embeddings, 12):
        assert _ends_properly(h.tokens, 12)
    lengths = set()
    for hs in search.beam_search(model.steps, embeddings, 4, 12):
        for h in hs:
            assert _ends_properly(h.tokens, 12)
            lengths.add(len(h.tokens))
    assert len(lengths) > 1  # the fixture model ends captions at different points


def test_n_best_sorted_and_distinct(model, embeddings):
    for hs in search.beam_search(model.steps, embeddings, 5, 12, num_candidates=5):
        assert len(hs) == 5
        scores = [h.score for h in hs]
        assert scores == sorted(scores, reverse=True)
        assert len({tuple(h.tokens) for h in hs}) == 5


def test_batched_equals_one_by_one(model, embeddings):
    batched = search.beam_search(model.steps, embeddings, 3, 12)
    for i in range(len(embeddings)):
        alone = search.beam_search(model.steps, embeddings[i:i + 1], 3, 12)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in batched[i]]
        assert [h.score for h in alone] == pytest.approx([h.score for h in batched[i]], abs=1e-5)
    greedy = search.greedy(model.steps, embeddings, 12)
    assert [search.greedy(model.steps, embeddings[i:i + 1], 12)[0].tokens for i in range(6)] == [h.tokens for h in greedy]


def test_reported_log_probs_match_teacher_forcing(model, embeddings):
    """The per-word probabilities beam search reports are what the decoder gives that sequence."""
    for i, hs in enumerate(search.beam_search(model.steps, embeddings, 3, 12)):
        for h in hs:
            tokens = torch.tensor([h.tokens])
            with torch.no_grad():
                logits = model.decoder(embeddings[i:i + 1], tokens[:, :-1], [len(h.tokens)])
            log_probs = torch.log_softmax(logits, 1)[torch.arange(len(h.tokens)), tokens[0]]
            assert log_probs.tolist() == pytest.approx(h.token_log_probs, abs=1e-4)
            assert h.score == pytest.approx(sum(h.token_log_probs) / len(h.tokens), abs=1e-5)


def test_beam_finds_at_least_greedy_quality_without_length_penalty(model, embeddings):
    """With raw log-probabilities (length_penalty=0) a wider beam never ends worse than greedy."""
    greedy = search.greedy(model.steps, embeddings, 12, length_penalty=0.0)
    beam = search.beam_search(model.steps, embeddings, 4, 12, length_penalty=0.0)
    for g, hs in zip(greedy, beam):
        assert hs[0].score >= g.score - 1e-5


def test_teacher_forcing_shapes(model):
    captions = torch.tensor([[1, 5, 6, 2], [1, 7, 2, 0]])
    lengths = [4, 3]
    logits = model.decoder(torch.randn(2, 32), captions, lengths)
    assert logits.shape == (7, len(model.decoder.embed.weight))
    assert packed_targets(captions, lengths).shape == (7,)


def test_step_by_step_decoding_equals_the_lstm_over_the_sequence():
    """``Decoder.step`` runs the LSTM's weights cell by cell; it must match ``nn.LSTM`` itself."""
    from captioner.core.model.config import ModelConfig
    from captioner.core.model.network import Decoder

    torch.manual_seed(3)
    decoder = Decoder(ModelConfig(backbone="efficientnet-lite0", vocab_size=12, embed_size=8, hidden_size=10,
                                  num_layers=2)).eval()
    inputs = torch.randn(3, 5, 8)
    with torch.inference_mode():
        hiddens, (h, c) = decoder.lstm(inputs)
        expected = torch.log_softmax(decoder.linear(hiddens), dim=2)
        state = None
        for t in range(5):
            log_probs, state = decoder.step(inputs[:, t], state)
            assert torch.allclose(log_probs, expected[:, t], atol=1e-5)
    assert torch.allclose(state[0], h, atol=1e-5) and torch.allclose(state[1], c, atol=1e-5)


# --- what decoding never emits -----------------------------------------------------------------

from captioner.core.captions import caption_features  # noqa: E402
from captioner.core.model.search import repeated_ngram_ends  # noqa: E402
from captioner.core.options import DecodeOptions  # noqa: E402
from captioner.core.model.vocabulary import PAD_ID, START_ID, UNK_ID  # noqa: E402


def _biased_model(favoured: dict[int, float]):
    """A tiny model whose output bias makes the given tokens the most probable at every step."""
    model, vocab = make_tiny_model(seed=4, end_bias=-5.0)
    with torch.no_grad():
        for token, bias in favoured.items():
            model.decoder.linear.bias[token] += bias
    return model, vocab


def _all_candidates(model, embeddings, **settings):
    hypotheses = search.greedy(model.steps, embeddings, 12, **settings)
    candidates = [[h] for h in hypotheses]
    for beam in (2, 5):
        candidates += search.beam_search(model.steps, embeddings, beam, 12, num_candidates=beam, **settings)
    return [h for hs in candidates for h in hs]


def test_decoding_never_emits_unk_pad_or_start_even_when_they_are_the_most_probable(embeddings):
    model, vocab = _biased_model({UNK_ID: 30.0, PAD_ID: 29.0, START_ID: 28.0})
    with torch.inference_mode():
        step, _ = model.decoder.step(embeddings)
        step, _ = model.decoder.step(model.decoder.embed(step.argmax(1)))
    assert (step.argmax(1) == UNK_ID).all()  # the model itself prefers <unk> everywhere
    for h in _all_candidates(model, embeddings):
        assert h.tokens[0] == START_ID and len(h.tokens) >= 2
        assert not {PAD_ID, START_ID, UNK_ID} & set(h.tokens[1:]), h.tokens
        assert h.tokens[1] != END_ID  # at least one word
    unconstrained = search.greedy(model.steps, embeddings, 12, constrained=False)
    assert all(UNK_ID in h.tokens for h in unconstrained)
    for result in caption_features(model, vocab, torch.randn(6, 1280), DecodeOptions(beam_size=4)):
        for candidate in result.candidates:
            assert candidate.caption and "<" not in candidate.caption, candidate.caption


def _ngrams(tokens, n):
    words = [t for t in tokens[1:] if t != END_ID]
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


@pytest.mark.parametrize("n", [1, 2, 3])
def test_no_repeat_ngram_removes_repeats_from_every_candidate_of_a_model_built_to_repeat(embeddings, n):
    cat, dog = 4 + 3, 4 + 4  # "cat", "dog": the model says "cat dog cat dog ..." or "cat cat cat ..."
    model, vocab = _biased_model({cat: 12.0, dog: 11.5})
    repeating = _all_candidates(model, embeddings)
    assert all(len(set(_ngrams(h.tokens, n))) < len(_ngrams(h.tokens, n)) for h in repeating)
    blocked = _all_candidates(model, embeddings, no_repeat_ngram=n)
    for h in blocked:
        grams = _ngrams(h.tokens, n)
        assert len(set(grams)) == len(grams), (n, h.tokens)
    options = DecodeOptions(beam_size=3, no_repeat_ngram=n)
    for result in caption_features(model, vocab, torch.randn(6, 1280), options):
        for candidate in result.candidates:
            words = candidate.caption.split()
            grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
            assert len(set(grams)) == len(grams), candidate.caption


def test_repeated_ngram_ends():
    assert repeated_ngram_ends([[5, 6, 5], [5, 6], []], 2) == [[6], [], []]
    assert repeated_ngram_ends([[5, 6, 7, 5, 6]], 3) == [[7]]
    assert repeated_ngram_ends([[9, 5, 9]], 1) == [[5, 9]]
