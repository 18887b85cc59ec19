// CPU loops over the shared filter-transform arithmetic (filter_transform.h).
//
// The sums are evaluated for W filters at once: a block of W filters (of the flattened C_out * C_in axis) is
// gathered into a lane-minor tile (tap-major, filter-minor), the shared templates run on lanes of W values in
// the variant of cpu_kernels.inc that this CPU runs best (SIMD of its width), and the results are scattered
// back to the logical layout.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

#include "convert_cpu.h"
#include "cpu_kernels.h"
#include "gconv_ext/filter_transform.h"
#include "gconv_ext/register.h"

namespace gconv_ext {
namespace {

// bf16 / fp16 (scalar_t narrower than acc_t): a result tile is rounded to scalar_t contiguously (narrow_n, which
// vectorises), then scattered as a plain copy. Rounding inside the strided scatter loop ran a scalar NaN branch
// per element and made the bf16 forward twice as slow as fp32. (Widening is a shift: the gathers do it inline.)
template <typename scalar_t, typename acc_t>
constexpr bool kReduced = !std::is_same_v<scalar_t, acc_t>;

// A vector of n scalar_t for the reduced types; nothing at all for fp32 / fp64, whose loops stay as they were.
struct NoTile {
  explicit NoTile(int64_t) {}
};
template <typename scalar_t, typename acc_t>
using ReducedTile = std::conditional_t<kReduced<scalar_t, acc_t>, std::vector<scalar_t>, NoTile>;

// The n-element result tile the scatter reads: `tout` rounded into `nt` for the reduced types, `tout` itself
// otherwise. The scatter's narrow() is then a plain copy for the reduced types, and the same loop serves both.
template <typename scalar_t, typename acc_t>
const auto* scatter_source(const std::vector<acc_t>& tout, ReducedTile<scalar_t, acc_t>& nt, int64_t n) {
  if constexpr (kReduced<scalar_t, acc_t>) {
    narrow_n(tout.data(), nt.data(), n);
    return static_cast<const scalar_t*>(nt.data());
  } else {
    return tout.data();
  }
}

// The lane-minor tile of W filters and back: tile[i * W + l] is element i of filter l (row l of the block). A full
// block moves a tile row at a time (W contiguous tile elements, W streams in the filters): 1.2x faster than a
// filter at a time, which strides through the tile by W. A partial block (nl < W filters) goes filter by filter,
// its missing lanes 0 in the tile.
template <int W, typename scalar_t, typename acc_t>
void gather_lanes(const scalar_t* const* rows, int64_t nl, int64_t slab, acc_t* __restrict__ tile) {
  if (nl == W) {
    for (int64_t i = 0; i < slab; ++i) {
      for (int l = 0; l < W; ++l) tile[i * W + l] = widen(rows[l][i]);
    }
    return;
  }
  for (int64_t l = 0; l < W; ++l) {
    for (int64_t i = 0; i < slab; ++i) tile[i * W + l] = l < nl ? widen(rows[l][i]) : acc_t(0);
  }
}

template <int W, typename scalar_t, typename tile_t>
void scatter_lanes(const tile_t* __restrict__ tile, int64_t nl, int64_t slab, scalar_t* const* rows) {
  if (nl == W) {
    for (int64_t i = 0; i < slab; ++i) {
      for (int l = 0; l < W; ++l) rows[l][i] = narrow<scalar_t>(tile[i * W + l]);
    }
    return;
  }
  for (int64_t l = 0; l < nl; ++l) {
    for (int64_t i = 0; i < slab; ++i) rows[l][i] = narrow<scalar_t>(tile[i * W + l]);
  }
}

// The lanes run over W consecutive filters f = co * c_in + ci of the flattened [C_out * C_in] axis (not over
// input channels only): every filter shares the plan, and a lifting layer's C_in = 1 fills all W lanes.
template <typename scalar_t>
void forward_impl(const PlanView& p, const scalar_t* in, scalar_t* out, int64_t c_out, int64_t c_in, int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int W = lanes_for<acc_t>();
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const int64_t kk = p.kk, slab = gin * kk;  // one filter: gin * kk taps
  const int64_t filters = c_out * c_in, blocks = (filters + W - 1) / W;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tin(slab * W), tout(slab * W);
    ReducedTile<scalar_t, acc_t> nt(slab * W);  // the result tile in scalar_t (bf16 / fp16 only)
    for (int64_t b = begin; b < end; ++b) {
      const int64_t f0 = b * W, nl = std::min<int64_t>(W, filters - f0);
      const scalar_t* src[W];  // gather: tin[(a, t), l] = in[f0 + l, a, t]
      for (int64_t l = 0; l < nl; ++l) src[l] = in + (f0 + l) * slab;
      gather_lanes<W>(src, nl, slab, tin.data());
      for (int64_t g = 0; g < p.order; ++g) {
        run.transform_forward(p, tin.data(), tout.data(), g, gin);
        scalar_t* dst[W];  // scatter: out[co, g, ci, h, o] = tout[(h, o), l]
        for (int64_t l = 0; l < nl; ++l) {
          const int64_t co = (f0 + l) / c_in, ci = (f0 + l) % c_in;
          dst[l] = out + ((co * p.order + g) * c_in + ci) * slab;
        }
        scatter_lanes<W>(scatter_source<scalar_t>(tout, nt, slab * W), nl, slab, dst);
      }
    }
  });
}

