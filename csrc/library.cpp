// The operator schemas: the one TORCH_LIBRARY block. Each backend registers its own kernels at the end of
// its file (cpu/*.cpp under CPU, cuda/*.cu under CUDA); the device-generic convolutions are registered
// once under CompositeExplicitAutograd (conv.cpp); autocast in autocast.cpp; fake kernels in Python
// (gconv_ext/ops/*.py); autograd in Python there too, except the convolutions' and the fused norm + pool's, which
// is C++ (conv_autograd.cpp, norm_pool_autograd.cpp).
#include <torch/library.h>

namespace gconv_ext {

TORCH_LIBRARY(gconv_ext, m) {
  m.def("lift_filter(Tensor weight, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("lift_filter_backward(Tensor grad, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("group_filter(Tensor weight, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def("group_filter_backward(Tensor grad, int rotations, bool reflections, bool disk_mask) -> Tensor");
  m.def(
      "lifting_conv2d(Tensor input, Tensor weight, Tensor? bias, int rotations, bool reflections, bool disk_mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  m.def(
      "lifting_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, int rotations, bool reflections, "
      "bool disk_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def(
      "group_conv2d(Tensor input, Tensor weight, Tensor? bias, int rotations, bool reflections, bool disk_mask, "
      "SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation) -> Tensor");
  m.def(
      "group_conv2d_backward(Tensor grad_out, Tensor input, Tensor weight, int rotations, bool reflections, "
      "bool disk_mask, SymInt[2] stride, SymInt[2] padding, SymInt[2] dilation, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
  m.def("group_pool(Tensor input, str mode) -> Tensor");
  m.def("group_pool_backward(Tensor grad_out, Tensor input, str mode) -> Tensor");
  m.def("group_max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def("group_avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "group_max_pool2d_with_indices(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding) "
      "-> (Tensor, Tensor)");
  m.def(
      "group_max_pool2d_backward(Tensor grad_out, Tensor indices, SymInt[] input_size, int[2] kernel_size, "
      "int[2] stride, int[2] padding) -> Tensor");
  m.def(
      "group_avg_pool2d_backward(Tensor grad_out, SymInt[] input_size, int[2] kernel_size, int[2] stride, "
      "int[2] padding) -> Tensor");
  m.def(
      "group_max_pool2d_gather(Tensor values, Tensor indices, int[2] kernel_size, int[2] stride, int[2] padding) "
      "-> Tensor");
  m.def(
      "group_layer_norm_relu_max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, float eps) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "group_layer_norm_relu_max_pool2d_backward(Tensor grad_out, Tensor input, Tensor out, Tensor indices, "
      "Tensor mean, Tensor rstd, int[2] kernel_size, int[2] stride, int[2] padding) -> Tensor");
}

}  // namespace gconv_ext
