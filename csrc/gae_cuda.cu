// CUDA kernels of vgm2p_fast::gae (checks, layout and registration are in gae.cpp). The scan is
// the one in gae_scan.h: one thread per segment of a row, so many short rows run one thread per
// row (or a few segments per row), and a few long rows (a flat dataset) are cut into up to
// kMaxSegmentsPerRow segments joined by the carry and fix-up passes. Everything runs on the
// current stream. c10/cuda/CUDAStream.h rather than ATen/cuda/CUDAContext.h: the latter pulls in
// cusparse.h and builds several times slower.
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>

#include "gae.h"
#include "gae_scan.h"

namespace vgm2p {
namespace {

constexpr int kThreads = 256;
// Segments wanted in flight: 65536 threads is ~1/4 of an H100's 132 SMs x 2048 resident threads,
// enough to cover memory latency with one dependent chain per thread.
constexpr int64_t kTargetSegments = int64_t(1) << 16;
// A segment shorter than this spends more on its carry and fix-up than on its scan.
constexpr int64_t kMinSegment = 64;
// The carry pass walks a row's segments with one thread: this bounds its length.
constexpr int64_t kMaxSegmentsPerRow = 2048;

struct Geometry {
  int64_t T, n, L, segments;
  __device__ int64_t offset(int64_t s) const { return (s / n) * T; }
  __device__ int64_t t0(int64_t s) const { return (s % n) * L; }
  __device__ int64_t t1(int64_t s) const { return min(T, t0(s) + L); }
};

template <typename scalar_t, typename mask_t>
__global__ void scan_kernel(const scalar_t* __restrict__ r, const scalar_t* __restrict__ v,
                            const scalar_t* __restrict__ nv, const mask_t* __restrict__ done,
                            const mask_t* __restrict__ term, scalar_t gamma, scalar_t gl,
                            Geometry geo, scalar_t* __restrict__ adv, scalar_t* __restrict__ ret,
                            scalar_t* __restrict__ head, bool* __restrict__ open) {
  const int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (s >= geo.segments) return;
  const int64_t off = geo.offset(s), t0 = geo.t0(s);
  const bool o = scan_segment(r + off, v + off, nv + off, done + off, term + off, gamma, gl, t0,
                              geo.t1(s), adv + off, ret + off);
  if (head != nullptr) {
    head[s] = adv[off + t0];
    open[s] = o;
  }
}

template <typename scalar_t>
__global__ void carry_kernel(const scalar_t* __restrict__ head, const bool* __restrict__ open,
                             scalar_t decay, int64_t rows, int64_t n,
                             scalar_t* __restrict__ carry) {
  const int64_t row = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (row >= rows) return;
  carry_row(head + row * n, open + row * n, decay, n, carry + row * n);
}

template <typename scalar_t, typename mask_t>
__global__ void fix_kernel(const mask_t* __restrict__ done, scalar_t gl, Geometry geo,
                           const scalar_t* __restrict__ carry, scalar_t* __restrict__ adv,
                           scalar_t* __restrict__ ret) {
  const int64_t s = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (s >= geo.segments || s % geo.n == geo.n - 1) return;
  const int64_t off = geo.offset(s);
  fix_segment(done + off, gl, carry[s], geo.t0(s), geo.t1(s), adv + off, ret + off);
}

unsigned int blocks_for(int64_t work) {
  return static_cast<unsigned int>((work + kThreads - 1) / kThreads);
}

}  // namespace

void gae_cuda_launch(const at::Tensor& reward, const at::Tensor& value,
                     const at::Tensor& next_value, const at::Tensor& done,
                     const at::Tensor& terminal, double gamma, double lam, at::Tensor& adv,
                     at::Tensor& ret) {
  const c10::cuda::CUDAGuard guard(reward.device());
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const int64_t T = reward.size(-1);
  const int64_t rows = reward.numel() / T;
  int64_t n = 1;
  if (rows < kTargetSegments) {
    n = std::min({(kTargetSegments + rows - 1) / rows, (T + kMinSegment - 1) / kMinSegment,
                  kMaxSegmentsPerRow});
    n = std::max<int64_t>(n, 1);
  }
  const int64_t L = (T + n - 1) / n;
  n = (T + L - 1) / L;
  const Geometry geo{T, n, L, rows * n};

  AT_DISPATCH_FLOATING_TYPES(reward.scalar_type(), "gae_cuda", [&] {
    dispatch_mask(done.scalar_type(), [&](auto mask) {
      using mask_t = decltype(mask);
      const scalar_t g = static_cast<scalar_t>(gamma), gl = static_cast<scalar_t>(gamma * lam);
      at::Tensor head, open, carry;
      if (n > 1) {
        head = at::empty({geo.segments}, reward.options());
        open = at::empty({geo.segments}, reward.options().dtype(at::kBool));
        carry = at::empty({geo.segments}, reward.options());
      }
      scalar_t* head_p = n > 1 ? head.data_ptr<scalar_t>() : nullptr;
      bool* open_p = n > 1 ? open.data_ptr<bool>() : nullptr;
      scan_kernel<scalar_t, mask_t><<<blocks_for(geo.segments), kThreads, 0, stream>>>(
          reward.data_ptr<scalar_t>(), value.data_ptr<scalar_t>(),
          next_value.data_ptr<scalar_t>(), done.data_ptr<mask_t>(), terminal.data_ptr<mask_t>(),
          g, gl, geo, adv.data_ptr<scalar_t>(), ret.data_ptr<scalar_t>(), head_p, open_p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (n == 1) return;
      const scalar_t decay = static_cast<scalar_t>(std::pow(gamma * lam, double(L)));
      carry_kernel<scalar_t><<<blocks_for(rows), kThreads, 0, stream>>>(
          head_p, open_p, decay, rows, n, carry.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      fix_kernel<scalar_t, mask_t><<<blocks_for(geo.segments), kThreads, 0, stream>>>(
          done.data_ptr<mask_t>(), gl, geo, carry.data_ptr<scalar_t>(),
          adv.data_ptr<scalar_t>(), ret.data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
}

}  // namespace vgm2p
