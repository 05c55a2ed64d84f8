"""The `tfds:NAME[:SPLIT]` source: a TFDS audio dataset already prepared in a data_dir.

Random access needs TFDS's ArrayRecord format (`tfds.data_source`); data_dir may be a local
path or gs://. The dataset's `audio` feature is converted to 16 kHz mono floats.
"""

import numpy as np
import tensorflow_datasets as tfds

from maepp.audio.decode import to_mono_16k


class TfdsAudioSource:  # a maepp.data.sources.ClipSource
    store = filterbank = holdout = None  # audio loaded whole

    def __init__(self, name: str, split: str, data_dir=None):
        self.label = f"tfds:{name}:{split}"
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            self._clips = builder.as_data_source(split=split)
        except Exception as error:  # TFDS raises many kinds for "not there" / "not ArrayRecord"
            first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise ValueError(
                f"{self.label} (data_dir {data_dir or 'TFDS default'}) cannot be read for random access: {first_line} "
                "Prepare it with file_format='array_record' (or use python -m maepp.data.prepare)."
            ) from error
        audio = builder.info.features["audio"] if "audio" in builder.info.features else None
        if audio is None:
            raise ValueError(f"{self.label} has no 'audio' feature (features: {list(builder.info.features)})")
        self.sample_rate = audio.sample_rate
        if not self.sample_rate:
            raise ValueError(f"{self.label}: its audio feature does not state a sample rate")
        self._scale = 1.0 / np.iinfo(audio.np_dtype).max if np.issubdtype(audio.np_dtype, np.integer) else 1.0

    def __len__(self):
        return len(self._clips)

    def name(self, index: int) -> str:
        return f"{self.label}[{index}]"

    def load(self, index: int) -> np.ndarray:
        samples = np.asarray(self._clips[index]["audio"], np.float32) * self._scale
        return to_mono_16k(samples, self.sample_rate, self.name(index))


def tfds_source(name: str, split: str = "train", data_dir=None) -> TfdsAudioSource:
    return TfdsAudioSource(name, split, data_dir)
