"""Greedy and beam search over any decoder step.

A search needs two things of a decoder: ``step(inputs, state) -> (log-probabilities, state)`` for a
batch, and ``embed(tokens)``, the word embeddings fed back in. ``DecoderSteps`` pairs them, so a
backend that runs the step elsewhere (ONNX Runtime) hands its own step to the same search.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from captioner.core.model.vocabulary import END_ID, PAD_ID, START_ID, UNK_ID
from captioner.core.options import DecodeOptions, decode_steps

NEVER_GENERATED = (PAD_ID, START_ID, UNK_ID)  # after the first step, which is always <start>
State = tuple[torch.Tensor, torch.Tensor]


class DecoderSteps(NamedTuple):
    """What a search calls: one step of the decoder for a batch, and the word embeddings."""

    step: Callable[[torch.Tensor, State | None], tuple[torch.Tensor, State]]
    embed: Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Hypothesis:
    tokens: list[int]  # generated ids, up to and including <end> when it was reached
    token_log_probs: list[float]
    score: float  # sum of log-probabilities divided by length ** length_penalty


def generate(decoder: DecoderSteps, embeddings: torch.Tensor, options: DecodeOptions) -> list[list[Hypothesis]]:
    """Decode with resolved ``options``: the ``num_candidates`` best captions per image, best first, of at
    most ``options.max_length`` words. The search runs one step past the last word: a caption whose
    next token would be a word rather than ``<end>`` is cut after ``max_length`` words (it then ends
    without ``<end>``) and its score is that of the words kept."""
    steps = decode_steps(options.max_length)
    found = beam_search(decoder, embeddings, options.beam_size, steps, options.beam_size,  # all, then the best
                        options.length_penalty, no_repeat_ngram=options.no_repeat_ngram)
    return [sorted((_cut(h, steps, options.length_penalty) for h in hypotheses), key=lambda h: h.score,
                   reverse=True)[:options.num_candidates] for hypotheses in found]


def _cut(hypothesis: Hypothesis, steps: int, length_penalty: float) -> Hypothesis:
    if END_ID in hypothesis.tokens or len(hypothesis.tokens) < steps:
        return hypothesis
    return _hypothesis(hypothesis.tokens[:-1], hypothesis.token_log_probs[:-1], length_penalty)


@torch.inference_mode()
def greedy(decoder: DecoderSteps, embeddings: torch.Tensor, max_length: int, length_penalty: float = 1.0, *,
           no_repeat_ngram: int = 0, constrained: bool = True) -> list[Hypothesis]:
    """The tutorial's ``sample``: the most likely allowed word at each step, stopping at ``<end>``.

    ``constrained`` (see ``allowed_log_probs``) is what every caption gets; ``constrained=False``
    is the tutorial's unconstrained argmax, kept to check imported checkpoints token for token.
    """
    batch = embeddings.size(0)
    tokens, log_probs = [], []
    inputs, state = embeddings, None
    done = torch.zeros(batch, dtype=torch.bool, device=embeddings.device)
    history: list[list[int]] = [[] for _ in range(batch)]
    for step in range(max_length):
        step_log_probs, state = decoder.step(inputs, state)
        choice = allowed_log_probs(step_log_probs, step, history, no_repeat_ngram) if constrained \
            else step_log_probs
        best = choice.argmax(1)
        tokens.append(best)
        log_probs.append(step_log_probs.gather(1, best.unsqueeze(1)).squeeze(1))
        done |= best == END_ID
        if done.all():
            break
        if no_repeat_ngram and step > 0:  # the n-grams are over the words after <start>
            for row, token in zip(history, best.tolist()):
                row.append(token)
        inputs = decoder.embed(best)
    return [_hypothesis(seq, lp, length_penalty) for seq, lp in zip(torch.stack(tokens, 1).tolist(),
                                                         torch.stack(log_probs, 1).tolist())]

@torch.inference_mode()
def beam_search(decoder: DecoderSteps, embeddings: torch.Tensor, beam_size: int, max_length: int,
                num_candidates: int | None = None, length_penalty: float = 1.0, *,
                no_repeat_ngram: int = 0, constrained: bool = True) -> list[list[Hypothesis]]:
    """Batched beam search; returns the ``num_candidates`` best hypotheses per image, best first.

    A beam that emits ``<end>`` is set aside as finished (the ``beam_size`` best are kept) and
    its place goes to the next best live continuation, so every step keeps ``beam_size`` live
    beams. Ranking uses the length-normalised score, so shorter captions are not favoured
    merely for being short; an image is done only when no live beam can still beat its
    finished ones (an early, unlikely ``<end>`` cannot crowd out a longer, likelier caption).
    ``beam_size=1`` is greedy decoding. Candidates are restricted by ``allowed_log_probs``.
    """
    if beam_size == 1:
        return [[h] for h in greedy(decoder, embeddings, max_length, length_penalty, no_repeat_ngram=no_repeat_ngram,
                                         constrained=constrained)]
    batch, k = embeddings.size(0), beam_size
    num_candidates = min(num_candidates or k, k)
    raw, state = decoder.step(embeddings, None)  # (B, V): the first step has a single beam
    log_probs = allowed_log_probs(raw, 0, [[]] * batch, 0) if constrained else raw
    vocab = log_probs.size(1)
    scores = torch.full((batch, k), float("-inf"), device=embeddings.device)
    scores[:, 0] = 0.0
    log_probs = log_probs.unsqueeze(1).expand(batch, k, vocab)
    state = tuple(s.repeat_interleave(k, dim=1) for s in state)
    history = torch.empty(batch * k, 0, dtype=torch.long, device=embeddings.device)
    history_lp = torch.empty(batch * k, 0, device=embeddings.device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = [False] * batch
    for step in range(max_length):
        total = (scores.unsqueeze(2) + log_probs).view(batch, -1)  # (B, K*V)
        top_scores, top_index = total.topk(min(2 * k, total.size(1)), dim=1)
        beam_index, token = top_index // vocab, top_index % vocab
        # The next step's beams, flat (B*K), built as lists and made tensors once (element-wise
        # writes into tensors cost microseconds each): a slot left unfilled idles at -inf on row b*k.
        keep = [b * k for b in range(batch) for _ in range(k)]
        keep_token = [PAD_ID] * (batch * k)
        new_scores = [float("-inf")] * (batch * k)
        last_step = step == max_length - 1
        for b, (cand_scores, cand_beams, cand_tokens) in enumerate(
                zip(top_scores.tolist(), beam_index.tolist(), token.tolist())):
            if done[b]:
                continue  # its beams idle at -inf
            filled = 0
            for score, beam, tok in zip(cand_scores, cand_beams, cand_tokens):
                if score == float("-inf") or filled == k:
                    break
                row = b * k + beam
                if tok == END_ID or last_step:
                    seq = history[row].tolist() + [tok]
                    lps = history_lp[row].tolist() + [log_probs[b, beam, tok].item()]
                    _keep_best(finished[b], _hypothesis(seq, lps, length_penalty), k)
                    continue
                slot = b * k + filled
                keep[slot], keep_token[slot], new_scores[slot] = row, tok, score
                filled += 1
            # A live beam's sum can only fall; at best it ends at max_length with nothing lost.
            best_live = new_scores[b * k] / max_length ** length_penalty if filled else float("-inf")
            done[b] = len(finished[b]) == k and best_live <= min(h.score for h in finished[b])
            if done[b]:
                new_scores[b * k:(b + 1) * k] = [float("-inf")] * k
        if last_step or all(done):
            break
        rows = torch.tensor(keep, device=embeddings.device)
        tokens = torch.tensor(keep_token, device=embeddings.device)
        chosen_lp = log_probs.reshape(batch * k, vocab)[rows, tokens]
        history = torch.cat((history[rows], tokens.view(-1, 1)), 1)
        history_lp = torch.cat((history_lp[rows], chosen_lp.view(-1, 1)), 1)
        scores = torch.tensor(new_scores, device=embeddings.device).view(batch, k)
        state = tuple(s[:, rows] for s in state)
        step_log_probs, state = decoder.step(decoder.embed(tokens), state)
        if constrained:
            step_log_probs = allowed_log_probs(step_log_probs, step + 1, history[:, 1:].tolist(), no_repeat_ngram)
        log_probs = step_log_probs.view(batch, k, vocab)
    return [sorted(f, key=lambda h: h.score, reverse=True)[:num_candidates] for f in finished]


def allowed_log_probs(log_probs: torch.Tensor, step: int, words: list[list[int]], no_repeat_ngram: int = 0
                      ) -> torch.Tensor:
    """``log_probs`` ``(B, V)`` of decoding step ``step`` with every forbidden token at ``-inf``.

    Step 0 is ``<start>`` (what the decoder is trained to emit first). After it ``<pad>``,
    ``<start>`` and ``<unk>`` are never chosen, nor ``<end>`` before the first word, and with
    ``no_repeat_ngram=n`` no word that would complete an n-gram already in the row's ``words``
    (the ids generated after ``<start>``). Allowed tokens keep the model's own log-probabilities.
    """
    if step == 0:
        forced = torch.full_like(log_probs, float("-inf"))
        forced[:, START_ID] = log_probs[:, START_ID]
        return forced
    log_probs = log_probs.clone()
    log_probs[:, list(NEVER_GENERATED)] = float("-inf")
    if step == 1:
        log_probs[:, END_ID] = float("-inf")
    if no_repeat_ngram:
        for row, banned in enumerate(repeated_ngram_ends(words, no_repeat_ngram)):
            if banned:
                log_probs[row, banned] = float("-inf")
    return log_probs


def repeated_ngram_ends(words: list[list[int]], n: int) -> list[list[int]]:
    """For each id sequence, the ids that would repeat one of its n-grams if appended next."""
    banned = []
    for seq in words:
        if len(seq) < n:
            banned.append([])
            continue
        prefix = tuple(seq[len(seq) - n + 1:])
        banned.append(sorted({seq[i + n - 1] for i in range(len(seq) - n + 1)
                              if tuple(seq[i:i + n - 1]) == prefix}))
    return banned


def _keep_best(finished: list[Hypothesis], hypothesis: Hypothesis, k: int) -> None:
    if len(finished) < k:
        finished.append(hypothesis)
        return
    worst = min(range(k), key=lambda i: finished[i].score)
    if hypothesis.score > finished[worst].score:
        finished[worst] = hypothesis


def _hypothesis(tokens: list[int], log_probs: list[float], length_penalty: float) -> Hypothesis:
    if END_ID in tokens:  # greedy runs the whole batch in step; cut each row at its own <end>
        cut = tokens.index(END_ID) + 1
        tokens, log_probs = tokens[:cut], log_probs[:cut]
    return Hypothesis(tokens, log_probs, sum(log_probs) / len(tokens) ** length_penalty)
