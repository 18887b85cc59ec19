"""gconv_ext.tune_malloc: glibc keeps and reuses freed memory. Each check runs in a fresh interpreter, because
the setting changes the whole process and cannot be undone."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

import gconv_ext

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Allocates, touches and frees a 32 MiB tensor 20 times and prints the minor page faults that took, after one
# warm-up round; tuned first when argv[1] == "tune".
_FAULTS = """
import resource, sys, torch
import gconv_ext
tuned = gconv_ext.tune_malloc() if sys.argv[1] == "tune" else None
def faults():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        t = torch.empty(8 << 20)
        t.fill_(1.0)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults()
print(tuned, faults())
"""


def _run(mode: str, **env: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], cwd=ROOT, env={**os.environ, **env},
                         capture_output=True, text=True, timeout=300, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not GLIBC, reason="tune_malloc changes glibc's malloc only")
def test_tuned_process_reuses_freed_memory():
    # 20 rounds of 32 MiB are 163,840 pages; reused, they fault nothing after the warm-up round
    tuned, faults = _run("tune")
    assert tuned == "True"
    assert faults < 2000, faults


@pytest.mark.skipif(not GLIBC, reason="tune_malloc changes glibc's malloc only")
def test_environment_variable_turns_it_off():
    tuned, _ = _run("tune", GCONV_EXT_TUNE_MALLOC="0")
    assert tuned == "False"


@pytest.mark.parametrize("bad", [0, -1, 2 ** 31, 1.5, True, "64"])
def test_bad_thresholds_name_the_argument(bad):
    with pytest.raises(ValueError, match="mmap_threshold must be an int"):
        gconv_ext.tune_malloc(mmap_threshold=bad)
    with pytest.raises(ValueError, match="trim_threshold must be an int"):
        gconv_ext.tune_malloc(trim_threshold=bad)
