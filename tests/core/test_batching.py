"""core.batching: one forward pass per group of equal settings, results in the callers' order, and a
failing pass costing only its own requests."""

from __future__ import annotations

import pytest
import torch

from captioner.core.batching import PreparedImage, groups_by_options, run_by_options
from captioner.core.options import DecodeOptions
from tests.helpers.paths import EXAMPLES

GREEDY = DecodeOptions(beam_size=1).resolved(16)
BEAM = DecodeOptions(beam_size=3).resolved(16)


def _requests(settings: list[DecodeOptions]) -> list[PreparedImage]:
    return [PreparedImage(torch.full((3, 2, 2), float(i)), options) for i, options in enumerate(settings)]


def test_requests_are_grouped_by_settings_in_order_of_first_appearance_and_cut_into_batches():
    requests = _requests([BEAM, GREEDY, BEAM, BEAM, GREEDY, BEAM])
    assert groups_by_options(requests) == [[0, 2, 3, 5], [1, 4]]
    assert groups_by_options(requests, max_batch_size=3) == [[0, 2, 3], [5], [1, 4]]
    with pytest.raises(ValueError, match="at least 1"):
        groups_by_options(requests, max_batch_size=0)


@pytest.mark.slow
def test_one_pass_per_group_and_results_in_the_callers_order(tiny_model_dir):
    from captioner.core.inference import load_captioner

    captioner = load_captioner(tiny_model_dir, "cpu", "torch")
    photos = [captioner.pipeline.prepare(path) for path in sorted(EXAMPLES.glob("*.jpg"))[:5]]
    settings = [BEAM, GREEDY, BEAM, GREEDY, BEAM]
    requests = [PreparedImage(pixels, options) for pixels, options in zip(photos, settings)]
    passes = []

    def forward(pixels, options, group):
        passes.append((len(group), options))
        return captioner.pipeline.caption_batch(pixels, options)

    results = run_by_options(requests, forward)
    assert passes == [(3, BEAM), (2, GREEDY)]
    for request, result in zip(requests, results):  # each result is its own image's, with its own settings
        alone = captioner.pipeline.caption_batch(request.pixels[None], request.options)[0]
        assert result.caption == alone.caption and len(result.candidates) == len(alone.candidates)


def test_a_failing_pass_hands_its_error_to_its_own_requests_only():
    requests = _requests([BEAM, GREEDY, BEAM])

    def forward(pixels, options, group):
        if options == GREEDY:
            raise RuntimeError("out of memory")
        return [f"image {int(pixels[i, 0, 0, 0])}" for i in range(len(group))]

    results = run_by_options(requests, forward)
    assert results[0] == "image 0" and results[2] == "image 2"
    assert isinstance(results[1], RuntimeError) and str(results[1]) == "out of memory"
