"""The tfds: source over real TFDS data directories written here."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

from maepp.data.pipeline import train_dataset
from maepp.data.sources import source_from_string
from maepp.data.synthetic import synthetic_clip
from maepp.data.tfds_source import TfdsAudioSource


@pytest.fixture(scope="module")
def generic_audio_dir(tmp_path_factory):
    """A TFDS dataset as TFDS writes audio: int16 samples at 22.05 kHz, with labels."""
    data_dir = tmp_path_factory.mktemp("tfds")
    features = tfds.features.FeaturesDict(
        {
            "audio": tfds.features.Audio(shape=(None,), dtype=np.int16, sample_rate=22050),
            "label": tfds.features.ClassLabel(names=["a", "b"]),
        }
    )
    out = data_dir / "generic_audio" / "1.0.0"
    out.mkdir(parents=True)
    writer = ArrayRecordWriter(str(out / "generic_audio-test.array_record-00000-of-00001"), "group_size:1")
    rng = np.random.default_rng(0)
    for i in range(5):
        clip, _ = synthetic_clip(rng, seconds=2.5, sample_rate=22050)
        writer.write(features.serialize_example({"audio": (clip * 32767).astype(np.int16), "label": i % 2}))
    writer.close()
    split = tfds.core.SplitInfo(name="test", shard_lengths=[5], num_bytes=0, filename_template=None)
    tfds.folder_dataset.write_metadata(data_dir=out, features=features, split_infos=[split], check_data=False)
    return data_dir


def test_generic_tfds_audio_is_resampled_to_16k(generic_audio_dir):
    source = source_from_string("tfds:generic_audio:test", data_dir=str(generic_audio_dir))
    assert isinstance(source, TfdsAudioSource) and len(source) == 5
    waveform = source.load(2)
    assert waveform.dtype == np.float32 and abs(len(waveform) - 40000) <= 1
    assert 0.05 < np.abs(waveform).max() <= 1.0
    batch = next(train_dataset(source, seed=0, batch_size=2).as_numpy_iterator())
    assert batch["log_mel"].shape == (2, 200, 80)


def test_prepare_s_old_layout_is_refused_in_one_line_saying_what_to_do():
    with pytest.raises(
        ValueError,
        match=r"records: shards are prepare's layout of maepp 0\.0\.x, which maepp 0\.1 "
        r"does not read; prepare the audio again",
    ):
        source_from_string("records:/data/audio_clips/1.0.0/*.array_record-*")


def test_missing_dataset_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match=r"tfds:no_such_set:train .* cannot be read for random access"):
        source_from_string("tfds:no_such_set", data_dir=str(tmp_path))
