"""maepp: AudioMAE++ masked audio autoencoders in JAX/Flax."""
import os

# TensorFlow's C++ start-up lines (CPU features, CUDA probes) are noise to a maepp user: off, errors
# excepted, unless TF_CPP_MIN_LOG_LEVEL is set. Set before TensorFlow loads; processes maepp
# starts (Beam workers, multi-process jobs) inherit it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
