"""Prepared data of the layout before 2.0.0 (ArrayRecord records of whole clips, maepp/data/records.py)
still trains and evaluates: the records: source over shards written as prepare wrote them."""

import numpy as np
import pytest

from maepp.audio import reference
from maepp.data.order import GlobalOrder, crop_fractions
from maepp.data.pipeline import eval_dataset, random_offset, train_dataset
from maepp.data.records import RecordsSource
from maepp.data.sources import source_from_string
from maepp.data.synthetic import synthetic_clip
from tests.helpers import LOG_MEL_TOLERANCE
from tests.legacy_records import write_legacy_dataset


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(5)
    return [(f"clip_{i}.wav", synthetic_clip(rng, seconds)[0]) for i, seconds in enumerate((2.5, 6.0, 0.5, 4.0, 3.0))]


def test_log_mel_records_give_slices_of_each_clips_standardised_log_mel(clips, tmp_path):
    out = write_legacy_dataset(clips, tmp_path)
    source = source_from_string(f"records:{out}/*.array_record-*")
    assert isinstance(source, RecordsSource) and source.store == "log_mel" and len(source) == 5
    whole = [reference.log_mel(waveform) for _, waveform in clips]
    order = GlobalOrder(len(source), seed=1)
    for batch in train_dataset(source, seed=1, batch_size=4).take(3).as_numpy_iterator():
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.clip(position)
            n = len(whole[index])
            offset = int(crop_fractions(1, [epoch], [index])[0] * (max(n - 200, 0) + 1))
            expected = np.tile(whole[index], (-(-200 // n), 1))[offset : offset + 200]
            assert np.all(np.abs(mel - expected) <= np.abs(expected) * 2.0**-11 + 1e-7)  # float16 storage
    batches = list(eval_dataset(source, batch_size=4).as_numpy_iterator())
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2, 3], [4, -1, -1, -1]]


def test_audio_records_crop_from_their_stored_stats(clips, tmp_path):
    out = write_legacy_dataset(clips, tmp_path, store="pcm")
    source = source_from_string(f"records:{out}/*.array_record-*")
    assert source.store == "pcm"
    order = GlobalOrder(len(source), seed=2)
    for batch in train_dataset(source, seed=2, batch_size=4).take(2).as_numpy_iterator():
        for mel, position in zip(batch["log_mel"], batch["position"]):
            epoch, index = order.clip(position)
            whole = reference.log_mel(source.load(index))
            offset = random_offset(len(whole), 200, np.random.default_rng([2, epoch, index]))
            expected = np.tile(whole, (-(-200 // len(whole)), 1))[offset : offset + 200]
            np.testing.assert_allclose(mel, expected, atol=LOG_MEL_TOLERANCE, rtol=0)
