"""Runtime-stable token selection (`vitprune.methods.selection`)."""

import numpy as np
import pytest
import torch

from vitprune.methods import selection

LOG = dict(step=selection.STEP, low=selection.LOG_RANGE[0], high=selection.LOG_RANGE[1])


def test_distinct_scores_rank_as_a_plain_top_k():
    score = torch.tensor([[0.0, -1.0, -0.5, -3.0, -0.25]])
    assert selection.top_k(score, 3, **LOG).tolist() == score.topk(3).indices.tolist() == [[0, 4, 2]]


def test_exact_and_near_ties_go_to_the_lower_index():
    step = selection.STEP
    # index 3 beats index 1 by less than half a step: both round to one level, the lower index wins
    score = torch.tensor([[-2.0, -1.0, -2.0, -1.0 + step / 4, -1.0]])
    assert selection.top_k(score, 2, **LOG).tolist() == [[1, 3]]
    assert selection.top_k(score, 1, **LOG).tolist() == [[1]]


def test_noise_below_the_step_does_not_change_the_choice():
    gen = torch.Generator().manual_seed(0)
    # scores on a grid of whole steps, then jittered by float-error-sized noise
    score = torch.randint(-400, 0, (64, 49), generator=gen).float() * selection.STEP
    noisy = score + torch.randn(score.shape, generator=gen) * 1e-6
    assert torch.equal(selection.top_k(score, 20, **LOG), selection.top_k(noisy, 20, **LOG))


def test_exclude_ranks_last_and_full_returns_every_index():
    score = torch.tensor([[0.0, -1.0, -2.0, -3.0]])
    exclude = torch.tensor([[True, False, False, False]])
    assert selection.top_k(score, 2, exclude=exclude, **LOG).tolist() == [[1, 2]]
    assert selection.top_k(score, 2, full=True, **LOG).tolist() == [[0, 1, 2, 3]]


def test_recording_and_cut_gaps():
    score = torch.tensor([[0.0, -1.0, -1.5, -3.0], [0.0, -0.1, -0.2, -0.3]])
    with selection.recording() as records:
        selection.top_k(score, 2, **LOG)
    assert len(records) == 1 and records[0].k == 2 and records[0].indices.shape == (2, 2)
    np.testing.assert_allclose(selection.cut_gaps(score, 2).numpy(), [0.5, 0.1], rtol=1e-6)
    assert torch.isinf(selection.cut_gaps(score, 4)).all()
    selection.top_k(score, 2, **LOG)  # outside the block: nothing recorded
    assert len(records) == 1


def test_a_range_too_wide_for_int64_keys_is_refused():
    with pytest.raises(ValueError, match="overflows"):
        selection.keys(torch.zeros(1, 10), step=1e-18, low=-1e3, high=0)