template <typename scalar_t>
void backward_impl(const PlanView& p, const scalar_t* gout, scalar_t* gin_ptr, int64_t c_out, int64_t c_in,
                   int64_t gin) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int W = lanes_for<acc_t>();
  const CpuKernelSet<acc_t>& run = cpu_kernels().get<acc_t>();
  const int64_t kk = p.kk, slab = gin * kk;
  const int64_t filters = c_out * c_in, blocks = (filters + W - 1) / W;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> tg(p.order * slab * W), tout(slab * W);
    ReducedTile<scalar_t, acc_t> nt(slab * W);  // the result tile in scalar_t (bf16 / fp16 only)
    for (int64_t b = begin; b < end; ++b) {
      const int64_t f0 = b * W, nl = std::min<int64_t>(W, filters - f0);
      for (int64_t g = 0; g < p.order; ++g) {  // gather: tg[(g, h, o), l] = grad_out[co, g, ci, h, o]
        const scalar_t* src[W];
        for (int64_t l = 0; l < nl; ++l) {
          const int64_t co = (f0 + l) / c_in, ci = (f0 + l) % c_in;
          src[l] = gout + ((co * p.order + g) * c_in + ci) * slab;
        }
        gather_lanes<W>(src, nl, slab, tg.data() + g * slab * W);
      }
      run.transform_backward(p, tg.data(), tout.data(), gin);
      scalar_t* dst[W];  // scatter: grad_in[f0 + l, a, t]
      for (int64_t l = 0; l < nl; ++l) dst[l] = gin_ptr + (f0 + l) * slab;
      scatter_lanes<W>(scatter_source<scalar_t>(tout, nt, slab * W), nl, slab, dst);
    }
  });
}

void transform_forward_cpu(const at::Tensor& in, at::Tensor& out, const DevicePlan& plan, const TransformSizes& s) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, in.scalar_type(), "gconv_ext_transform_forward_cpu", [&] {
    forward_impl<scalar_t>(plan.view(), in.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), s.c_out,
                           s.c_in, s.gin);
  });
}

void transform_backward_cpu(const at::Tensor& grad_out, at::Tensor& grad_in, const DevicePlan& plan,
                            const TransformSizes& s) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(), "gconv_ext_transform_backward_cpu",
                                  [&] {
    backward_impl<scalar_t>(plan.view(), grad_out.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(),
                            s.c_out, s.c_in, s.gin);
  });
}

constexpr TransformLaunchers kCpuTransform{&transform_forward_cpu, &transform_backward_cpu};

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, CPU, m) { register_filter_transforms<kCpuTransform>(m); }

}  // namespace gconv_ext
