import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the configs/ directory, imported as a package by the tests


@pytest.fixture(scope="session")
def repo_root():
    return ROOT
