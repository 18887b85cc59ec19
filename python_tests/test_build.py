"""setup.py's build switches: a forced CUDA build without nvcc, or a bad switch, fails clearly; the supported torch
range is stated alike everywhere; the fast subset names existing tests."""
import ast
import os
import re
import subprocess
import sys

import torch
from conftest import REPO


def _setup(env_extra):
    env = {k: v for k, v in os.environ.items() if k not in ("CUDA_HOME", "CUDA_PATH")}
    env.update(env_extra)
    return subprocess.run([sys.executable, "setup.py", "--name"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def test_forcing_cuda_without_nvcc_fails_clearly(tmp_path):
    res = _setup({"GCONV_EXT_CUDA": "1", "CUDA_HOME": str(tmp_path / "no-cuda-here")})
    assert res.returncode != 0
    assert "nvcc was not found" in res.stderr or "CPU-only build" in res.stderr, res.stderr


def test_bad_switch_fails_clearly():
    res = _setup({"GCONV_EXT_CUDA": "maybe"})
    assert res.returncode != 0
    assert "GCONV_EXT_CUDA must be 0, 1 or auto" in res.stderr


def test_forcing_cpu_builds_without_cuda():
    res = _setup({"GCONV_EXT_CUDA": "0"})
    assert res.returncode == 0, res.stderr
    assert "CPU only" in res.stderr


def test_supported_torch_range_is_stated_alike_everywhere():
    """setup.py's TORCH_REQUIREMENT (install_requires) is the range pyproject.toml's build requirement, the
    requirements files and README's "Supported versions" state; requirements.txt pins one torch inside it."""
    setup_py = (REPO / "setup.py").read_text()
    low, below = (tuple(map(int, m)) for m in re.findall(r"\((\d+), (\d+)\)", re.search(
        r"^TORCH_RANGE = (.*)$", setup_py, re.MULTILINE).group(1)))
    spec = f"torch>={low[0]}.{low[1]},<{below[0]}.{below[1]}"
    assert spec in (REPO / "pyproject.toml").read_text()
    assert f"torch `>={low[0]}.{low[1]},<{below[0]}.{below[1]}`" in (REPO / "README.md").read_text()
    pinned = re.search(r"^torch==(\S+)$", (REPO / "requirements.txt").read_text(), re.MULTILINE).group(1)
    assert low <= torch.torch_version.TorchVersion(pinned) < below
    for name in ("requirements-no-torch.txt", "requirements-test-no-torch.txt"):
        assert not re.search(r"^torch\b", (REPO / name).read_text(), re.MULTILINE), f"{name} must not name torch"


def test_the_fast_subset_names_only_existing_tests():
    """python_tests/fast.txt (`pytest @python_tests/fast.txt`, the CI job on another torch) lists files and
    tests that exist: a renamed test must not silently drop out of it."""
    for line in (REPO / "python_tests" / "fast.txt").read_text().splitlines():
        if not line.startswith("python_tests/"):
            continue
        path, _, test = line.partition("::")
        assert (REPO / path).is_file(), line
        if test:
            tree = ast.parse((REPO / path).read_text())
            assert test in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}, line
