"""Datasets as maepp.data.prepare wrote them before layout 2.0.0: ArrayRecord shards of whole clips
(tf.train.Example records, maepp/data/records.py) with TFDS metadata. The tests read the old
layout from these; maepp itself no longer writes it."""

import numpy as np
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter

from maepp.audio import reference
from maepp.audio.decode import decode_soundfile, encode_flac
from maepp.data import records


def _features(store: str):
    if store == "log_mel":
        fields = {
            "log_mel": tfds.features.Tensor(shape=(), dtype=np.object_),
            "num_frames": tfds.features.Scalar(dtype=np.int64),
        }
    else:
        fields = {
            store: tfds.features.Tensor(shape=(), dtype=np.object_),
            "num_samples": tfds.features.Scalar(dtype=np.int64),
            "log_mel_mean": tfds.features.Scalar(dtype=np.float32),
            "log_mel_std": tfds.features.Scalar(dtype=np.float32),
        }
    return tfds.features.FeaturesDict({**fields, "filterbank": tfds.features.Text(), "path": tfds.features.Text()})


def _record(store: str, filterbank: str, waveform: np.ndarray, path: str) -> dict:
    named = {"filterbank": filterbank, "path": path}
    if store == "log_mel":
        log_mel = reference.log_mel(waveform, filterbank)
        tiled = np.tile(log_mel, (-(-records.MIN_FRAMES // len(log_mel)), 1))
        return {"log_mel": tiled.astype(records.LOG_MEL_DTYPE).tobytes(), "num_frames": len(log_mel), **named}
    pcm = np.clip(np.round(waveform * 32768.0), -32768, 32767).astype(np.int16)
    audio = pcm.tobytes() if store == "pcm" else encode_flac(waveform)
    decoded = pcm.astype(np.float32) / 32768.0 if store == "pcm" else decode_soundfile(audio, path)
    mean, std = reference.clip_stats(reference.unstandardized_log_mel(decoded, filterbank))
    return {store: audio, "num_samples": len(waveform), "log_mel_mean": mean, "log_mel_std": std, **named}


def write_legacy_dataset(
    clips: list,
    data_dir,
    store="log_mel",
    filterbank="torchaudio",
    name="audio_clips",
    split="train",
    clips_per_shard=4,
):
    """clips: [(path, 16 kHz waveform)] -> DATA_DIR/NAME/1.0.0, as prepare wrote it; returns that folder."""
    out = data_dir / name / records.VERSION
    out.mkdir(parents=True)
    features = _features(store)
    chunks = [clips[i : i + clips_per_shard] for i in range(0, len(clips), clips_per_shard)]
    for shard, chunk in enumerate(chunks):
        writer = ArrayRecordWriter(
            str(out / f"{name}-{split}.array_record-{shard:05d}-of-{len(chunks):05d}"), "group_size:1,uncompressed"
        )
        for path, waveform in chunk:
            writer.write(features.serialize_example(_record(store, filterbank, waveform, path)))
        writer.close()
    split_info = tfds.core.SplitInfo(
        name=split, shard_lengths=[len(c) for c in chunks], num_bytes=0, filename_template=None
    )
    tfds.folder_dataset.write_metadata(data_dir=out, features=features, split_infos=[split_info], check_data=False)
    return out
