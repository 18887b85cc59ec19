"""Build gconv_ext: the C++ operators always, the CUDA kernels when nvcc and a CUDA build of torch exist.

Environment switches:
  GCONV_EXT_CUDA=1      force the CUDA build (fails with a clear message without nvcc / CUDA torch)
  GCONV_EXT_CUDA=0      force a CPU-only build
  (unset / "auto")      CUDA if nvcc and a CUDA build of torch are present
  TORCH_CUDA_ARCH_LIST  CUDA architectures (default "7.5;8.0;9.0+PTX": sm_75, sm_80, sm_90, and PTX
                        for newer GPUs to JIT)
  MAX_JOBS              parallel compile jobs (ninja)
Install with `pip install --no-build-isolation -e .` so the extension builds against the torch you have;
with `--no-deps` pip leaves that torch (and everything else) as it is. Supported: torch >=2.11,<2.15
(TORCH_REQUIREMENT; README "Supported versions" says what was tested); another torch builds with a warning.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

# The `nvcc` on PATH may be a wrapper script outside the toolkit; prefer the toolkit itself when present.
if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - a build-time message, not library code
    sys.exit("gconv_ext: building needs PyTorch installed first (any torch>=2.11,<2.15, e.g. "
             "`pip install -r requirements.txt` for the pinned 2.14.1), then `pip install --no-build-isolation -e .`")

ROOT = os.path.dirname(os.path.abspath(__file__))
# Tools installed beside this interpreter (ninja from requirements.txt) are found even when the venv
# is not activated.
os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
DEFAULT_ARCHS = "7.5;8.0;9.0+PTX"
# The torch releases this extension is built and tested against (README "Supported versions"). The build
# uses whatever torch is installed and only warns outside this range; requirements.txt pins one release for
# the reproducible install.
TORCH_RANGE = (2, 11), (2, 15)  # >= the first, < the second
TORCH_REQUIREMENT = "torch>={}.{},<{}.{}".format(*TORCH_RANGE[0], *TORCH_RANGE[1])


def check_torch_version() -> None:
    if not TORCH_RANGE[0] <= torch.torch_version.TorchVersion(torch.__version__) < TORCH_RANGE[1]:
        print(f"gconv_ext: warning: building against torch {torch.__version__}, outside the supported range "
              f"({TORCH_REQUIREMENT}); it may not compile or pass the tests", file=sys.stderr)


def want_cuda() -> bool:
    mode = os.environ.get("GCONV_EXT_CUDA", "auto").strip().lower()
    if mode not in ("0", "1", "auto", ""):
        sys.exit(f"gconv_ext: GCONV_EXT_CUDA must be 0, 1 or auto, got {mode!r}")
    if mode == "0":
        return False
    have_nvcc = cpp_extension.CUDA_HOME is not None and os.path.exists(
        os.path.join(cpp_extension.CUDA_HOME, "bin", "nvcc"))
    have_torch_cuda = torch.version.cuda is not None
    if mode == "1":
        if not have_torch_cuda:
            sys.exit(f"gconv_ext: GCONV_EXT_CUDA=1 but this torch ({torch.__version__}) is a CPU-only build; "
                     "install a CUDA build of torch or set GCONV_EXT_CUDA=0")
        if not have_nvcc:
            sys.exit("gconv_ext: GCONV_EXT_CUDA=1 but nvcc was not found; set CUDA_HOME to the CUDA toolkit "
                     "(e.g. CUDA_HOME=/usr/local/cuda) or set GCONV_EXT_CUDA=0")
        return True
    return have_nvcc and have_torch_cuda


def extensions():
    check_torch_version()
    with_cuda = want_cuda()
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    define = [("GCONV_EXT_TORCH_VERSION", f'"{torch.__version__}"')]
    # No floating-point contraction on either compiler (-ffp-contract=off, --fmad=false): an a*b+c is never
    # fused into an FMA, so the CPU and CUDA kernels, which run the same per-element source, round alike
    # whatever instruction set the compiler targets (the transforms' bilinear taps included).
    # -Wno-psabi: the CPU loops pass vectors (csrc/cpu/vec.inc) only between inlined functions of one
    # instruction set's build, so gcc's notes on how such vectors would cross an ABI boundary do not apply.
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-ffp-contract=off", "-Wno-psabi"]
    if sys.platform == "linux":
        cxx.append("-fopenmp")
    extra = {"cxx": cxx}
    if with_cuda:
        archs = os.environ.get("TORCH_CUDA_ARCH_LIST") or DEFAULT_ARCHS
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs  # cpp_extension reads it; without a GPU it must be set
        sources += sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
        define += [("GCONV_EXT_WITH_CUDA", None), ("GCONV_EXT_CUDA_VERSION", f'"{torch.version.cuda}"'),
                   ("GCONV_EXT_CUDA_ARCHS", f'"{archs}"')]
        extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "--fmad=false"]
        ext_cls = cpp_extension.CUDAExtension
    else:
        ext_cls = cpp_extension.CppExtension
    print(f"gconv_ext: building {'with CUDA (' + os.environ['TORCH_CUDA_ARCH_LIST'] + ')' if with_cuda else 'CPU only'}"
          f" against torch {torch.__version__}", file=sys.stderr)
    return [ext_cls("gconv_ext._C", sources, include_dirs=[os.path.join(ROOT, "csrc", "include")],
                    define_macros=define, extra_compile_args=extra, py_limited_api=False)]


setup(
    name="gconv_ext",
    version="0.1.0",
    description="C++/CUDA group-equivariant convolutions (C_N, D_N) for PyTorch",
    packages=find_packages(include=["gconv_ext", "gconv_ext.*"]),
    package_data={"gconv_ext": ["pretrained/*.pt", "pretrained/manifest.json"]},
    python_requires=">=3.10",
    install_requires=[TORCH_REQUIREMENT, "numpy", "tqdm"],
    ext_modules=extensions(),
    entry_points={"console_scripts": ["gconv-ext=gconv_ext.cli:main"]},
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)},
)
