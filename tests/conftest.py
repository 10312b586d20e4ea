"""Shared fixtures: tiny generated data sets, so every test runs offline in seconds."""
from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny test tensors gain nothing from intra-op threads, and on a busy 2-core machine the
    threads' barriers made small forward passes 10–40× slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_cls_data(tmp_path_factory) -> Path:
    """Folder-per-class data: 4 shape classes, 6 train + 3 val images each, 32 px."""
    from tasks.classification.demo import make_classification_demo

    return make_classification_demo(tmp_path_factory.mktemp("cls") / "data", seed=1, size=32, n_train=6, n_val=3)


@pytest.fixture
def tiny_cls_args(tiny_cls_data, tmp_path) -> list[str]:
    """CLI flags for a fast classification run on ``tiny_cls_data``."""
    return ["--task", "classification", "--data", str(tiny_cls_data), "--weights", "none", "--img-size", "32",
            "--batch-size", "8", "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "run")]


@pytest.fixture
def shared_data():
    """``shared_data("isbi_membrane")`` → path in ../shared/data, or skip the test if it is absent."""

    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.exists():
            pytest.skip(f"real data {path} is not present (see shared/data/README.md)")
        return path

    return get
