from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("CLAIR_VEC_PROGRESS", "0")
# the example plugin is a separate distribution; its source is importable for direct use in tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "example-numpy"))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_clip():
    import torch

    from clair_vec.foundation import FoundationModel

    torch.manual_seed(0)
    return FoundationModel.load("clair-tiny", None)


@pytest.fixture(scope="session")
def shapes_root(tmp_path_factory):
    from clair_vec.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path_factory.mktemp("shapes") / "data", per_class=8, seed=0)
