// Interface between the op (gae.cpp: checks, layout, CPU kernel, registration) and the CUDA
// kernels (gae_cuda.cu), which only exist when the extension is built with VGM2P_WITH_CUDA.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace vgm2p {

// Inputs are contiguous (rows, T) views: reward/value/next_value of one floating dtype,
// done/terminal of one mask dtype (uint8 for bool masks, or float/double); adv and ret are
// contiguous outputs of the value dtype. Runs on the current CUDA stream.
void gae_cuda_launch(const at::Tensor& reward, const at::Tensor& value,
                     const at::Tensor& next_value, const at::Tensor& done,
                     const at::Tensor& terminal, double gamma, double lam, at::Tensor& adv,
                     at::Tensor& ret);

// Calls f(mask_t{}) with the C++ type of a prepared mask dtype (uint8, float32 or float64).
template <typename F>
void dispatch_mask(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kByte:
      return f(uint8_t{});
    case at::kFloat:
      return f(float{});
    default:
      return f(double{});
  }
}

}  // namespace vgm2p
