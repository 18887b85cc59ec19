"""Tests for gconv_ext.data.radio: FRDEEP-F/N, early MiraBest, CIFAR-style batches, safe unpickling."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import shared_file

from gconv_ext.data import paths
from gconv_ext.data.paths import (
    ChecksumError,
    DataFileError,
    DataFileNotFoundError,
    UnsafePickleError,
)
from gconv_ext.data.radio import (
    FRDEEP_ARCHIVES,
    FRDEEP_CLASSES,
    FRDEEP_MEMBER_MD5,
    MIRABEST_EARLY_2019_MEMBER_MD5,
    load_cifar_style_batches,
    load_frdeep,
    load_mirabest_early,
    restricted_loads,
)

# --------------------------------------------------------------------- helpers


@pytest.fixture(scope="session")
def first_archive(data_dir: Path) -> Path:
    return shared_file(data_dir, "frdeep/FIRST_PNG_dataset.tar.gz")


@pytest.fixture(scope="session")
def first_members(first_archive: Path) -> dict[str, bytes]:
    with tarfile.open(first_archive) as tar:
        return {Path(m.name).name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


@pytest.fixture(scope="session")
def mirabest_archive(data_dir: Path) -> Path:
    return shared_file(data_dir, "mirabest_early_2019/batches.tar.gz")


@pytest.fixture(autouse=True)
def _fresh_verification_cache() -> Iterator[None]:
    yield
    paths.clear_verification_cache()


def _tar(path: Path, members: dict[str, bytes], folder: str = "batches") -> Path:
    with tarfile.open(path, "w") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}" if folder else name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def _batch(n: int, side: int, labels: list[int], flat: bool = False) -> bytes:
    rng = np.random.default_rng(n + side)
    imgs = [rng.integers(0, 256, size=(side * side,) if flat else (side, side), dtype=np.uint8)
            for _ in range(n)]
    data: object = np.stack(imgs) if flat else imgs
    return pickle.dumps({"batch_label": "b", "labels": labels, "data": data,
                         "filenames": [np.str_(f"img{i}.png") for i in range(n)]}, protocol=3)


def _meta(names: list[str] = ["FRI", "FRII"], num_vis: int | None = None) -> bytes:  # noqa: B006
    d: dict[str, object] = {"label_names": names}
    if num_vis is not None:
        d["num_vis"] = num_vis
    return pickle.dumps(d, protocol=3)


def _synthetic(folder: Path, **override: bytes) -> dict[str, bytes]:
    members = {
        "data_batch_1": _batch(3, 4, [0, 1, 0]),
        "data_batch_2": _batch(2, 4, [1, 1]),
        "test_batch": _batch(2, 4, [0, 1]),
        "batches.meta": _meta(num_vis=16),
    }
    members.update(override)
    folder.mkdir(parents=True, exist_ok=True)
    for name, blob in members.items():
        (folder / name).write_bytes(blob)
    return members


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


# ---------------------------------------------------------------------- FRDEEP


@pytest.mark.parametrize("survey", ["FIRST", "NVSS"])
def test_frdeep_counts_and_classes(data_dir: Path, survey: str) -> None:
    xtr, ytr = load_frdeep(data_dir, survey=survey, split="train")
    xte, yte = load_frdeep(data_dir, survey=survey, split="test")
    assert xtr.shape == (550, 150, 150) and xte.shape == (50, 150, 150)
    assert xtr.dtype == xte.dtype == torch.uint8
    assert ytr.dtype == yte.dtype == torch.int64
    assert torch.bincount(torch.cat([ytr, yte])).tolist() == [264, 336]  # FRI=0, FRII=1
    assert torch.bincount(ytr).tolist() == [242, 308] and torch.bincount(yte).tolist() == [22, 28]
    assert int(xtr.max()) == 255 and int(xtr.min()) == 0
    assert FRDEEP_CLASSES == ("FRI", "FRII")


def test_frdeep_default_dir_and_case(first_archive: Path) -> None:
    x, y = load_frdeep(survey="first", split="test")  # data_dir from default_data_dir()
    assert x.shape == (50, 150, 150) and y.shape == (50,)


def test_frdeep_checksum_tables(data_dir: Path, first_members: dict[str, bytes]) -> None:
    assert FRDEEP_ARCHIVES["FIRST"][1] == "2f39461e6c62fb45289559915106013a"
    assert FRDEEP_ARCHIVES["NVSS"][1] == "2584ed1e174ea71f581d0e0d6f32ef38"
    for survey, (name, md5) in FRDEEP_ARCHIVES.items():
        assert paths.md5_file(data_dir / "frdeep" / name) == md5
        table = FRDEEP_MEMBER_MD5[survey]
        assert sorted(table) == sorted([f"data_batch_{i}" for i in range(1, 12)] + ["test_batch", "batches.meta"])
        assert table["batches.meta"] == "655493bdee948954f3939727b3f9e735"  # from the README
    # recompute the FIRST member MD5s independently of the loader
    assert {n: hashlib.md5(b).hexdigest() for n, b in first_members.items()} == FRDEEP_MEMBER_MD5["FIRST"]


def test_frdeep_bad_arguments(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="survey"):
        load_frdeep(data_dir, survey="VLASS")
    with pytest.raises(ValueError, match="split"):
        load_frdeep(data_dir, split="val")


def test_frdeep_missing(tmp_path: Path) -> None:
    with pytest.raises(DataFileNotFoundError, match="FIRST_PNG_dataset.tar.gz") as info:
        load_frdeep(tmp_path)
    assert str(tmp_path / "frdeep") in str(info.value)


def test_frdeep_corrupt_archive(tmp_path: Path, first_archive: Path) -> None:
    blob = bytearray(first_archive.read_bytes())
    target = tmp_path / "frdeep" / first_archive.name
    target.parent.mkdir()
    blob[len(blob) // 2] ^= 0xFF
    target.write_bytes(bytes(blob))
    with pytest.raises(ChecksumError, match="2f39461e6c62fb45289559915106013a") as info:
        load_frdeep(tmp_path)
    assert str(target) in str(info.value) and isinstance(info.value, ValueError)
    target.write_bytes(first_archive.read_bytes()[:100_000])  # truncated
    with pytest.raises(ChecksumError):
        load_frdeep(tmp_path)
    with pytest.raises(DataFileError, match="not a readable tar") as info2:
        load_frdeep(tmp_path, verify=False)
    assert str(target) in str(info2.value)


def test_frdeep_member_checksum(tmp_path: Path, first_members: dict[str, bytes]) -> None:
    members = dict(first_members)
    b3 = bytearray(members["data_batch_3"])
    b3[len(b3) // 2] ^= 0x01  # one pixel changes; the pickle stays valid
    members["data_batch_3"] = bytes(b3)
    tar = _tar(tmp_path / "first.tar", members, "FIRST_PNG_dataset")
    with pytest.raises(ChecksumError, match="member data_batch_3") as info:
        load_cifar_style_batches(tar, expected_md5=FRDEEP_MEMBER_MD5["FIRST"])
    assert str(tar) in str(info.value)
    ok = load_cifar_style_batches(tar)  # no table: structurally fine
    assert ok.train_images.shape == (550, 150, 150)


def test_frdeep_extracted_folder(tmp_path: Path, first_members: dict[str, bytes], data_dir: Path) -> None:
    folder = tmp_path / "FIRST_PNG_dataset"
    folder.mkdir()
    for n, b in first_members.items():
        (folder / n).write_bytes(b)
    got = load_cifar_style_batches(tmp_path, expected_md5=FRDEEP_MEMBER_MD5["FIRST"])
    x, y = load_frdeep(data_dir, "FIRST", "train")
    assert torch.equal(got.train_images, x) and torch.equal(got.train_labels, y)
    assert got.train_batches == tuple(range(1, 12)) and got.label_names == FRDEEP_CLASSES
    assert len(got.train_filenames) == 550 and got.train_filenames[0].endswith(".png")
    sub = load_cifar_style_batches(folder, train_batches=[2, 1])
    assert sub.train_batches == (1, 2) and torch.equal(sub.train_images, x[:100])
    with pytest.raises(DataFileNotFoundError, match="data_batch_99"):
        load_cifar_style_batches(folder, train_batches=[99])
    with pytest.raises(ValueError, match="train_batches"):
        load_cifar_style_batches(folder, train_batches=[0])


# --------------------------------------------------------------------- MiraBest


def test_mirabest_early(mirabest_archive: Path, data_dir: Path) -> None:
    b = load_cifar_style_batches(mirabest_archive)
    assert b.train_batches == tuple(range(1, 9)) and b.label_names == ("FRI", "FRII")
    assert b.train_images.shape == (704, 150, 150) and b.test_images.shape == (88, 150, 150)
    assert b.train_images.dtype == torch.uint8 and b.train_labels.dtype == torch.int64
    labels = torch.cat([b.train_labels, b.test_labels])
    assert labels.numel() == 792 and torch.bincount(labels).tolist() == [351, 441]
    for chunk in labels.split(88):  # 39 FRI and 49 FRII in every batch
        assert torch.bincount(chunk).tolist() == [39, 49]
    x, y = load_mirabest_early(data_dir, "test")
    assert torch.equal(x, b.test_images) and torch.equal(y, b.test_labels)
    assert set(MIRABEST_EARLY_2019_MEMBER_MD5) == {f"data_batch_{i}" for i in range(1, 9)} | {
        "test_batch", "batches.meta"}


def test_mirabest_hash_file_is_checked(tmp_path: Path, mirabest_archive: Path) -> None:
    with tarfile.open(mirabest_archive) as tar:
        members = {Path(m.name).name: tar.extractfile(m).read()  # type: ignore[union-attr]
                   for m in tar if m.isfile()}
    assert "hash.md5" in members
    b1 = bytearray(members["data_batch_1"])
    b1[len(b1) // 2] ^= 0x01
    members["data_batch_1"] = bytes(b1)
    bad = _tar(tmp_path / "mb.tar", {k: members[k] for k in ("data_batch_1", "test_batch",
                                                                "batches.meta", "hash.md5")})
    with pytest.raises(ChecksumError, match="member data_batch_1"):
        load_cifar_style_batches(bad, train_batches=[1])


# ------------------------------------------------------- generic CIFAR-style reader


def test_synthetic_folder_and_tar(tmp_path: Path) -> None:
    members = _synthetic(tmp_path / "set")
    got = load_cifar_style_batches(tmp_path / "set")
    assert got.train_images.shape == (5, 4, 4) and got.test_images.shape == (2, 4, 4)
    assert got.train_labels.tolist() == [0, 1, 0, 1, 1] and got.train_filenames[0] == "img0.png"
    # tar with a hidden checkpoint folder and an unrelated file: both ignored
    extra = dict(members)
    tar = tmp_path / "set.tar"
    with tarfile.open(tar, "w") as t:
        for folder, items in (("b", extra), ("b/.ipynb_checkpoints", {"data_batch_9": b"junk"}),
                              ("b", {"README": b"x"})):
            for n, blob in items.items():
                info = tarfile.TarInfo(f"{folder}/{n}")
                info.size = len(blob)
                t.addfile(info, io.BytesIO(blob))
    from_tar = load_cifar_style_batches(tar)
    assert torch.equal(from_tar.train_images, got.train_images) and from_tar.train_batches == (1, 2)


def test_flat_cifar_layout(tmp_path: Path) -> None:
    _synthetic(tmp_path, data_batch_1=_batch(3, 5, [0, 1, 1], flat=True),
               data_batch_2=_batch(1, 5, [0], flat=True), test_batch=_batch(2, 5, [1, 0], flat=True),
               **{"batches.meta": _meta(num_vis=25)})
    got = load_cifar_style_batches(tmp_path)
    assert got.train_images.shape == (4, 5, 5)


@pytest.mark.parametrize(
    ("override", "error", "pattern"),
    [
        ({"data_batch_2": _batch(2, 4, [1, 1])[:-20]}, DataFileError, "data_batch_2: truncated or corrupt"),
        ({"data_batch_2": _batch(2, 4, [1, 2])}, DataFileError, r"labels range 1\.\.2"),
        ({"data_batch_2": _batch(2, 4, [1])}, DataFileError, "2 images but 1 labels"),
        ({"data_batch_2": _batch(2, 3, [1, 0])}, DataFileError, "num_vis=16"),
        ({"data_batch_2": pickle.dumps({"data": np.zeros((2, 15), np.uint8), "labels": [0, 1]}, protocol=3)},
         DataFileError, "not square"),
        ({"data_batch_2": pickle.dumps({"data": np.zeros((1, 4, 4), np.float32), "labels": [0]}, protocol=3)},
         DataFileError, "dtype float32"),
        ({"data_batch_2": pickle.dumps([1, 2], protocol=3)}, DataFileError, "not a CIFAR-style batch"),
        ({"batches.meta": pickle.dumps({"x": 1}, protocol=3)}, DataFileError, "label_names"),
        ({"hash.md5": b"0123456789abcdef0123456789abcdef  data_batch_1\n"}, ChecksumError,
         "member data_batch_1"),
        ({"hash.md5": b"not a hash line\n"}, DataFileError, "malformed line"),
    ],
)
def test_synthetic_bad_batches(tmp_path: Path, override: dict[str, bytes], error: type, pattern: str) -> None:
    _synthetic(tmp_path, **override)
    with pytest.raises(error, match=pattern) as info:
        load_cifar_style_batches(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_synthetic_missing_members(tmp_path: Path) -> None:
    _synthetic(tmp_path / "a")
    (tmp_path / "a" / "test_batch").unlink()
    with pytest.raises(DataFileNotFoundError, match="no test_batch"):
        load_cifar_style_batches(tmp_path / "a")
    _synthetic(tmp_path / "b")
    (tmp_path / "b" / "batches.meta").unlink()
    with pytest.raises(DataFileNotFoundError, match="no batches.meta"):
        load_cifar_style_batches(tmp_path / "b")
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        load_cifar_style_batches(tmp_path / "nope.tar.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFileNotFoundError, match="no CIFAR-style batches"):
        load_cifar_style_batches(tmp_path / "empty")
    (tmp_path / "junk.tar.gz").write_bytes(b"\x1f\x8b\x08garbage")
    with pytest.raises(DataFileError, match="junk.tar.gz"):
        load_cifar_style_batches(tmp_path / "junk.tar.gz")


# --------------------------------------------------------------- restricted pickle


def test_restricted_unpickler_rejects_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    evil = pickle.dumps(_Evil(marker), protocol=3)
    with pytest.raises(UnsafePickleError, match=r"system.*not an allowed") as info:
        restricted_loads(evil, "evil.pkl")
    assert "evil.pkl" in str(info.value)
    assert isinstance(info.value, pickle.UnpicklingError) and isinstance(info.value, ValueError)
    assert not marker.exists()
    for payload in (pickle.dumps(eval, protocol=2), b"cbuiltins\nexec\n(S'1'\ntR.",
                    b"csubprocess\nPopen\n(S'true'\ntR."):
        with pytest.raises(UnsafePickleError):
            restricted_loads(payload, "x")
    # ...and the real loader refuses a malicious batch, naming it
    _synthetic(tmp_path / "set", data_batch_2=evil)
    with pytest.raises(UnsafePickleError, match="data_batch_2"):
        load_cifar_style_batches(tmp_path / "set")
    assert not marker.exists()


def test_restricted_unpickler_accepts_numpy_arrays() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for proto in (3, 4):  # what Python 3 writes by default; the real files are protocol 3
        got = restricted_loads(pickle.dumps({"a": [arr], "s": np.str_("x"), "n": 5}, protocol=proto), "ok")
        assert np.array_equal(got["a"][0], arr) and got["a"][0].dtype == np.uint8
        assert got["s"] == "x" and got["n"] == 5


def _batch_protocol2(n: int, side: int, labels: list[int]) -> bytes:
    rng = np.random.default_rng(7 * n + side)
    data = rng.integers(0, 256, size=(n, side * side), dtype=np.uint8)
    return pickle.dumps({"batch_label": "b", "labels": labels, "data": data}, protocol=2)


def test_protocol2_numpy_batch_from_python3_is_accepted(tmp_path: Path) -> None:
    # Python 3 writes each bytes object of a protocol-2 pickle (here the array's data and its dtype code) as
    # _codecs.encode(<str>, 'latin1'); that one call is safe and must not be refused.
    blob = _batch_protocol2(3, 4, [0, 1, 1])
    assert b"_codecs\nencode" in blob and blob[:2] == b"\x80\x02"
    obj = restricted_loads(blob, "p2")
    expected = pickle.loads(blob)
    assert obj["labels"] == [0, 1, 1] and obj["data"].dtype == np.uint8
    assert np.array_equal(obj["data"], expected["data"])
    # ...through the loader: every batch and the meta pickled with protocol 2
    _synthetic(tmp_path, data_batch_1=blob, data_batch_2=_batch_protocol2(2, 4, [1, 0]),
               test_batch=_batch_protocol2(2, 4, [0, 0]),
               **{"batches.meta": pickle.dumps({"label_names": ["FRI", "FRII"], "num_vis": 16}, protocol=2)})
    got = load_cifar_style_batches(tmp_path)
    assert got.train_images.shape == (5, 4, 4) and got.train_labels.tolist() == [0, 1, 1, 1, 0]
    assert torch.equal(got.train_images[:3], torch.from_numpy(expected["data"].reshape(3, 4, 4)))
    assert got.test_labels.tolist() == [0, 0] and got.label_names == ("FRI", "FRII")


def _reduce_pickle(module: str, name: str, args: tuple[object, ...]) -> bytes:
    """A protocol-2 pickle that calls ``module.name(*args)`` (GLOBAL + REDUCE), like a hostile file would."""
    return b"\x80\x02c" + f"{module}\n{name}\n".encode() + pickle.dumps(args, protocol=2)[2:-1] + b"R."


@pytest.mark.parametrize(("module", "name", "args", "pattern"), [
    ("os", "system", ("true",), "references os.system"),
    ("posix", "system", ("true",), "references posix.system"),
    ("builtins", "eval", ("1",), "references builtins.eval"),
    ("__builtin__", "eval", ("1",), "references __builtin__.eval"),
    ("_codecs", "decode", (b"x", "latin1"), "references _codecs.decode"),
    ("codecs", "encode", ("x", "latin1"), "references codecs.encode"),
    ("_codecs", "lookup", ("latin1",), "references _codecs.lookup"),
    # _codecs.encode itself, but not in the (<str>, 'latin1') form numpy's protocol-2 pickles use
    ("_codecs", "encode", ("x", "utf-8"), r"calls _codecs\.encode\('x', 'utf-8'\)"),
    ("_codecs", "encode", ("x", "rot13"), "only _codecs.encode"),
    ("_codecs", "encode", ("x", "latin1", "strict"), "only _codecs.encode"),
    ("_codecs", "encode", ("x",), "only _codecs.encode"),
    ("_codecs", "encode", (b"x", "latin1"), "only _codecs.encode"),
    ("_codecs", "encode", ("x", ["latin1"]), "only _codecs.encode"),
])
def test_restricted_unpickler_refuses_other_callables(
    tmp_path: Path, module: str, name: str, args: tuple[object, ...], pattern: str
) -> None:
    payload = _reduce_pickle(module, name, args)
    with pytest.raises(UnsafePickleError, match=pattern) as info:
        restricted_loads(payload, "hostile.pkl")
    assert "hostile.pkl" in str(info.value)
    _synthetic(tmp_path, data_batch_2=payload)
    with pytest.raises(UnsafePickleError, match="data_batch_2"):
        load_cifar_style_batches(tmp_path)


def test_restricted_unpickler_latin1_encode_form_is_allowed() -> None:
    # the exact call the pickles above stand in for, both spellings of the codec name
    for enc in ("latin1", "latin-1"):
        assert restricted_loads(_reduce_pickle("_codecs", "encode", ("\xff\x00a", enc)), "ok") == b"\xff\x00a"

