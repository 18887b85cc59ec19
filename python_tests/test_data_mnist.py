"""Tests for gconv_ext.data.paths, .mnist and .evalsets on the real MNIST files in ../shared/data."""

from __future__ import annotations

import gzip
import os
import pickle
import re
import shutil
import struct
import sys
import tracemalloc
import types
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from gconv_ext.data import evalsets, mnist, paths
from gconv_ext.data.evalsets import (
    RotatedMNIST,
    fixed_angle_test_sets,
    make_rotated_mnist,
    rotated_test_set,
)
from gconv_ext.data.mnist import (
    MEAN,
    MNIST_CLASS_COUNTS,
    MNIST_FILES,
    STD,
    load_mnist,
    normalize,
    split_train_val,
    to_float01,
    to_normalized_float,
)
from gconv_ext.data.paths import (
    ChecksumError,
    DataFileError,
    DataFileNotFoundError,
    atomic_torch_save,
    atomic_write_bytes,
    default_data_dir,
)
from gconv_ext.data.transforms import rotate

TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


# ------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def mnist_src(data_dir: Path) -> Path:
    folder = data_dir / "mnist"
    if not (folder / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST files not present in {folder}")
    return folder


@pytest.fixture(scope="session")
def mnist_train(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("train", data_dir)


@pytest.fixture(scope="session")
def mnist_test(data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    return load_mnist("test", data_dir)


@pytest.fixture(scope="session")
def raw_test_bytes(mnist_src: Path) -> dict[str, bytes]:
    """Uncompressed bytes of the two t10k files."""
    return {n: gzip.decompress((mnist_src / f"{n}.gz").read_bytes()) for n in TEST_FILES}


@pytest.fixture(autouse=True)
def _fresh_verification_cache() -> Iterator[None]:
    # tmp_path files may reuse (path, size, mtime) across tests; keep tests independent
    yield
    paths.clear_verification_cache()


def _write_test_split(folder: Path, raw: dict[str, bytes], gz: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in raw.items():
        if gz:
            (folder / f"{name}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
        else:
            (folder / name).write_bytes(data)


# ----------------------------------------------------------------------- paths


def test_default_data_dir_finds_shared_data(data_dir: Path) -> None:
    assert (data_dir / "README.md").is_file()


def test_default_data_dir_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match=paths.DATA_DIR_ENV):
        default_data_dir()


def test_default_data_dir_fallback_and_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    repo = tmp_path / "a" / "repo"
    repo.mkdir(parents=True)
    work = tmp_path / "b" / "cwd"
    work.mkdir(parents=True)
    monkeypatch.setattr(paths, "REPO_ROOT", repo)
    monkeypatch.chdir(work)
    with pytest.raises(FileNotFoundError) as info:
        default_data_dir()
    msg = str(info.value)
    assert "--data-dir" in msg and paths.DATA_DIR_ENV in msg and str(repo.parent / "shared" / "data") in msg
    (work.parent / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == work.parent / "shared" / "data"
    (repo.parent / "shared" / "data").mkdir(parents=True)
    assert default_data_dir() == repo.parent / "shared" / "data"  # repo-relative wins


def test_atomic_writes(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.bin"
    atomic_write_bytes(target, b"hello")
    assert target.read_bytes() == b"hello"
    assert target.stat().st_mode & 0o777 == 0o644
    atomic_torch_save({"x": torch.arange(3)}, tmp_path / "t.pt")
    assert torch.equal(torch.load(tmp_path / "t.pt", weights_only=True)["x"], torch.arange(3))
    with pytest.raises((pickle.PicklingError, AttributeError)):
        atomic_torch_save({"f": lambda: 0}, target)  # cannot be pickled: the old file must survive
    assert target.read_bytes() == b"hello"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["f.bin"]  # no temp leftovers


# ----------------------------------------------------------------- real MNIST


def test_train_split(mnist_train: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_train
    assert x.shape == (60000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (60000,) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == list(MNIST_CLASS_COUNTS["train"])
    xf = to_float01(x)
    assert float(xf.mean()) == pytest.approx(0.130660, abs=1e-6)
    assert float(xf.std()) == pytest.approx(0.308108, abs=1e-5)


def test_test_split(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test
    assert x.shape == (10000, 28, 28) and x.dtype == torch.uint8
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert torch.bincount(y, minlength=10).tolist() == list(MNIST_CLASS_COUNTS["test"])
    assert float(to_float01(x).mean()) == pytest.approx(0.132515, abs=1e-6)


def test_known_checksums_match_readme(mnist_src: Path) -> None:
    assert {n: i.gz_md5 for n, i in MNIST_FILES.items()} == {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    }
    for name in TEST_FILES:
        assert paths.md5_file(mnist_src / f"{name}.gz") == MNIST_FILES[name].gz_md5


def test_normalisation(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    assert (MEAN, STD) == (0.1307, 0.3081)
    x = to_normalized_float(mnist_test[0][:100])
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    torch.testing.assert_close(x, normalize(to_float01(mnist_test[0][:100])).unsqueeze(1))
    assert float(x.min()) == pytest.approx(-MEAN / STD, rel=1e-6)


def test_bad_split(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist("val", data_dir)


# ------------------------------------------------------------------- layouts


@pytest.mark.parametrize("layout", [".", "mnist", "MNIST/raw"])
@pytest.mark.parametrize("gz", [True, False])
def test_layouts_and_compression(
    tmp_path: Path, raw_test_bytes: dict[str, bytes], mnist_test: tuple[torch.Tensor, torch.Tensor],
    layout: str, gz: bool,
) -> None:
    # gz=True uses a re-compressed copy (different gzip bytes, same content): accepted by content MD5
    _write_test_split(tmp_path / layout, raw_test_bytes, gz)
    x, y = load_mnist("test", tmp_path)
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])


def test_torchvision_raw_layout_with_original_gz(
    tmp_path: Path, mnist_src: Path, mnist_test: tuple[torch.Tensor, torch.Tensor]
) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in TEST_FILES:
        shutil.copy(mnist_src / f"{name}.gz", raw / f"{name}.gz")
    x, y = load_mnist("test", tmp_path)
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])


def test_verification_is_cached_per_path_size_mtime(
    tmp_path: Path, raw_test_bytes: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_test_split(tmp_path, raw_test_bytes, gz=False)
    calls: list[int] = []
    real = mnist.md5_bytes

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(mnist, "md5_bytes", counting)
    load_mnist("test", tmp_path)
    assert len(calls) == 2
    load_mnist("test", tmp_path)
    assert len(calls) == 2  # cached: not hashed again
    f = tmp_path / "t10k-labels-idx1-ubyte"
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    load_mnist("test", tmp_path)
    assert len(calls) == 3  # the touched file is verified again


# ------------------------------------------------------------- broken files


def _only_labels_differ(tmp_path: Path, raw: dict[str, bytes], labels: bytes, name: str | None = None) -> Path:
    _write_test_split(tmp_path, raw, gz=False)
    target = tmp_path / (name or "t10k-labels-idx1-ubyte")
    if name is not None:
        (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    target.write_bytes(labels)
    return target


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError) as info:
        load_mnist("test", tmp_path)
    assert isinstance(info.value, FileNotFoundError)
    msg = str(info.value)
    assert "t10k-images-idx3-ubyte" in msg and str(tmp_path / "MNIST" / "raw") in msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_mnist("test", tmp_path / "nope")


def test_truncated_gzip(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    gz = gzip.compress(raw_test_bytes["t10k-labels-idx1-ubyte"])
    target = _only_labels_differ(tmp_path, raw_test_bytes, gz[: len(gz) // 2], "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match="gzip") as info:
        load_mnist("test", tmp_path)
    assert str(target) in str(info.value) and isinstance(info.value, ValueError)


def test_not_gzip(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    _only_labels_differ(tmp_path, raw_test_bytes, b"<html>not found</html>", "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match="not a valid gzip"):
        load_mnist("test", tmp_path)


def test_bad_magic(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = raw_test_bytes["t10k-labels-idx1-ubyte"]
    target = _only_labels_differ(tmp_path, raw_test_bytes, struct.pack(">I", 0x803) + lab[4:])
    with pytest.raises(DataFileError, match="bad IDX magic 0x803; expected 0x801") as info:
        load_mnist("test", tmp_path)
    assert str(target) in str(info.value)


def test_wrong_dims(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    _write_test_split(tmp_path, raw_test_bytes, gz=False)
    img = tmp_path / "t10k-images-idx3-ubyte"
    img.write_bytes(struct.pack(">IIII", 0x803, 10000, 27, 28) + bytes(10000 * 27 * 28))
    with pytest.raises(DataFileError, match=r"expected \(N, 28, 28\)"):
        load_mnist("test", tmp_path)
    img.write_bytes(struct.pack(">IIII", 0x803, 9999, 28, 28) + bytes(9999 * 28 * 28))
    with pytest.raises(DataFileError, match="declares 9999 items; expected 10000"):
        load_mnist("test", tmp_path)


def test_wrong_size(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = raw_test_bytes["t10k-labels-idx1-ubyte"]
    _only_labels_differ(tmp_path, raw_test_bytes, lab + b"\x00")
    with pytest.raises(DataFileError, match="too long"):
        load_mnist("test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lab[:-10])
    with pytest.raises(DataFileError, match="truncated"):
        load_mnist("test", tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lab[:5])
    with pytest.raises(DataFileError, match="header"):
        load_mnist("test", tmp_path)


def test_md5_mismatch(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = bytearray(raw_test_bytes["t10k-labels-idx1-ubyte"])
    lab[100] = (lab[100] + 1) % 10  # still a structurally valid label file
    target = _only_labels_differ(tmp_path, raw_test_bytes, bytes(lab))
    with pytest.raises(ChecksumError) as info:
        load_mnist("test", tmp_path)
    msg = str(info.value)
    assert str(target) in msg and MNIST_FILES["t10k-labels-idx1-ubyte"].raw_md5 in msg
    _, y = load_mnist("test", tmp_path, verify=False)
    assert int(y[100 - 8]) == lab[100]


def test_md5_mismatch_gz(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = bytearray(raw_test_bytes["t10k-labels-idx1-ubyte"])
    lab[-1] = (lab[-1] + 1) % 10
    _only_labels_differ(tmp_path, raw_test_bytes, gzip.compress(bytes(lab)), "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ChecksumError, match=MNIST_FILES["t10k-labels-idx1-ubyte"].gz_md5):
        load_mnist("test", tmp_path)


def test_unverified_consistency_checks(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = raw_test_bytes["t10k-labels-idx1-ubyte"]
    _only_labels_differ(tmp_path, raw_test_bytes, struct.pack(">II", 0x801, 9999) + lab[8:-1])
    with pytest.raises(DataFileError, match="10000 images but .* 9999 labels"):
        load_mnist("test", tmp_path, verify=False)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(lab[:8] + bytes([12]) + lab[9:])
    with pytest.raises(DataFileError, match="label 12"):
        load_mnist("test", tmp_path, verify=False)


def _gzip_bomb(path: Path, head: bytes, zeros_mib: int) -> int:
    """Write a valid single-member gzip of ``head`` followed by ``zeros_mib`` MiB of zeros, built without ever
    holding (or deflating) more than 8 MiB: after a full flush, deflating the same chunk gives the same bytes,
    so the compressed chunk is written once per 8 MiB. Returns the decompressed size."""
    chunk = bytes(8 << 20)
    assert zeros_mib % 8 == 0
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = comp.compress(head) + comp.flush(zlib.Z_FULL_FLUSH)
    block = comp.compress(chunk) + comp.flush(zlib.Z_FULL_FLUSH)
    crc = zlib.crc32(head)
    with open(path, "wb") as f:
        f.write(b"\x1f\x8b\x08\x00" + struct.pack("<I", 0) + b"\x00\xff")  # gzip header, no name, mtime 0
        f.write(first)
        for _ in range(zeros_mib // 8):
            f.write(block)
            crc = zlib.crc32(chunk, crc)
        f.write(comp.flush())
        size = len(head) + (zeros_mib << 20)
        f.write(struct.pack("<II", crc & 0xFFFFFFFF, size & 0xFFFFFFFF))
    return size


def _peak_traced_bytes(fn: Callable[[], object]) -> tuple[BaseException | None, int]:
    """Run ``fn`` under tracemalloc; return (the exception it raised or None, peak traced bytes)."""
    tracemalloc.start()
    try:
        fn()
        exc = None
    except Exception as e:  # noqa: BLE001
        exc = e
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return exc, peak


def test_gzip_bomb_fails_fast_with_bounded_memory(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    # A valid IDX header for the t10k images (7,840,016 bytes expected) followed by 512 MiB of zeros, in a
    # ~0.5 MB valid gzip file. The loader must stop decompressing after the expected size.
    _write_test_split(tmp_path, {"t10k-labels-idx1-ubyte": raw_test_bytes["t10k-labels-idx1-ubyte"]}, gz=False)
    bomb = tmp_path / "t10k-images-idx3-ubyte.gz"
    head = struct.pack(">IIII", 0x803, 10000, 28, 28)
    size = _gzip_bomb(bomb, head, zeros_mib=512)
    assert bomb.stat().st_size < 1 << 20 and size > 500 << 20
    expected = MNIST_FILES["t10k-images-idx3-ubyte"].raw_size
    with gzip.open(bomb) as gz:  # the bomb is a valid gzip that really holds more than the expected size
        assert gz.read(16) == head and len(gz.read(expected)) == expected
    for verify in (True, False):
        exc, peak = _peak_traced_bytes(lambda: load_mnist("test", tmp_path, verify=verify))
        assert isinstance(exc, DataFileError) and not isinstance(exc, ChecksumError), exc
        msg = str(exc)
        assert str(bomb) in msg and "too long" in msg and f"more than {expected} bytes" in msg
        assert peak < 64 << 20, f"peak traced memory {peak / 2**20:.0f} MiB: the bomb was decompressed"


@pytest.mark.parametrize(("head", "verify", "pattern"), [
    (struct.pack(">IIII", 0x803, 60000, 28, 28), True, "declares 60000 items; expected 10000"),
    (struct.pack(">IIII", 0x803, 0xFFFFFFFF, 28, 28), False, "declares 4294967295 items, more than the 10000"),
    (struct.pack(">IIII", 0x803, 10000, 280, 28), False, r"expected \(N, 28, 28\)"),
    (struct.pack(">IIII", 0x801, 10000, 28, 28), False, "bad IDX magic 0x801"),
])
def test_gzip_bomb_with_bad_header_fails_on_the_header(
    tmp_path: Path, raw_test_bytes: dict[str, bytes], head: bytes, verify: bool, pattern: str
) -> None:
    _write_test_split(tmp_path, {"t10k-labels-idx1-ubyte": raw_test_bytes["t10k-labels-idx1-ubyte"]}, gz=False)
    bomb = tmp_path / "t10k-images-idx3-ubyte.gz"
    _gzip_bomb(bomb, head, zeros_mib=64)
    exc, peak = _peak_traced_bytes(lambda: load_mnist("test", tmp_path, verify=verify))
    assert isinstance(exc, DataFileError) and str(bomb) in str(exc), exc
    assert re.search(pattern, str(exc)), str(exc)
    assert peak < 8 << 20  # nothing beyond the header was decompressed


def test_gz_trailing_data(tmp_path: Path, raw_test_bytes: dict[str, bytes]) -> None:
    lab = raw_test_bytes["t10k-labels-idx1-ubyte"]
    good = gzip.compress(lab, mtime=0)
    # a second gzip member with one more byte: the content is one byte too long
    target = _only_labels_differ(tmp_path, raw_test_bytes, good + gzip.compress(b"\x00"), "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataFileError, match="too long: it decompresses to more than 10008 bytes") as info:
        load_mnist("test", tmp_path)
    assert str(target) in str(info.value)
    # garbage after the gzip stream
    target.write_bytes(good + b"trailing junk")
    with pytest.raises(DataFileError, match="not a valid gzip") as info:
        load_mnist("test", tmp_path)
    assert str(target) in str(info.value)
    # one byte short, in a valid gzip stream
    target.write_bytes(gzip.compress(lab[:-1]))
    with pytest.raises(DataFileError, match="truncated: it decompresses to 10007 bytes"):
        load_mnist("test", tmp_path)
    target.write_bytes(good)
    x, y = load_mnist("test", tmp_path)  # the plain re-compressed file is fine (content MD5)
    assert y.shape == (10000,)


def test_original_gz_is_verified_by_its_own_md5(
    tmp_path: Path, mnist_src: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The MD5 of a .gz file is computed while it streams through the decompressor: for the original files it
    # must match the known gzip MD5, so the decompressed content is never hashed (the fallback for re-compressed
    # copies). A hash that missed some of the file's bytes would only pass through that fallback.
    for name in TEST_FILES:
        shutil.copy(mnist_src / f"{name}.gz", tmp_path / f"{name}.gz")
    calls: list[int] = []
    real = mnist.md5_bytes

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(mnist, "md5_bytes", counting)
    x, _ = load_mnist("test", tmp_path)
    assert x.shape == (10000, 28, 28) and calls == []
    assert all(paths.is_verified(tmp_path / f"{n}.gz", MNIST_FILES[n].gz_md5) for n in TEST_FILES)


# ------------------------------------------------------------------ download


def _fake_torchvision(monkeypatch: pytest.MonkeyPatch, mnist_cls: object) -> None:
    tv = types.ModuleType("torchvision")
    ds = types.ModuleType("torchvision.datasets")
    ds.MNIST = mnist_cls  # type: ignore[attr-defined]
    tv.datasets = ds  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", ds)


def test_download_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_src: Path,
    mnist_test: tuple[torch.Tensor, torch.Tensor],
) -> None:
    calls: list[tuple[str, bool, bool]] = []

    def fake_mnist(root: str, train: bool = True, download: bool = False) -> None:
        calls.append((root, train, download))
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True, exist_ok=True)
        for name in TEST_FILES:
            shutil.copy(mnist_src / f"{name}.gz", raw / f"{name}.gz")

    _fake_torchvision(monkeypatch, fake_mnist)
    with pytest.raises(DataFileNotFoundError):
        load_mnist("test", tmp_path)
    assert calls == []  # never downloads unless asked
    x, y = load_mnist("test", tmp_path, download=True)
    assert calls == [(str(tmp_path), False, True)]
    assert torch.equal(x, mnist_test[0]) and torch.equal(y, mnist_test[1])
    load_mnist("test", tmp_path, download=True)
    assert len(calls) == 1  # present now: not downloaded again


def test_download_without_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(ImportError, match="torchvision"):
        load_mnist("train", tmp_path, download=True)


# --------------------------------------------------------------------- split


def test_split_train_val() -> None:
    tr, va = split_train_val()
    assert tr.shape == (50000,) and va.shape == (10000,) and tr.dtype == torch.int64
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(60000))
    tr2, va2 = split_train_val()
    assert torch.equal(tr, tr2) and torch.equal(va, va2)
    assert not torch.equal(va, split_train_val(seed=421)[1])
    a, b = torch.utils.data.random_split(range(60000), [50000, 10000],
                                         generator=torch.Generator().manual_seed(420))
    assert tr.tolist() == list(a.indices) and va.tolist() == list(b.indices)
    with pytest.raises(ValueError, match="n_val"):
        split_train_val(n=10, n_val=11)


# ----------------------------------------------------------------- eval sets


def test_rotated_test_set_is_deterministic(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test[0][:300], mnist_test[1][:300]
    imgs, labels, angles = rotated_test_set(x, y, seed=0)
    imgs2, _, angles2 = rotated_test_set(x, y, seed=0)
    _, _, angles3 = rotated_test_set(x, y, seed=1)
    assert imgs.shape == (300, 1, 28, 28) and imgs.dtype == torch.float32
    assert labels.dtype == torch.int64 and torch.equal(labels, y)
    assert angles.shape == (300,) and bool(((angles >= 0) & (angles < 360)).all())
    assert torch.equal(imgs, imgs2) and torch.equal(angles, angles2) and not torch.equal(angles, angles3)
    # rotated in [0, 1] then normalised: the zero fill is the normalised background
    torch.testing.assert_close(imgs, normalize(rotate(to_float01(x).unsqueeze(1), angles)))
    assert float(imgs[:, 0, 0, 0].max()) == pytest.approx(-MEAN / STD)


def test_fixed_angle_test_sets(mnist_test: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test[0][:200], mnist_test[1][:200]
    base = to_normalized_float(x)
    gen = fixed_angle_test_sets(x, y, angles=[0, 90, 45, 270])
    assert isinstance(gen, Iterator)
    got = {a: imgs for a, imgs, labels in gen if torch.equal(labels, y)}
    assert list(got) == [0.0, 90.0, 45.0, 270.0]
    assert torch.equal(got[0.0], base)
    assert torch.equal(got[90.0], torch.rot90(base, 1, dims=(-2, -1)))
    assert torch.equal(got[270.0], torch.rot90(base, 3, dims=(-2, -1)))
    torch.testing.assert_close(got[45.0], normalize(rotate(to_float01(x).unsqueeze(1), 45.0)))
    angles = [a for a, _, _ in fixed_angle_test_sets(x[:2], y[:2])]
    assert angles == [float(a) for a in range(0, 360, 5)]


# ------------------------------------------------------ rotated-MNIST substitute


@pytest.fixture(scope="module")
def rot_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rotmnist_cache")


@pytest.fixture(scope="module")
def rot_mnist(data_dir: Path, rot_cache: Path) -> RotatedMNIST:
    return make_rotated_mnist(data_dir, cache_dir=rot_cache, seed=0)


def test_rotated_mnist_contents(
    rot_mnist: RotatedMNIST,
    mnist_train: tuple[torch.Tensor, torch.Tensor],
    mnist_test: tuple[torch.Tensor, torch.Tensor],
) -> None:
    r = rot_mnist
    assert not r.from_cache and r.seed == 0 and "SUBSTITUTE" in r.description
    assert r.train_images.shape == (12000, 28, 28) and r.train_images.dtype == torch.uint8
    assert r.test_images.shape == (50000, 28, 28) and r.test_images.dtype == torch.uint8
    assert r.train_labels.shape == (12000,) and r.test_labels.shape == (50000,)
    for a in (r.train_angles, r.test_angles):
        assert a.dtype == torch.float64 and bool(((a >= 0) & (a < 360)).all())
        assert 170 < float(a.mean()) < 190  # uniform on [0, 360)
    # no digit in both sets; test digits are distinct
    from_train = r.test_source_split == 0
    assert not set(r.train_source_index.tolist()) & set(r.test_source_index[from_train].tolist())
    assert len(set(r.train_source_index.tolist())) == 12000
    keys = (r.test_source_split.long() * 100000 + r.test_source_index).tolist()
    assert len(set(keys)) == 50000
    # labels follow their source digits
    assert torch.equal(r.train_labels, mnist_train[1][r.train_source_index])
    assert torch.equal(r.test_labels[from_train], mnist_train[1][r.test_source_index[from_train]])
    assert torch.equal(r.test_labels[~from_train], mnist_test[1][r.test_source_index[~from_train]])
    # images are the source digits rotated by the stored angles (rounded to uint8)
    idx = torch.arange(0, 12000, 1500)
    src = to_float01(mnist_train[0][r.train_source_index[idx]]).unsqueeze(1)
    expect = torch.round(rotate(src, r.train_angles[idx]) * 255).squeeze(1).to(torch.uint8)
    assert torch.equal(r.train_images[idx], expect)
    norm = r.normalized("test")
    assert norm.shape == (50000, 1, 28, 28) and norm.dtype == torch.float32


def test_rotated_mnist_cache_is_reused(
    rot_mnist: RotatedMNIST, data_dir: Path, rot_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = rot_mnist.cache_path
    assert path.parent == rot_cache and path.is_file() and "seed0" in path.name
    raw = torch.load(path, weights_only=True)
    assert raw["description"] == rot_mnist.description and raw["seed"] == 0
    assert [p.name for p in rot_cache.iterdir()] == [path.name]  # no temp files left
    mtime = path.stat().st_mtime_ns

    def no_build(*args: object, **kwargs: object) -> None:
        raise AssertionError("cache not used: the set was rebuilt")

    monkeypatch.setattr(evalsets, "_build_rotated_mnist", no_build)
    again = make_rotated_mnist(data_dir, cache_dir=rot_cache, seed=0)
    assert again.from_cache and path.stat().st_mtime_ns == mtime
    for name in ("train_images", "test_images", "train_angles", "test_labels", "test_source_index"):
        assert torch.equal(getattr(again, name), getattr(rot_mnist, name))


def test_rotated_mnist_corrupt_cache_is_rebuilt_identically(
    rot_mnist: RotatedMNIST, data_dir: Path, tmp_path: Path
) -> None:
    bad = tmp_path / rot_mnist.cache_path.name
    bad.write_bytes(b"truncated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rebuilt = make_rotated_mnist(data_dir, cache_dir=tmp_path, seed=0)
    assert any("rebuilding" in str(w.message) for w in caught)
    assert not rebuilt.from_cache
    # the builder is deterministic: same seed, same set
    for name in ("train_images", "test_images", "train_angles", "test_angles", "test_source_split"):
        assert torch.equal(getattr(rebuilt, name), getattr(rot_mnist, name))
    assert torch.load(bad, weights_only=True)["seed"] == 0
