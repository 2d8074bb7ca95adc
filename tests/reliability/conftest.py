"""The reliability tests' token folder; helpers are in reliability_helpers.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "training"))  # _tiny: the tiny-model factory
sys.path.insert(0, str(HERE))  # reliability_helpers


@pytest.fixture(scope="session")
def tokens(tmp_path_factory):
    from _tiny import token_folder

    return token_folder(tmp_path_factory.mktemp("reliability") / "tok")
