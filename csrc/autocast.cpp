// Autocast for the fused convolutions: under torch.autocast the floating-point inputs are cast to the
// autocast dtype of their device (bfloat16 on CPU by default, float16 on CUDA), like aten::conv2d, and
// the op is redispatched below the autocast keys so autograd records it as usual.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace gconv_ext {
namespace {

using ConvFn = at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, int64_t, bool, bool,
                          c10::SymIntArrayRef, c10::SymIntArrayRef, c10::SymIntArrayRef);

template <c10::DispatchKey key, c10::DeviceType device, const char* name>
at::Tensor autocast_conv(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         int64_t rotations, bool reflections, bool disk_mask, c10::SymIntArrayRef stride,
                         c10::SymIntArrayRef padding, c10::SymIntArrayRef dilation) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(key);
  const at::ScalarType dtype = at::autocast::get_autocast_dtype(device);
  static auto op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<ConvFn>();
  std::optional<at::Tensor> b;
  if (bias.has_value() && bias->defined()) b = at::autocast::cached_cast(dtype, *bias, device);
  return op.call(at::autocast::cached_cast(dtype, input, device), at::autocast::cached_cast(dtype, weight, device), b,
                 rotations, reflections, disk_mask, stride, padding, dilation);
}

constexpr char kLifting[] = "gconv_ext::lifting_conv2d";
constexpr char kGroup[] = "gconv_ext::group_conv2d";

}  // namespace

TORCH_LIBRARY_IMPL(gconv_ext, AutocastCPU, m) {
  m.impl("lifting_conv2d", &autocast_conv<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU, kLifting>);
  m.impl("group_conv2d", &autocast_conv<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU, kGroup>);
}

TORCH_LIBRARY_IMPL(gconv_ext, AutocastCUDA, m) {
  m.impl("lifting_conv2d", &autocast_conv<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA, kLifting>);
  m.impl("group_conv2d", &autocast_conv<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA, kGroup>);
}

}  // namespace gconv_ext
