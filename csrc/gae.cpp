// vgm2p_fast::gae: batched GAE and lambda-returns over (..., T), time last (DESIGN 1.1).
// Schema, input checks, layout preparation and the CPU kernel; the CUDA kernels are in
// gae_cuda.cu and share the scan itself (gae_scan.h).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <tuple>


#include "gae.h"
#include "gae_scan.h"

namespace vgm2p {
namespace {

// Rows are never cut into segments shorter than this: a segment costs a carry step and a fix-up
// loop, and ~4k steps take one thread about 10 microseconds anyway.
constexpr int64_t kMinSegment = 4096;
// Rows a CPU thread scans together, and how far ahead it prefetches (scan_rows_interleaved).
constexpr int kInterleave = 3;
constexpr int64_t kPrefetchBytes = 512;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

bool is_mask_dtype(at::ScalarType t) {
  return t == at::kBool || t == at::kByte || t == at::kFloat || t == at::kDouble;
}

void check_inputs(const at::Tensor& reward, const at::Tensor& value, const at::Tensor& next_value,
                  const at::Tensor& done, const at::Tensor& terminal, double gamma, double lam) {
  TORCH_CHECK(reward.dim() >= 1, "gae: reward must have at least 1 dimension (time last), found ",
              reward.dim());
  const at::ScalarType vt = reward.scalar_type();
  TORCH_CHECK(vt == at::kFloat || vt == at::kDouble,
              "gae: reward must be float32 or float64, found ", vt);
  const std::pair<const char*, const at::Tensor*> others[] = {
      {"value", &value}, {"next_value", &next_value}, {"done", &done}, {"terminal", &terminal}};
  for (const auto& [name, x] : others) {
    TORCH_CHECK(x->sizes() == reward.sizes(), "gae: ", name, " must have the shape of reward ",
                reward.sizes(), ", found ", x->sizes());
    TORCH_CHECK(x->device() == reward.device(), "gae: ", name, " must be on ", reward.device(),
                " like reward, found ", x->device());
  }
  TORCH_CHECK(value.scalar_type() == vt, "gae: value must have reward's dtype ", vt, ", found ",
              value.scalar_type());
  TORCH_CHECK(next_value.scalar_type() == vt, "gae: next_value must have reward's dtype ", vt,
              ", found ", next_value.scalar_type());
  TORCH_CHECK(is_mask_dtype(done.scalar_type()),
              "gae: done must be bool, uint8, float32 or float64, found ", done.scalar_type());
  TORCH_CHECK(is_mask_dtype(terminal.scalar_type()),
              "gae: terminal must be bool, uint8, float32 or float64, found ",
              terminal.scalar_type());
  TORCH_CHECK(gamma >= 0.0 && gamma <= 1.0, "gae: gamma must be in [0, 1], found ", gamma);
  TORCH_CHECK(lam >= 0.0 && lam <= 1.0, "gae: lam must be in [0, 1], found ", lam);
}

// Contiguous masks of one dtype: bool is read as uint8 (same bytes); two different dtypes meet
// at float32/float64 so that "non-zero" keeps its meaning (0.5 stays set, uint8 2 stays set).
std::pair<at::Tensor, at::Tensor> prepare_masks(const at::Tensor& done, const at::Tensor& terminal) {
  auto as_stored = [](const at::Tensor& m) {
    at::Tensor c = m.contiguous();
    return c.scalar_type() == at::kBool ? c.view(at::kByte) : c;
  };
  at::Tensor d = as_stored(done), t = as_stored(terminal);
  if (d.scalar_type() != t.scalar_type()) {
    const bool dbl = d.scalar_type() == at::kDouble || t.scalar_type() == at::kDouble;
    const at::ScalarType common = dbl ? at::kDouble : at::kFloat;
    d = d.to(common);
    t = t.to(common);
  }
  return {d, t};
}

// Pass 1 on K segments of equal length len (flat starts base[k]): K independent recurrences
// interleaved step by step, which hides the multiply-add latency of one chain, with software
// prefetches kPrefetchBytes ahead because the scan walks memory backwards. Measured on the
// 2-core dev machine (loaded by other jobs), (4032, 1008) float32, one thread, ns a step:
// in cache K=1 1.47, K=2 0.78, K=3 0.81, K=4 0.89; out of cache K=2 4.7 without prefetch,
// K=2 1.6-1.9 and K=3 1.5-2.2 with it (memcpy of the 14 input bytes a step: 0.46).
// Segments may differ in length (a row's last one): the K chains run interleaved over the
// shortest length, counted from each segment's end, and the longer ones finish alone.
template <int K, typename scalar_t, typename mask_t>
void scan_rows_interleaved(const scalar_t* __restrict__ r, const scalar_t* __restrict__ v,
                           const scalar_t* __restrict__ nv, const mask_t* __restrict__ done,
                           const mask_t* __restrict__ term, scalar_t gamma, scalar_t gl,
                           const int64_t* base, const int64_t* len, scalar_t* __restrict__ adv,
                           scalar_t* __restrict__ ret, bool* open) {
  constexpr int64_t line = 64 / sizeof(scalar_t);  // steps per cache line of a value array
  constexpr int64_t ahead = kPrefetchBytes / sizeof(scalar_t);
  scalar_t acc[K];
  bool reach[K];
  int64_t last[K];  // flat index of each segment's last step
  int64_t common = len[0];
  for (int k = 0; k < K; ++k) {
    acc[k] = scalar_t(0);
    reach[k] = true;
    last[k] = base[k] + len[k] - 1;
    common = std::min(common, len[k]);
  }
  auto step = [&](int k, int64_t i) {
    const scalar_t value = v[i];
    const bool cut = is_set(done[i]);
    acc[k] = gae_step(gae_delta(r[i], value, nv[i], term[i], gamma), cut, gl, acc[k]);
    reach[k] = reach[k] && !cut;
    adv[i] = acc[k];
    ret[i] = acc[k] + value;
  };
  for (int64_t j = 0; j < common; ++j) {
    if ((last[0] - j) % line == 0) {
      for (int k = 0; k < K; ++k) {
        const int64_t i = last[k] - j - ahead;
        if (i < 0) continue;  // before the first row; past a segment's start is the next pack
        __builtin_prefetch(r + i);
        __builtin_prefetch(v + i);
        __builtin_prefetch(nv + i);
        __builtin_prefetch(done + i);
        __builtin_prefetch(term + i);
        __builtin_prefetch(adv + i, 1);
        __builtin_prefetch(ret + i, 1);
      }
    }
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) step(k, last[k] - j);
  }
  for (int k = 0; k < K; ++k) {
    for (int64_t i = last[k] - common; i >= base[k]; --i) step(k, i);
    open[k] = reach[k];
  }
}

template <typename scalar_t, typename mask_t>
void gae_cpu_kernel(const at::Tensor& reward, const at::Tensor& value,
                    const at::Tensor& next_value, const at::Tensor& done,
                    const at::Tensor& terminal, double gamma, double lam, at::Tensor& adv,
                    at::Tensor& ret) {
  constexpr int K = kInterleave;
  const int64_t T = reward.size(-1);
  const int64_t rows = reward.numel() / T;
  // Split rows into n segments only when there are too few rows to give every thread K chains
  // (a flat dataset is one row).
  const int64_t want = static_cast<int64_t>(at::get_num_threads()) * K;
  int64_t n = rows >= want ? 1 : std::min(ceil_div(want, rows), ceil_div(T, kMinSegment));
  n = std::max<int64_t>(n, 1);
  const int64_t L = ceil_div(T, n);
  n = ceil_div(T, L);
  const int64_t segments = rows * n;
  // Segment s: flat start index and length (the last segment of a row may be shorter).
  auto geometry = [&](int64_t s, int64_t* base) {
    const int64_t t0 = (s % n) * L;
    *base = (s / n) * T + t0;
    return std::min(L, T - t0);
  };

  const scalar_t g = static_cast<scalar_t>(gamma);
  const scalar_t gl = static_cast<scalar_t>(gamma * lam);
  const scalar_t* r = reward.data_ptr<scalar_t>();
  const scalar_t* v = value.data_ptr<scalar_t>();
  const scalar_t* nv = next_value.data_ptr<scalar_t>();
  const mask_t* d = done.data_ptr<mask_t>();
  const mask_t* term = terminal.data_ptr<mask_t>();
  scalar_t* a = adv.data_ptr<scalar_t>();
  scalar_t* rt = ret.data_ptr<scalar_t>();

  std::unique_ptr<scalar_t[]> head(new scalar_t[segments]);
  std::unique_ptr<bool[]> open(new bool[segments]);
  // Pack p scans segments p, p + packs, p + 2 packs, ... and a task scans its packs from the
  // last to the first: the prefetches that run past a segment's start then land on the end of
  // segment s - 1, which is where the next pack starts (~13% of the steps of a 1000-step row).
  const int64_t packs = ceil_div(segments, K);
  // About at::internal::GRAIN_SIZE (32768) steps per task.
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (L * K));
  at::parallel_for(0, packs, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = end - 1; p >= begin; --p) {
      int64_t base[K], len[K], seg[K];
      int count = 0;
      for (int64_t s = p; s < segments && count < K; s += packs, ++count) {
        seg[count] = s;
        len[count] = geometry(s, &base[count]);
      }
      bool open_k[K];
      if (count == K) {
        scan_rows_interleaved<K>(r, v, nv, d, term, g, gl, base, len, a, rt, open_k);
      } else {
        // Leftover segments run the CUDA kernels' per-segment scan, which the CPU tests
        // thereby cover too.
        for (int j = 0; j < count; ++j) {
          const int64_t o = base[j];
          open_k[j] = scan_segment(r + o, v + o, nv + o, d + o, term + o, g, gl, int64_t(0),
                                   len[j], a + o, rt + o);
        }
      }
      for (int j = 0; j < count; ++j) {
        open[seg[j]] = open_k[j];
        head[seg[j]] = a[base[j]];
      }
    }
  });
  if (n == 1) return;
  std::unique_ptr<scalar_t[]> carry(new scalar_t[segments]);
  const scalar_t decay = static_cast<scalar_t>(std::pow(gamma * lam, static_cast<double>(L)));
  for (int64_t row = 0; row < rows; ++row) {
    carry_row(head.get() + row * n, open.get() + row * n, decay, n, carry.get() + row * n);
  }
  at::parallel_for(0, segments, 1, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      if (s % n == n - 1) continue;  // the last segment of a row has nothing to its right
      int64_t base;
      const int64_t len = geometry(s, &base);
      fix_segment(d + base, gl, carry[s], int64_t(0), len, a + base, rt + base);
    }
  });
}

