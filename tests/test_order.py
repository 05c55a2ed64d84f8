"""The global clip order (maepp/data/order.py) and how a checkpoint's data position maps onto it."""

import numpy as np
import pytest

from maepp import checkpoints
from maepp.data.order import GlobalOrder


def test_every_epoch_is_one_permutation_of_all_clips_and_unchanged_for_one_process():
    order = GlobalOrder(10, seed=3)
    epochs, clips = order.clips(np.arange(30))
    assert epochs.tolist() == [0] * 10 + [1] * 10 + [2] * 10
    for epoch in range(3):
        assert sorted(clips[epochs == epoch].tolist()) == list(range(10))
    # One process's stream is what it was before the global order: each epoch's permutation in turn.
    assert clips[10:20].tolist() == np.random.default_rng([3, 1]).permutation(10).tolist()
    assert [order.clip(p) for p in (0, 13)] == [(0, int(clips[0])), (1, int(clips[13]))]


def test_an_unusable_clip_is_replaced_by_its_slot_in_the_next_epochs():
    order = GlobalOrder(4, seed=0)
    assert list(order.replacements(5)) == [9, 13, 17, 21]  # one epoch's worth of candidates
    epochs, _ = order.clips(list(order.replacements(5)))
    assert epochs.tolist() == [2, 3, 4, 5]


def test_a_checkpoint_of_maepp_0_0_is_refused_in_one_line_and_todays_resumes():
    """maepp 0.0.x saved each process's own position; maepp 0.1 reads the one global position."""
    with pytest.raises(ValueError, match=r"^checkpoint step 20 was saved by maepp 0\.0\.x .* another --workdir$"):
        checkpoints.resume_position({"positions": [320, 320]}, 20)
    assert checkpoints.resume_position({"position": 640, "processes": 1}, 20) == (640, "")
