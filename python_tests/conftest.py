"""Shared fixtures and markers for the gconv_ext test suite."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on a 2-core CPU")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU on this machine")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real data sets (../shared/data beside the checkout, or GCONV_EXT_DATA_DIR)."""
    env = os.environ.get("GCONV_EXT_DATA_DIR")
    path = Path(env) if env else REPO.parent / "shared" / "data"
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the body with ``torch.set_num_threads(n)``, then restore the previous count."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def tiny_config(out_dir, data_dir, **overrides):
    """A :class:`~gconv_ext.train.TrainConfig` for seconds-long test runs: the tiny CNN, 512 training and 256
    validation/test digits, 2 epochs, CPU, quiet, fp32 (``auto`` would time fp32 against bf16 and might choose
    differently between two runs of a test)."""
    from gconv_ext.train import TrainConfig  # noqa: PLC0415

    base = dict(model="cnn", preset="tiny", epochs=2, batch_size=32, train_limit=512, val_limit=256,
                test_limit=256, data_dir=str(data_dir), out_dir=str(out_dir), device="cpu", quiet=True,
                precision="fp32")
    base.update(overrides)
    return TrainConfig(**base)
