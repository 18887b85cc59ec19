"""Fixed, seeded rotated-MNIST evaluation sets and an MNIST-rot substitute.

* :func:`rotated_test_set`: every digit rotated by its own seeded uniform angle
  (angles returned so they can be saved with results).
* :func:`fixed_angle_test_sets`: the whole test set at each of a list of fixed
  angles, generated lazily one angle at a time.
* :func:`make_rotated_mnist`: a **substitute** for the ``mnist_rotation_new``
  benchmark (12,000 training / 50,000 test digits, uniform random angles),
  built from plain MNIST with a fixed seed and cached on disk. The original
  benchmark files are not available offline and its sample selection and angles
  were never published, so results on this set are not directly comparable to
  published MNIST-rot numbers.

Images are rotated while still in [0, 1] (so the zero fill is the black
background) and normalised afterwards.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .mnist import MNIST_FILES, load_mnist, normalize, to_float01
from .paths import atomic_torch_save, default_cache_dir, resolve_data_dir
from .transforms import rotate

__all__ = [
    "rotated_test_set",
    "fixed_angle_test_sets",
    "make_rotated_mnist",
    "RotatedMNIST",
    "ROTATED_MNIST_DESCRIPTION",
]

_CHUNK = 4096
_FORMAT_VERSION = 1
N_TRAIN_ROT = 12000
N_TEST_ROT = 50000

ROTATED_MNIST_DESCRIPTION = (
    "SUBSTITUTE for the mnist_rotation_new (MNIST-rot) benchmark, built offline from the original "
    "MNIST IDX files; NOT the benchmark files, whose digit selection and angles were never published. "
    "12,000 training digits drawn from the MNIST train split; 50,000 test digits drawn from the "
    "remaining 48,000 MNIST train digits plus the 10,000 MNIST test digits (no digit in both sets). "
    "Each digit is rotated about the image centre by an angle uniform in [0, 360) degrees "
    "(counter-clockwise as displayed; bilinear, zero fill; exact for multiples of 90), then rounded "
    "to uint8. Selection and angles come from torch.Generator().manual_seed(seed)."
)


def _as_nchw_float01(images_uint8: Tensor) -> Tensor:
    if images_uint8.dim() == 3:
        images_uint8 = images_uint8.unsqueeze(1)
    if images_uint8.dim() != 4:
        raise ValueError(
            f"images must have shape [N,H,W] or [N,1,H,W], got {tuple(images_uint8.shape)}"
        )
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (raw MNIST pixels), got {images_uint8.dtype}")
    return to_float01(images_uint8)


def _rotate_chunked(images_uint8: Tensor, angles: Tensor) -> Tensor:
    """Rotate uint8 images by per-image angles; float32 result in [0, 1], shape [N,1,H,W]."""
    n = images_uint8.shape[0]
    x = images_uint8.unsqueeze(1) if images_uint8.dim() == 3 else images_uint8
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for start in range(0, n, _CHUNK):
        stop = min(start + _CHUNK, n)
        out[start:stop] = rotate(_as_nchw_float01(x[start:stop]), angles[start:stop])
    return out


def _check_pair(images_uint8: Tensor, labels: Tensor) -> None:
    if images_uint8.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images ({images_uint8.shape[0]}) and labels ({labels.shape[0]}) differ in length"
        )


def rotated_test_set(
    images_uint8: Tensor, labels: Tensor, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    """Rotate each digit by a seeded uniform angle in [0, 360).

    Args:
        images_uint8: uint8 [N,28,28] (or [N,1,28,28]) raw MNIST pixels.
        labels: [N] labels.
        seed: seeds ``torch.Generator`` for the angles; same seed, same set.

    Returns:
        ``(images, labels, angles_deg)``: normalised float32 [N,1,28,28], int64 [N],
        float64 [N] (degrees, counter-clockwise as displayed).
    """
    _check_pair(images_uint8, labels)
    gen = torch.Generator().manual_seed(seed)
    angles = torch.rand(images_uint8.shape[0], generator=gen, dtype=torch.float64) * 360.0
    images = normalize(_rotate_chunked(images_uint8, angles))
    return images, labels.to(torch.int64).clone(), angles


def fixed_angle_test_sets(
    images_uint8: Tensor,
    labels: Tensor,
    angles: Iterable[float] = range(0, 360, 5),
) -> Iterator[tuple[float, Tensor, Tensor]]:
    """Yield ``(angle_deg, images, labels)`` for each fixed angle, one angle at a time.

    ``images`` is the whole set rotated by ``angle_deg`` (normalised float32
    [N,1,28,28]); only one angle's tensor is alive at a time if the caller drops
    it before the next iteration. Multiples of 90 degrees are exact (rot90).
    """
    _check_pair(images_uint8, labels)
    labels64 = labels.to(torch.int64).clone()  # shared by all angles, independent of the caller's
    for angle in angles:
        a = float(angle)
        per_image = torch.full((images_uint8.shape[0],), a, dtype=torch.float64)
        yield a, normalize(_rotate_chunked(images_uint8, per_image)), labels64


@dataclass
class RotatedMNIST:
    """The rotated-MNIST substitute (see :data:`ROTATED_MNIST_DESCRIPTION`).

    Images are uint8 [N,28,28] (rotated, rounded); angles are float64 degrees.
    ``test_source_split`` is 0 for a digit taken from the MNIST train split and 1
    for the MNIST test split; ``*_source_index`` index into that split.
    """

    train_images: Tensor
    train_labels: Tensor
    train_angles: Tensor
    train_source_index: Tensor
    test_images: Tensor
    test_labels: Tensor
    test_angles: Tensor
    test_source_split: Tensor
    test_source_index: Tensor
    seed: int
    description: str
    cache_path: Path
    from_cache: bool

    def normalized(self, split: str) -> Tensor:
        """Normalised float32 [N,1,28,28] images of ``split`` (``"train"`` or ``"test"``)."""
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        imgs = self.train_images if split == "train" else self.test_images
        return normalize(to_float01(imgs).unsqueeze(1))


_TENSOR_KEYS = (
    "train_images", "train_labels", "train_angles", "train_source_index",
    "test_images", "test_labels", "test_angles", "test_source_split", "test_source_index",
)


def _build_rotated_mnist(data_dir: Path, seed: int) -> dict[str, object]:
    train_x, train_y = load_mnist("train", data_dir)
    test_x, test_y = load_mnist("test", data_dir)
    gen = torch.Generator().manual_seed(seed)

    perm = torch.randperm(train_x.shape[0], generator=gen)
    train_src = perm[:N_TRAIN_ROT]
    rest_src = perm[N_TRAIN_ROT:]
    pool_split = torch.cat([torch.zeros(rest_src.numel(), dtype=torch.uint8),
                            torch.ones(test_x.shape[0], dtype=torch.uint8)])
    pool_index = torch.cat([rest_src, torch.arange(test_x.shape[0])])
    pick = torch.randperm(pool_index.numel(), generator=gen)[:N_TEST_ROT]
    test_split, test_src = pool_split[pick], pool_index[pick]

    train_angles = torch.rand(N_TRAIN_ROT, generator=gen, dtype=torch.float64) * 360.0
    test_angles = torch.rand(N_TEST_ROT, generator=gen, dtype=torch.float64) * 360.0

    from_train = test_split == 0
    test_imgs = torch.empty((N_TEST_ROT, 28, 28), dtype=torch.uint8)
    test_lbls = torch.empty(N_TEST_ROT, dtype=torch.int64)
    test_imgs[from_train] = train_x[test_src[from_train]]
    test_lbls[from_train] = train_y[test_src[from_train]]
    test_imgs[~from_train] = test_x[test_src[~from_train]]
    test_lbls[~from_train] = test_y[test_src[~from_train]]

    def rot_u8(x: Tensor, angles: Tensor) -> Tensor:
        y = _rotate_chunked(x, angles).squeeze(1)
        return torch.round(y * 255.0).clamp_(0, 255).to(torch.uint8)

    return {
        "format_version": _FORMAT_VERSION,
        "description": ROTATED_MNIST_DESCRIPTION,
        "seed": seed,
        "source_md5": {name: info.gz_md5 for name, info in MNIST_FILES.items()},
        "train_images": rot_u8(train_x[train_src], train_angles),
        "train_labels": train_y[train_src].clone(),
        "train_angles": train_angles,
        "train_source_index": train_src.clone(),
        "test_images": rot_u8(test_imgs, test_angles),
        "test_labels": test_lbls,
        "test_angles": test_angles,
        "test_source_split": test_split,
        "test_source_index": test_src,
    }


def _valid_cache(obj: object, seed: int) -> bool:
    if not isinstance(obj, dict):
        return False
    if obj.get("format_version") != _FORMAT_VERSION or obj.get("seed") != seed:
        return False
    if not all(isinstance(obj.get(k), Tensor) for k in _TENSOR_KEYS):
        return False
    return (tuple(obj["train_images"].shape) == (N_TRAIN_ROT, 28, 28)
            and tuple(obj["test_images"].shape) == (N_TEST_ROT, 28, 28)
            and obj["train_images"].dtype == torch.uint8
            and obj["test_images"].dtype == torch.uint8
            and obj["train_labels"].numel() == N_TRAIN_ROT
            and obj["test_labels"].numel() == N_TEST_ROT)


def make_rotated_mnist(
    data_dir: str | os.PathLike[str] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
) -> RotatedMNIST:
    """Build (or load from cache) the rotated-MNIST **substitute** for ``mnist_rotation_new``.

    12,000 training and 50,000 test digits, each rotated by a seeded uniform angle
    in [0, 360); see :data:`ROTATED_MNIST_DESCRIPTION` for the exact scheme. This is
    *not* the original benchmark, which is not available offline.

    The result is cached atomically as ``<cache_dir>/rotated_mnist_substitute_v1_seed<seed>.pt``
    (default cache dir: :func:`~gconv_ext.data.paths.default_cache_dir`) and loaded
    from there on later calls; an unreadable or mismatching cache file is rebuilt.
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = cache / f"rotated_mnist_substitute_v{_FORMAT_VERSION}_seed{seed}.pt"
    obj: object = None
    from_cache = False
    if path.is_file():
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 (any unreadable cache is rebuilt)
            warnings.warn(f"rebuilding unreadable rotated-MNIST cache {path}: {exc}", stacklevel=2)
            obj = None
        if obj is not None and not _valid_cache(obj, seed):
            warnings.warn(f"rebuilding rotated-MNIST cache {path}: unexpected contents", stacklevel=2)
            obj = None
        from_cache = obj is not None
    if obj is None:
        obj = _build_rotated_mnist(resolve_data_dir(data_dir), seed)
        atomic_torch_save(obj, path)
    assert isinstance(obj, dict)
    return RotatedMNIST(
        **{k: obj[k] for k in _TENSOR_KEYS},
        seed=int(obj["seed"]),
        description=str(obj["description"]),
        cache_path=path,
        from_cache=from_cache,
    )
