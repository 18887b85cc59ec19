"""setup.py's build switches: a forced CUDA build without nvcc, or a bad switch, fails clearly."""
import os
import subprocess
import sys


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
