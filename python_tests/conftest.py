"""Shared fixtures and markers for the gconv_ext test suite."""
from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]

# A fresh inductor cache for every test session. The default one (/tmp/torchinductor_$USER) outlives the
# session and is shared by every venv and environment (thread counts, ATEN_CPU_CAPABILITY) that ever ran on
# the machine: a compile test must measure the compiler, not whatever an earlier run left in that cache.
# Set before anything imports torch._inductor, which reads the variable when it first needs the folder.
_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="gconv_ext_tests_inductor_")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
os.environ.pop("TORCHINDUCTOR_FX_GRAPH_REMOTE_CACHE", None)
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)


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


@pytest.fixture(scope="session")
def data_dir(shared_data_dir: Path) -> Path:
    """The shared data folder (the data tests' name for :func:`shared_data_dir`)."""
    return shared_data_dir


def shared_file(data_dir: Path, relpath: str) -> Path:
    """``data_dir / relpath``, or skip the test when that file is not there."""
    path = data_dir / relpath
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_process_state():
    """No test leaks process-wide torch settings into the next (the thread count, deterministic mode, the
    default dtype); the order of the tests must not matter."""
    threads = torch.get_num_threads()
    deterministic = (torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled())
    dtype = torch.get_default_dtype()
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(deterministic[0], warn_only=deterministic[1])
    torch.set_default_dtype(dtype)


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
