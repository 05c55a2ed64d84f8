import pathlib
import sys

import jax
import pytest

# Eight fake CPU devices for the sharding tests (STACK.md); set before any backend starts.
jax.config.update("jax_num_cpu_devices", 8)

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the configs/ directory, imported as a package by the tests


@pytest.fixture(scope="session")
def repo_root():
    return ROOT
