"""Loading the compiled operators (`gconv_ext._C`) and reporting how they were built."""
from __future__ import annotations

import warnings
from typing import Any

import torch

_C: Any = None
_LOAD_ERROR: str | None = None

try:
    from . import _C as _compiled  # runs the TORCH_LIBRARY registrations
except ImportError as exc:  # not built, or built against another torch (undefined symbols)
    _LOAD_ERROR = (
        f"the compiled extension gconv_ext._C could not be loaded ({exc}). It is missing or was built "
        f"against a different torch than the installed {torch.__version__}. Rebuild it with "
        "`pip install --no-build-isolation -e .` in the gconv_ext checkout. Until then gconv_ext uses its "
        "pure-PyTorch reference implementation (correct, but slower)."
    )
else:
    if _compiled.TORCH_VERSION != torch.__version__:
        _LOAD_ERROR = (
            f"gconv_ext._C was built against torch {_compiled.TORCH_VERSION} but torch {torch.__version__} is "
            "installed. Rebuild with `pip install --no-build-isolation -e .`. Using the pure-PyTorch reference "
            "implementation until then."
        )
    else:
        _C = _compiled

_warned = False


def available() -> bool:
    """True when the compiled C++/CUDA operators are loaded."""
    return _C is not None


def warn_if_unavailable() -> None:
    """Warn once per process that the slow reference path is in use."""
    global _warned
    if _C is None and not _warned:
        _warned = True
        warnings.warn(f"gconv_ext: {_LOAD_ERROR}", RuntimeWarning, stacklevel=4)


def compiled_op(name: str) -> Any:
    """The compiled operator ``torch.ops.gconv_ext.<name>``, or None when ``gconv_ext._C`` is not loaded (then
    a warning, once per process, says why); the caller falls back to its pure-PyTorch reference::

        op = _extension.compiled_op("group_pool")
        return reference.group_pool(x, mode) if op is None else op(x, mode)
    """
    if _C is None:
        warn_if_unavailable()
        return None
    return getattr(torch.ops.gconv_ext, name)


def build_info() -> dict[str, Any]:
    """How the extension was built: ``compiled``, ``with_cuda``, ``cuda_version``, ``cuda_archs``,
    ``torch_version_built``, ``torch_version_runtime``, ``error`` (why it is unavailable, or None), and the
    CPU loops' variants: ``cpu_capability`` (the one in use: ``default``, ``avx2`` or ``avx512``, lowered by
    ``GCONV_EXT_CPU_CAPABILITY``) and ``cpu_capabilities`` (those this build has and this CPU runs)."""
    c = _C
    return {
        "compiled": c is not None,
        "with_cuda": bool(c.WITH_CUDA) if c is not None else False,
        "cuda_version": (c.CUDA_VERSION or None) if c is not None else None,
        "cuda_archs": [a for a in c.CUDA_ARCHS.split(";") if a] if c is not None else [],
        "torch_version_built": c.TORCH_VERSION if c is not None else None,
        "torch_version_runtime": torch.__version__,
        "error": _LOAD_ERROR,
        "cpu_capability": c.cpu_capability() if c is not None else None,
        "cpu_capabilities": list(c.supported_cpu_capabilities()) if c is not None else [],
    }