std::tuple<at::Tensor, at::Tensor> gae(const at::Tensor& reward, const at::Tensor& value,
                                       const at::Tensor& next_value, const at::Tensor& done,
                                       const at::Tensor& terminal, double gamma, double lam) {
  check_inputs(reward, value, next_value, done, terminal, gamma, lam);
  // Non-contiguous views are copied once: the scan streams each row with unit stride.
  const at::Tensor r = reward.contiguous(), v = value.contiguous(), nv = next_value.contiguous();
  const auto [d, term] = prepare_masks(done, terminal);
  at::Tensor adv = at::empty(reward.sizes(), reward.options());
  at::Tensor ret = at::empty(reward.sizes(), reward.options());
  if (reward.numel() == 0) return {adv, ret};
  if (reward.is_cuda()) {
#ifdef VGM2P_WITH_CUDA
    gae_cuda_launch(r, v, nv, d, term, gamma, lam, adv, ret);
    return {adv, ret};
#else
    TORCH_CHECK(false, "gae: vgm2p_fast._C was built without CUDA kernels");
#endif
  }
  AT_DISPATCH_FLOATING_TYPES(r.scalar_type(), "gae_cpu", [&] {
    dispatch_mask(d.scalar_type(), [&](auto mask) {
      gae_cpu_kernel<scalar_t, decltype(mask)>(r, v, nv, d, term, gamma, lam, adv, ret);
    });
  });
  return {adv, ret};
}

}  // namespace
}  // namespace vgm2p

TORCH_LIBRARY(vgm2p_fast, m) {
  m.def(
      "gae(Tensor reward, Tensor value, Tensor next_value, Tensor done, Tensor terminal, "
      "float gamma, float lam) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(vgm2p_fast, CPU, m) { m.impl("gae", &vgm2p::gae); }

#ifdef VGM2P_WITH_CUDA
TORCH_LIBRARY_IMPL(vgm2p_fast, CUDA, m) { m.impl("gae", &vgm2p::gae); }
#endif
