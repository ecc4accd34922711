// The GAE reverse scan, written once for the CPU (gae.cpp) and CUDA (gae_cuda.cu) kernels.
//
//   delta_t = r_t + gamma (1 - terminal_t) V'_t - V_t
//   A_t     = delta_t + gamma lam (1 - done_t) A_{t+1},     G_t = A_t + V_t
//
// A mask counts as set when it is non-zero. Both masks act by selection, not by multiplying
// with 0, so a NaN/inf in one episode never reaches another (0 * NaN would be NaN): at a
// terminal the bootstrap V'_t is not read into the sum, at a done the trace A_{t+1} is not.
//
// A row of length T is cut into segments [t0, t1) so that few long rows still fill every
// thread (two-pass scan):
//   pass 1 (parallel over segments)  scan_segment: local A with zero carry-in, plus the
//                                    segment's head A_{t0} and whether no done cuts it;
//   carry  (sequential per row)      carry_row: full A at each segment's start, right to left;
//   pass 2 (parallel over segments)  fix_segment: add gl^(t1-t) * carry to the tail of the
//                                    segment that the trace from t1 reaches (after its last done).
// With one segment per row (many rows: >= 3 x threads on CPU, >= 65536 on CUDA) only pass 1
// runs.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define VGM2P_HD __host__ __device__ __forceinline__
#else
#define VGM2P_HD inline
#endif

namespace vgm2p {

template <typename mask_t>
VGM2P_HD bool is_set(mask_t m) {
  return m != mask_t(0);
}

// One step of the recurrence, shared by every kernel. The selections (not multiplications by
// 1 - mask) keep a NaN/inf out of other episodes.
template <typename scalar_t, typename mask_t>
VGM2P_HD scalar_t gae_delta(scalar_t r, scalar_t v, scalar_t nv, mask_t term, scalar_t gamma) {
  return r + (is_set(term) ? scalar_t(0) : gamma * nv) - v;
}

template <typename scalar_t>
VGM2P_HD scalar_t gae_step(scalar_t delta, bool cut, scalar_t gl, scalar_t next) {
  return cut ? delta : delta + gl * next;
}

// Pass 1 on [t0, t1) of one contiguous row: one CUDA thread's work, and the CPU kernel's for
// segments it cannot interleave (it interleaves K equal-length segments otherwise). Local A with zero carry-in; returns true when no
// done lies in [t0, t1), that is when the carry from t1 reaches t0 (adv[t0] is then the head).
template <typename scalar_t, typename mask_t>
VGM2P_HD bool scan_segment(const scalar_t* __restrict__ r, const scalar_t* __restrict__ v,
                           const scalar_t* __restrict__ nv, const mask_t* __restrict__ done,
                           const mask_t* __restrict__ term, scalar_t gamma, scalar_t gl,
                           int64_t t0, int64_t t1, scalar_t* __restrict__ adv,
                           scalar_t* __restrict__ ret) {
  scalar_t acc = scalar_t(0);
  bool open = true;
  for (int64_t t = t1 - 1; t >= t0; --t) {
    const scalar_t value = v[t];
    const bool cut = is_set(done[t]);
    acc = gae_step(gae_delta(r[t], value, nv[t], term[t], gamma), cut, gl, acc);
    open = open && !cut;
    adv[t] = acc;
    ret[t] = acc + value;
  }
  return open;
}

// Carry pass over the n segments of one row, right to left. head[c] = local A at segment c's
// start, open[c] = no done in segment c, decay = gl^L for the full-length segments (the last
// segment, possibly shorter, never carries into anything). Writes carry[c] = full A at the
// start of segment c + 1 (0 for the last segment).
template <typename scalar_t>
VGM2P_HD void carry_row(const scalar_t* head, const bool* open, scalar_t decay, int64_t n,
                        scalar_t* carry) {
  scalar_t next = scalar_t(0);
  for (int64_t c = n - 1; c >= 0; --c) {
    carry[c] = next;
    next = open[c] ? head[c] + decay * next : head[c];
  }
}

// Pass 2 on [t0, t1): add the carry from t1 along the trace until the segment's last done.
// No early exit when gl^k underflows: a NaN carry must still reach every step it touches, as it
// does in the sequential recurrence.
template <typename scalar_t, typename mask_t>
VGM2P_HD void fix_segment(const mask_t* __restrict__ done, scalar_t gl, scalar_t carry,
                          int64_t t0, int64_t t1, scalar_t* __restrict__ adv,
                          scalar_t* __restrict__ ret) {
  scalar_t m = scalar_t(1);
  for (int64_t t = t1 - 1; t >= t0 && !is_set(done[t]); --t) {
    m *= gl;
    adv[t] += m * carry;
    ret[t] += m * carry;
  }
}

}  // namespace vgm2p
