// Fused CPU loops for the Elman, GRU and LSTM cells (targetprop.kernels builds this file on first use).
//
// Recursions, each a block of rows times a small matrix per step:
//   Elman forward:   h_t = a(u_t + h_{t-1} W_hh^T)               (u_t = x_t W_ih^T + b, precomputed)
//   Elman backward:  lam[t-1] += (lam[t] (*|/) factor[t-1]) @ mat,  t = T..1
//   GRU backward:    lam[t-1] += z_t * lam[t] + [s_r, s_z, s_n](lam[t], gates_t) @ mat (3p x p)
//   LSTM backward:   lam_h[t-1] += [s_i, s_f, s_g, s_o](lam[t], gates_t) @ mat (4p x p),
//                    lam_c[t-1] += f_t * (lam_c[t] + o_t tanh'(c_t) lam_h[t])
// The Elman backward covers BP's adjoint (factor a'(u_t), mat W_hh), linearized TP (factor a'(u_t)
// floored and divided, mat M^T) and the through-time pass; the GRU and LSTM ones BP (mat W_hh) and
// their TP rules (mat [M_r; M_z; M_n]^T, [M_i; M_f; M_g; M_o]^T), see targetprop/cells/gru.py and
// lstm.py. All of them share one loop (back_in_time); the forwards of the gated cells keep every
// step's gates for the backward.
//
// Products: ROWS rows at a time times a tile of K vector-widths of the matrix, all ROWS x K
// outputs held in registers over the whole reduction, so each matrix load serves ROWS rows;
// column tails go through narrower vectors, then scalars. No per-step dispatch or allocation.
// Backward rows are independent over the whole recursion, so they are split across threads once.
// On x86-64 an AVX-512, an AVX2+FMA and a baseline build of the loops are in the binary and the
// widest the CPU has is chosen at run time (`set_isa` narrows it, for tests and benchmarks).
//
// Denormal floats: far back in time the displacements of TP pass through the subnormal range
// before they underflow to zero, and x86 arithmetic on subnormals is up to ~100x slower. Every
// entry point sets flush-to-zero and denormals-are-zero on its thread for its own duration and
// restores the caller's mode after (FlushDenormals). Everywhere, a step whose scaled
// displacement has no entry of normal magnitude is skipped: the same result as flushing, and
// the exact early exit on CPUs without such a mode.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <xmmintrin.h>
#define TP_HAVE_MXCSR 1
#endif

#define TP_INLINE inline __attribute__((always_inline))
// the same for a lambda (inlined into the instruction set's build that calls it)
#define TP_INLINE_LAMBDA __attribute__((always_inline))

namespace {

// FTZ | DAZ on this thread while alive; the caller's control bits come back on destruction
// (status flags raised meanwhile are kept).
// Off only when the library is told not to flush (targetprop.fpmode.set_flush_denormals).
bool flush_enabled = true;

class FlushDenormals {
 public:
  FlushDenormals() {
#ifdef TP_HAVE_MXCSR
    saved_ = _mm_getcsr();
    if (flush_enabled) _mm_setcsr(saved_ | kBits);
#endif
  }
  ~FlushDenormals() {
#ifdef TP_HAVE_MXCSR
    _mm_setcsr((_mm_getcsr() & ~kBits) | (saved_ & kBits));
#endif
  }
  FlushDenormals(const FlushDenormals&) = delete;
  FlushDenormals& operator=(const FlushDenormals&) = delete;

 private:
  static constexpr unsigned kBits = 0x8040;  // FTZ (bit 15) | DAZ (bit 6)
  unsigned saved_ = 0;
};

bool flush_mode_available() {
#ifdef TP_HAVE_MXCSR
  return true;
#else
  return false;
#endif
}

// Whether this thread currently flushes denormals (both FTZ and DAZ set).
bool denormals_flushed() {
#ifdef TP_HAVE_MXCSR
  return (_mm_getcsr() & 0x8040) == 0x8040;
#else
  return false;
#endif
}

constexpr int64_t ROWS = 4;

template <typename T, int BYTES>
struct Vec {
  typedef T type __attribute__((vector_size(BYTES)));
  static constexpr int N = BYTES / sizeof(T);
};

template <typename V, typename T>
TP_INLINE V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename V, typename T>
TP_INLINE void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof v);
}

// out[r, j0 : j0 + K*N] += s[r, 0:n] @ mat[0:n, j0 : j0 + K*N] for R rows (row strides ldo, lds;
// mat row-major with row length ldm); R*K accumulators in registers, each matrix load used R times.
template <typename T, int BYTES, int R, int K>
TP_INLINE void tile(T* __restrict out, int64_t ldo, const T* __restrict s, int64_t lds, const T* __restrict mat,
                    int64_t n, int64_t ldm, int64_t j0) {
  using V = typename Vec<T, BYTES>::type;
  constexpr int N = Vec<T, BYTES>::N;
  V acc[R][K];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[r][k] = vload<V>(out + r * ldo + j0 + k * N);
  for (int64_t i = 0; i < n; ++i) {
    const T* row = mat + i * ldm + j0;
    V m[K];
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) m[k] = vload<V>(row + k * N);
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const V si = s[r * lds + i] - V{};  // broadcast
#pragma GCC unroll 16
      for (int k = 0; k < K; ++k) acc[r][k] += si * m[k];
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) vstore(out + r * ldo + j0 + k * N, acc[r][k]);
}

// Columns [j0, p) narrower than one BYTES-wide vector: halve the width down to 16 bytes, then scalars.
template <typename T, int BYTES, int R>
TP_INLINE void column_tail(T* out, int64_t ldo, const T* s, int64_t lds, const T* mat, int64_t n, int64_t p,
                           int64_t j0) {
  if constexpr (BYTES > 16) {
    constexpr int H = Vec<T, BYTES / 2>::N;
    if (j0 + H <= p) {
      tile<T, BYTES / 2, R, 1>(out, ldo, s, lds, mat, n, p, j0);
      j0 += H;
    }
    column_tail<T, BYTES / 2, R>(out, ldo, s, lds, mat, n, p, j0);
  } else {
    for (; j0 < p; ++j0)
      for (int r = 0; r < R; ++r) {
        T acc = out[r * ldo + j0];
        for (int64_t i = 0; i < n; ++i) acc += s[r * lds + i] * mat[i * p + j0];
        out[r * ldo + j0] = acc;
      }
  }
}

// out[r, 0:p] += s[r, 0:n] @ mat (n x p, row-major) for R rows.
template <typename T, int BYTES, int K, int R>
TP_INLINE void rows_times_mat(T* out, int64_t ldo, const T* s, int64_t lds, const T* mat, int64_t n, int64_t p) {
  constexpr int N = Vec<T, BYTES>::N;
  int64_t j0 = 0;
  for (; j0 + K * N <= p; j0 += K * N) tile<T, BYTES, R, K>(out, ldo, s, lds, mat, n, p, j0);
  for (; j0 + N <= p; j0 += N) tile<T, BYTES, R, 1>(out, ldo, s, lds, mat, n, p, j0);
  column_tail<T, BYTES, R>(out, ldo, s, lds, mat, n, p, j0);
}

// The same for any number of rows: blocks of ROWS, then one row at a time.
template <typename T, int BYTES, int K>
TP_INLINE void block_times_mat(T* out, int64_t ldo, const T* s, int64_t lds, const T* mat, int64_t rows,
                               int64_t n, int64_t p) {
  int64_t r = 0;
  for (; r + ROWS <= rows; r += ROWS)
    rows_times_mat<T, BYTES, K, ROWS>(out + r * ldo, ldo, s + r * lds, lds, mat, n, p);
  for (; r < rows; ++r) rows_times_mat<T, BYTES, 2 * K, 1>(out + r * ldo, ldo, s + r * lds, lds, mat, n, p);
}

// Whether any entry has normal magnitude (any nonzero one when not flushing): a step without
// one adds nothing once flushed.
template <typename T>
TP_INLINE bool any_normal(const T* s, int64_t n) {
  const T least = flush_enabled ? std::numeric_limits<T>::min() : std::numeric_limits<T>::denorm_min();
  int any = 0;  // an int, not a bool: GCC vectorizes this reduction
  for (int64_t i = 0; i < n; ++i) any |= std::abs(s[i]) >= least;
  return any != 0;
}

// The shape of every backward recursion, rows b0..b1 for t = T..1 on lam (T+1, B, width), width
// the state's (S·p, h first): per block of ROWS rows, `scale(t, row, lam_t row, s row, lam_{t-1}
// row)` writes the row's n scaled displacements into s and adds the cell's direct paths into
// lam_{t-1}; then lam_{t-1}[:, 0:p] += s @ mat (n x p) for the block, skipped when s is negligible.
template <typename T, int BYTES, int K, typename Scale>
TP_INLINE void back_in_time(T* lam, int64_t width, const T* mat, int64_t n, int64_t b0, int64_t b1,
                            int64_t steps, int64_t B, int64_t p, Scale scale) {
  const int64_t stride = B * width;
  std::vector<T> tmp(ROWS * n);
  for (int64_t b = b0; b < b1; b += ROWS) {
    const int64_t rows = std::min(ROWS, b1 - b);
    for (int64_t t = steps; t >= 1; --t) {
      T* dst = lam + (t - 1) * stride + b * width;
      for (int64_t rr = 0; rr < rows; ++rr)
        scale(t, b + rr, lam + t * stride + (b + rr) * width, tmp.data() + rr * n, dst + rr * width);
      if (any_normal(tmp.data(), rows * n)) block_times_mat<T, BYTES, K>(dst, width, tmp.data(), n, mat, rows, n, p);
    }
  }
}

// Elman: s = lam_t * factor[t-1], or lam_t / max(factor[t-1], floor) with divide; no direct path.
template <typename T, int BYTES, int K>
TP_INLINE void recursion_rows(T* lam, const T* factor, const T* mat, int64_t b0, int64_t b1, int64_t steps,
                              int64_t B, int64_t p, bool divide, T floor) {
  back_in_time<T, BYTES, K>(lam, p, mat, p, b0, b1, steps, B, p,
                            [&](int64_t t, int64_t row, const T* cur, T* s, T*) TP_INLINE_LAMBDA {
    const T* f = factor + ((t - 1) * B + row) * p;
    if (divide) {
      for (int64_t i = 0; i < p; ++i) s[i] = cur[i] / std::max(f[i], floor);
    } else {
      for (int64_t i = 0; i < p; ++i) s[i] = cur[i] * f[i];
    }
  });
}

// out[b, 0:width] += h[b, 0:n] @ wt (n x width) for each of B rows (row strides ldo, ldh)
template <typename T, int BYTES, int K>
TP_INLINE void forward_step(T* out, int64_t ldo, const T* h, int64_t ldh, const T* wt, int64_t B, int64_t n,
                            int64_t width) {
  block_times_mat<T, BYTES, K>(out, ldo, h, ldh, wt, B, n, width);
}

// Calls f(std::integral_constant<bool, A>, std::integral_constant<bool, B>) for the run-time
// flags a, b: each combination a build of its own, its branches out of the inner loops.
template <typename F>
TP_INLINE void with_flags(bool a, bool b, const F& f) {
  using Y = std::true_type;
  using N = std::false_type;
  if (a) {
    if (b) f(Y{}, Y{}); else f(Y{}, N{});
  } else {
    if (b) f(N{}, Y{}); else f(N{}, N{});
  }
}

// One GRU row at step t: gates [r, z, q, n] (4p), h = h_{t-1}, l = lam_t, into s (3p), d += z l
// (lam_{t-1}) and, with EMIT, g (4p). With dn = (1 - n^2)(1 - z):
//   BP:          s = [r(1-r) q dn, z(1-z)(h-n), r dn] * l
//   linearized:  s = [q dn / max(r(1-r), floor), (h-n) / max(z(1-z), floor), r dn] * l
// and g = [r(1-r) q dn, z(1-z)(h-n), r dn, dn] * l: the cell's pre-activation adjoints.
template <typename T, bool LIN, bool EMIT>
TP_INLINE void gru_row(const T* __restrict gt, const T* __restrict h, const T* __restrict l, T* __restrict s,
                       T* __restrict d, T* __restrict g, int64_t p, T floor) {
  const T *r = gt, *z = gt + p, *q = gt + 2 * p, *n = gt + 3 * p;
#pragma GCC ivdep  // the p-blocks of s and of g never overlap: no alias checks, which would stop vectorization
  for (int64_t i = 0; i < p; ++i) {
    const T dn = (T(1) - n[i] * n[i]) * (T(1) - z[i]);
    const T dr = r[i] * (T(1) - r[i]), dz = z[i] * (T(1) - z[i]);
    const T br = dr * q[i] * dn * l[i], bz = dz * (h[i] - n[i]) * l[i], bn = r[i] * dn * l[i];
    if constexpr (EMIT) {
      g[i] = br;
      g[p + i] = bz;
      g[2 * p + i] = bn;
      g[3 * p + i] = dn * l[i];
    }
    if constexpr (LIN) {
      s[i] = q[i] * dn * l[i] / std::max(dr, floor);
      s[p + i] = (h[i] - n[i]) * l[i] / std::max(dz, floor);
    } else {
      s[i] = br;
      s[p + i] = bz;
    }
    s[2 * p + i] = bn;
    d[i] += z[i] * l[i];
  }
}

// GRU, rows b0..b1 for t = T..1 (gru_row). gates: (T, B, 4, p) holding r, z, q = h W_hn^T + b_hn, n
// per step; h0 (B, p) and out (T, B, p) give h_{t-1}; g (T, B, 4, p) or null.
template <typename T, int BYTES, int K>
TP_INLINE void gru_rows(T* lam, const T* gates, const T* h0, const T* out, const T* mat, T* g, int64_t b0,
                        int64_t b1, int64_t steps, int64_t B, int64_t p, bool linearized, T floor) {
  with_flags(linearized, g != nullptr, [&](auto lin, auto emit) TP_INLINE_LAMBDA {
    back_in_time<T, BYTES, K>(lam, p, mat, 3 * p, b0, b1, steps, B, p,
                              [&](int64_t t, int64_t row, const T* cur, T* s, T* d) TP_INLINE_LAMBDA {
      const int64_t at = (t - 1) * B + row;
      gru_row<T, decltype(lin)::value, decltype(emit)::value>(
          gates + at * 4 * p, t == 1 ? h0 + row * p : out + (at - B) * p, cur, s, d, emit ? g + at * 4 * p : nullptr,
          p, floor);
    });
  });
}

// One LSTM row at step t: gates [i, f, g, o, tanh c_t] (5p), c = c_{t-1}, l = [lam_h, lam_c]_t, into
// s (4p), dc += f cs (lam_c of t-1) and, with EMIT, g (4p). With the effective cell displacement
// cs = lam_c + o(1 - tanh^2 c_t) lam_h:
//   BP:          s = [g i(1-i) cs, c f(1-f) cs, i(1-g^2) cs, tanh(c_t) o(1-o) lam_h]
//   linearized:  the same with each gate derivative divided instead, floored (sigmoid' at fs,
//                tanh' at ft): [g/max(i(1-i),fs) cs, c/max(f(1-f),fs) cs, ...]
// and g = BP's s: the pre-activation adjoints.
template <typename T, bool LIN, bool EMIT>
TP_INLINE void lstm_row(const T* __restrict gt, const T* __restrict c, const T* __restrict l, T* __restrict s,
                        T* __restrict dc, T* __restrict g, int64_t p, T fs, T ft) {
  const T *gi = gt, *gf = gt + p, *gg = gt + 2 * p, *go = gt + 3 * p, *tc = gt + 4 * p;
  const T *lh = l, *lc = l + p;
#pragma GCC ivdep  // as gru_row's
  for (int64_t k = 0; k < p; ++k) {
    const T cs = lc[k] + go[k] * (T(1) - tc[k] * tc[k]) * lh[k];
    const T di = gi[k] * (T(1) - gi[k]), df = gf[k] * (T(1) - gf[k]);
    const T dg = T(1) - gg[k] * gg[k], dout = go[k] * (T(1) - go[k]);
    const T bi = gg[k] * di * cs, bf = c[k] * df * cs, bg = gi[k] * dg * cs, bo = tc[k] * dout * lh[k];
    if constexpr (EMIT) {
      g[k] = bi;
      g[p + k] = bf;
      g[2 * p + k] = bg;
      g[3 * p + k] = bo;
    }
    if constexpr (LIN) {
      s[k] = gg[k] / std::max(di, fs) * cs;
      s[p + k] = c[k] / std::max(df, fs) * cs;
      s[2 * p + k] = gi[k] / std::max(dg, ft) * cs;
      s[3 * p + k] = tc[k] / std::max(dout, fs) * lh[k];
    } else {
      s[k] = bi;
      s[p + k] = bf;
      s[2 * p + k] = bg;
      s[3 * p + k] = bo;
    }
    dc[k] += gf[k] * cs;
  }
}

// LSTM, rows b0..b1 for t = T..1 on lam (T+1, B, 2p) = [lam_h, lam_c] (lstm_row). gates: (T, B, 5, p)
// holding i, f, g, o, tanh(c_t) per step; h0 (B, 2p) and out (T, B, 2p) give c_{t-1}; g (T, B, 4, p)
// or null.
template <typename T, int BYTES, int K>
TP_INLINE void lstm_rows(T* lam, const T* gates, const T* h0, const T* out, const T* mat, T* g, int64_t b0,
                         int64_t b1, int64_t steps, int64_t B, int64_t p, bool linearized, T fs, T ft) {
  with_flags(linearized, g != nullptr, [&](auto lin, auto emit) TP_INLINE_LAMBDA {
    back_in_time<T, BYTES, K>(lam, 2 * p, mat, 4 * p, b0, b1, steps, B, p,
                              [&](int64_t t, int64_t row, const T* cur, T* s, T* d) TP_INLINE_LAMBDA {
      const int64_t at = (t - 1) * B + row;
      const T* c = (t == 1 ? h0 + row * 2 * p : out + (at - B) * 2 * p) + p;
      lstm_row<T, decltype(lin)::value, decltype(emit)::value>(gates + at * 5 * p, c, cur, s, d + p,
                                                              emit ? g + at * 4 * p : nullptr, p, fs, ft);
    });
  });
}

// A (rows, cols) view of row stride ld at `data`, made without a dispatch (for ATen's vectorized
// sigmoid and tanh, single-threaded inside the parallel region over rows).
inline torch::Tensor rows_view(void* data, int64_t rows, int64_t cols, int64_t ld, const torch::Tensor& like) {
  return torch::from_blob(data, {rows, cols}, {ld, 1}, like.options());
}

// One LSTM forward step for `rows` rows: g (rows x 5p, row stride 5p) <- [i, f, g, o, tanh c'] from
// the input part, the bias (or null) and prev = [h, c] (row stride 2p); cur = [h', c'] (row
// stride 2p). The input part: with wi (W_ih^T, d x 4p), x (rows x d) times it here; without, x
// (rows x 4p) is x W_ih^T + b_ih already. `like` gives the dtype of the views the activations run on.
template <typename T, int BYTES, int K>
TP_INLINE void lstm_step(T* __restrict g, const T* __restrict x, const T* __restrict wi, int64_t d,
                         const T* __restrict bias, const T* prev, T* __restrict cur, const T* __restrict wt,
                         int64_t rows, int64_t p, const torch::Tensor& like) {
  const int64_t ldx = wi ? d : 4 * p;
  for (int64_t r = 0; r < rows; ++r) {
    T* __restrict gr = g + r * 5 * p;
    const T* __restrict xr = x + r * ldx;
    if (wi) {
      for (int64_t k = 0; k < 4 * p; ++k) gr[k] = bias ? bias[k] : T(0);
    } else {
      for (int64_t k = 0; k < 4 * p; ++k) gr[k] = xr[k] + (bias ? bias[k] : T(0));
    }
  }
  if (wi) block_times_mat<T, BYTES, K>(g, 5 * p, x, d, wi, rows, d, 4 * p);
  block_times_mat<T, BYTES, K>(g, 5 * p, prev, 2 * p, wt, rows, p, 4 * p);
  rows_view(g, rows, 2 * p, 5 * p, like).sigmoid_();  // i, f
  rows_view(g + 2 * p, rows, p, 5 * p, like).tanh_();  // g
  rows_view(g + 3 * p, rows, p, 5 * p, like).sigmoid_();  // o
  for (int64_t r = 0; r < rows; ++r) {  // c' = f c + i g, into the state and the tanh c slot
    T* __restrict gr = g + r * 5 * p;
    const T* __restrict c = prev + r * 2 * p + p;
    T* __restrict cr = cur + r * 2 * p + p;
#pragma GCC ivdep  // the p-blocks of a row of gates never overlap
    for (int64_t k = 0; k < p; ++k) cr[k] = gr[4 * p + k] = gr[p + k] * c[k] + gr[k] * gr[2 * p + k];
  }
  rows_view(g + 4 * p, rows, p, 5 * p, like).tanh_();
  for (int64_t r = 0; r < rows; ++r) {  // h' = o tanh c'
    const T* __restrict gr = g + r * 5 * p;
    T* __restrict hr = cur + r * 2 * p;
    for (int64_t k = 0; k < p; ++k) hr[k] = gr[4 * p + k] * gr[3 * p + k];
  }
}

// One build of the loops per instruction set: BYTES-wide vectors, K of them per tile.
#define TP_DEFINE(NAME, TARGET, BYTES, K)                                                                     \
  template <typename T>                                                                                       \
  TARGET void recursion_##NAME(T* l, const T* f, const T* m, int64_t b0, int64_t b1, int64_t steps, int64_t B, \
                               int64_t p, bool d, T fl) {                                                     \
    recursion_rows<T, BYTES, K>(l, f, m, b0, b1, steps, B, p, d, fl);                                         \
  }                                                                                                           \
  template <typename T>                                                                                       \
  TARGET void forward_##NAME(T* o, int64_t lo, const T* h, int64_t lh, const T* w, int64_t B, int64_t n,       \
                             int64_t width) {                                                                 \
    forward_step<T, BYTES, K>(o, lo, h, lh, w, B, n, width);                                                  \
  }                                                                                                           \
  template <typename T>                                                                                       \
  TARGET void gru_##NAME(T* l, const T* ga, const T* h0, const T* o, const T* m, T* g, int64_t b0, int64_t b1, \
                         int64_t steps, int64_t B, int64_t p, bool lin, T fl) {                               \
    gru_rows<T, BYTES, K>(l, ga, h0, o, m, g, b0, b1, steps, B, p, lin, fl);                                  \
  }                                                                                                           \
  template <typename T>                                                                                       \
  TARGET void lstm_##NAME(T* l, const T* ga, const T* h0, const T* o, const T* m, T* g, int64_t b0, int64_t b1, \
                          int64_t steps, int64_t B, int64_t p, bool lin, T fs, T ft) {                        \
    lstm_rows<T, BYTES, K>(l, ga, h0, o, m, g, b0, b1, steps, B, p, lin, fs, ft);                             \
  }                                                                                                           \
  template <typename T>                                                                                       \
  TARGET void lstm_step_##NAME(T* g, const T* x, const T* wi, int64_t d, const T* b, const T* prev, T* cur,      \
                               const T* wt, int64_t rows, int64_t p, const torch::Tensor& like) {             \
    lstm_step<T, BYTES, K>(g, x, wi, d, b, prev, cur, wt, rows, p, like);                                     \
  }

template <typename T>
struct Loops {
  void (*recursion)(T*, const T*, const T*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, T);
  void (*forward)(T*, int64_t, const T*, int64_t, const T*, int64_t, int64_t, int64_t);
  void (*gru)(T*, const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, T);
  void (*lstm)(T*, const T*, const T*, const T*, const T*, T*, int64_t, int64_t, int64_t, int64_t, int64_t, bool, T,
               T);
  void (*lstm_step)(T*, const T*, const T*, int64_t, const T*, const T*, T*, const T*, int64_t, int64_t,
                    const torch::Tensor&);
};
#define TP_LOOPS(NAME, T) \
  Loops<T>{recursion_##NAME<T>, forward_##NAME<T>, gru_##NAME<T>, lstm_##NAME<T>, lstm_step_##NAME<T>}

TP_DEFINE(base, , 16, 2)
#if defined(__x86_64__) && defined(__GNUC__)
TP_DEFINE(avx2, __attribute__((target("avx2,fma"))), 32, 2)
TP_DEFINE(avx512, __attribute__((target("avx512f,avx512vl,avx2,fma"))), 64, 4)
const char* const ISA_NAMES[] = {"base", "avx2", "avx512"};
int widest_isa() {
  static const int isa = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") ? 2
                         : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")      ? 1
                                                                                                : 0;
  return isa;
}
template <typename T>
Loops<T> loops_for(int isa) {
  return isa == 2 ? TP_LOOPS(avx512, T) : isa == 1 ? TP_LOOPS(avx2, T) : TP_LOOPS(base, T);
}
#else
const char* const ISA_NAMES[] = {"base"};
int widest_isa() { return 0; }
template <typename T>
Loops<T> loops_for(int) {
  return TP_LOOPS(base, T);
}
#endif

int active_isa = widest_isa();

template <typename T>
Loops<T> loops() {
  return loops_for<T>(active_isa);
}

std::string isa() { return ISA_NAMES[active_isa]; }

// Use the loops built for `name` ("base", "avx2", "avx512"), if this CPU has it; returns the
// one in use after the call.
std::string set_isa(const std::string& name) {
  for (int i = 0; i <= widest_isa(); ++i)
    if (name == ISA_NAMES[i]) active_isa = i;
  TORCH_CHECK(name == ISA_NAMES[active_isa], "set_isa: ", name, " is not available on this CPU (widest: ",
              ISA_NAMES[widest_isa()], ")");
  return isa();
}

// Checks of an entry point's argument: on the CPU, contiguous, float32/float64 of `dtype`, of
// `shape`; errors name the entry point and the argument.
void check(const char* fn, const torch::Tensor& t, const char* name, c10::IntArrayRef shape, c10::ScalarType dtype) {
  TORCH_CHECK(t.device().is_cpu(), fn, ": ", name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), fn, ": ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, fn, ": ", name,
              " must be float32 or float64");
  TORCH_CHECK(t.scalar_type() == dtype, fn, ": dtypes differ (", name, " is ", t.scalar_type(), ", not ", dtype, ")");
  TORCH_CHECK(t.sizes() == shape, fn, ": ", name, " has shape ", t.sizes(), ", expected ", shape);
}

// The sizes of `t`, checked to be `dim` of them.
c10::IntArrayRef sizes(const char* fn, const torch::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, fn, ": ", name, " must have ", dim, " dimensions, got ", t.dim());
  return t.sizes();
}

// Rows per parallel chunk: enough work per thread to pay for the split, a multiple of ROWS.
int64_t grain(int64_t steps, int64_t n, int64_t p) {
  const int64_t rows = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, steps * n * p / 1024));
  return (rows + ROWS - 1) / ROWS * ROWS;
}

// run(b0, b1) on chunks of the B rows across threads, each with denormals flushed: rows are
// independent through a whole recursion, forward or backward, so the split is made once.
template <typename Run>
void over_rows(int64_t B, int64_t chunk, const Run& run) {
  at::parallel_for(0, B, chunk, [&](int64_t b0, int64_t b1) {
    FlushDenormals flush;
    run(b0, b1);
  });
}

// A forward: each thread runs its rows through every step, step(t, b0, rows) for t = 0..T-1.
template <typename Step>
void rows_through_time(int64_t B, int64_t steps, int64_t chunk, const Step& step) {
  over_rows(B, chunk, [&](int64_t b0, int64_t b1) {
    for (int64_t t = 0; t < steps; ++t) step(t, b0, b1 - b0);
  });
}

// dst[r, 0:n] = src[r, 0:n] + bias[0:n] (bias may be null) for each row r (row strides ldd, lds).
template <typename T>
void rows_plus_bias(T* dst, int64_t ldd, const T* src, int64_t lds, const T* bias, int64_t rows, int64_t n) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) dst[r * ldd + i] = src[r * lds + i] + (bias ? bias[i] : T(0));
}

// An optional argument: an empty tensor is absent (null), else checked as `check` does.
template <typename T>
T* optional_arg(const char* fn, torch::Tensor& t, const char* name, c10::IntArrayRef shape, c10::ScalarType dtype) {
  if (t.numel() == 0) return nullptr;
  check(fn, t, name, shape, dtype);
  return t.data_ptr<T>();
}

// lam: (T+1, B, p) updated in place; factor: (T, B, p); mat: (p, p).
void scaled_recursion_(torch::Tensor lam, torch::Tensor factor, torch::Tensor mat, bool divide, double floor) {
  constexpr const char* fn = "scaled_recursion_";
  const auto s = sizes(fn, factor, "factor", 3);
  const int64_t steps = s[0], B = s[1], p = s[2];
  const auto dtype = factor.scalar_type();
  check(fn, factor, "factor", {steps, B, p}, dtype);
  check(fn, lam, "lam", {steps + 1, B, p}, dtype);
  check(fn, mat, "mat", {p, p}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto run = loops<scalar_t>().recursion;
    over_rows(B, grain(steps, p, p), [&](int64_t b0, int64_t b1) {
      run(lam.data_ptr<scalar_t>(), factor.data_ptr<scalar_t>(), mat.data_ptr<scalar_t>(), b0, b1, steps, B, p,
          divide, static_cast<scalar_t>(floor));
    });
  });
}

// lam: (T+1, B, p) updated in place; gates: (T, B, 4, p) (r, z, q, n); h0: (B, p); out: (T, B, p);
// mat: (3p, p); g: (T, B, 4, p) to receive the pre-activation adjoints, or an empty tensor.
void gru_recursion_(torch::Tensor lam, torch::Tensor gates, torch::Tensor h0, torch::Tensor out, torch::Tensor mat,
                    bool linearized, double floor, torch::Tensor g) {
  constexpr const char* fn = "gru_recursion_";
  const auto s = sizes(fn, out, "out", 3);
  const int64_t steps = s[0], B = s[1], p = s[2];
  const auto dtype = out.scalar_type();
  check(fn, out, "out", {steps, B, p}, dtype);
  check(fn, lam, "lam", {steps + 1, B, p}, dtype);
  check(fn, gates, "gates", {steps, B, 4, p}, dtype);
  check(fn, h0, "h0", {B, p}, dtype);
  check(fn, mat, "mat", {3 * p, p}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto run = loops<scalar_t>().gru;
    scalar_t* gp = optional_arg<scalar_t>(fn, g, "g", {steps, B, 4, p}, dtype);
    over_rows(B, grain(steps, 3 * p, p), [&](int64_t b0, int64_t b1) {
      run(lam.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          mat.data_ptr<scalar_t>(), gp, b0, b1, steps, B, p, linearized, static_cast<scalar_t>(floor));
    });
  });
}

// lam: (T+1, B, 2p) = [lam_h, lam_c] updated in place; gates: (T, B, 5, p) (i, f, g, o, tanh c);
// h0: (B, 2p); out: (T, B, 2p); mat: (4p, p); floors: of the sigmoid derivatives (fs) and of the
// tanh derivative (ft), read with linearized; g: (T, B, 4, p) to receive the pre-activation
// adjoints, or an empty tensor.
void lstm_recursion_(torch::Tensor lam, torch::Tensor gates, torch::Tensor h0, torch::Tensor out, torch::Tensor mat,
                     bool linearized, double fs, double ft, torch::Tensor g) {
  constexpr const char* fn = "lstm_recursion_";
  const auto s = sizes(fn, gates, "gates", 4);
  const int64_t steps = s[0], B = s[1], p = s[3];
  const auto dtype = gates.scalar_type();
  check(fn, gates, "gates", {steps, B, 5, p}, dtype);
  check(fn, lam, "lam", {steps + 1, B, 2 * p}, dtype);
  check(fn, out, "out", {steps, B, 2 * p}, dtype);
  check(fn, h0, "h0", {B, 2 * p}, dtype);
  check(fn, mat, "mat", {4 * p, p}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto run = loops<scalar_t>().lstm;
    scalar_t* gp = optional_arg<scalar_t>(fn, g, "g", {steps, B, 4, p}, dtype);
    over_rows(B, grain(steps, 4 * p, p), [&](int64_t b0, int64_t b1) {
      run(lam.data_ptr<scalar_t>(), gates.data_ptr<scalar_t>(), h0.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
          mat.data_ptr<scalar_t>(), gp, b0, b1, steps, B, p, linearized, static_cast<scalar_t>(fs),
          static_cast<scalar_t>(ft));
    });
  });
}

// GRU forward keeping the gates. gi: (T, B, 3p) = x W_ih^T + b_ih; h0: (B, p); wt: W_hh^T (p, 3p);
// bias: b_hh (3p) or empty. Writes out (T, B, p) and gates (T, B, 4, p) = [r, z, q, n] per step:
// one fused block-times-matrix for h W_hh^T, the sigmoid and tanh as vectorized ATen ops, the
// rest as plain loops.
void gru_forward_(torch::Tensor gi, torch::Tensor h0, torch::Tensor wt, torch::Tensor bias, torch::Tensor out,
                  torch::Tensor gates) {
  constexpr const char* fn = "gru_forward_";
  const auto s = sizes(fn, out, "out", 3);
  const int64_t steps = s[0], B = s[1], p = s[2];
  const auto dtype = out.scalar_type();
  check(fn, out, "out", {steps, B, p}, dtype);
  check(fn, gi, "gi", {steps, B, 3 * p}, dtype);
  check(fn, h0, "h0", {B, p}, dtype);
  check(fn, wt, "wt", {p, 3 * p}, dtype);
  check(fn, gates, "gates", {steps, B, 4, p}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto product = loops<scalar_t>().forward;
    const scalar_t* bh = optional_arg<scalar_t>(fn, bias, "bias", {3 * p}, dtype);
    const scalar_t *gi_all = gi.data_ptr<scalar_t>(), *h0_all = h0.data_ptr<scalar_t>();
    scalar_t *gates_all = gates.data_ptr<scalar_t>(), *out_all = out.data_ptr<scalar_t>();
    rows_through_time(B, steps, grain(steps, 3 * p, p), [&](int64_t t, int64_t b0, int64_t rows) {
      scalar_t* g = gates_all + (t * B + b0) * 4 * p;  // rows x [r, z, q, n]
      const scalar_t* x = gi_all + (t * B + b0) * 3 * p;
      const scalar_t* h = t == 0 ? h0_all + b0 * p : out_all + ((t - 1) * B + b0) * p;
      scalar_t* cur = out_all + (t * B + b0) * p;
      rows_plus_bias(g, 4 * p, x, 3 * p, bh, rows, 2 * p);  // r, z from x W_i^T + b_i + b_h
      for (int64_t r = 0; r < rows; ++r)  // q from b_hn
        for (int64_t i = 0; i < p; ++i) g[r * 4 * p + 2 * p + i] = bh ? bh[2 * p + i] : scalar_t(0);
      product(g, 4 * p, h, p, wt.data_ptr<scalar_t>(), rows, p, 3 * p);
      rows_view(g, rows, 2 * p, 4 * p, gates).sigmoid_();  // r, z
      for (int64_t r = 0; r < rows; ++r) {  // n's pre-activation x W_in^T + b_in + r q
        scalar_t* gr = g + r * 4 * p;
        const scalar_t* xr = x + r * 3 * p;
        for (int64_t i = 0; i < p; ++i) gr[3 * p + i] = xr[2 * p + i] + gr[i] * gr[2 * p + i];
      }
      rows_view(g + 3 * p, rows, p, 4 * p, gates).tanh_();
      for (int64_t r = 0; r < rows; ++r) {  // h' = n + z (h - n)
        const scalar_t* gr = g + r * 4 * p;
        for (int64_t i = 0; i < p; ++i) {
          const scalar_t n = gr[3 * p + i];
          cur[r * p + i] = n + gr[p + i] * (h[r * p + i] - n);
        }
      }
    });
  });
}

// LSTM forward keeping the gates. x: (T, B, d) with wi = W_ih^T (d, 4p), or, with wi empty,
// x W_ih^T + b_ih (T, B, 4p); h0: (B, 2p) = [h_0, c_0]; wt: W_hh^T (p, 4p); bias: (4p) (b_ih + b_hh
// with wi, else b_hh) or empty. Writes out (T, B, 2p) = [h_t, c_t] and gates (T, B, 5, p) =
// [i, f, g, o, tanh c_t] per step, as the GRU's forward.
void lstm_forward_(torch::Tensor x, torch::Tensor h0, torch::Tensor wi, torch::Tensor wt, torch::Tensor bias,
                   torch::Tensor out, torch::Tensor gates) {
  constexpr const char* fn = "lstm_forward_";
  const auto s = sizes(fn, gates, "gates", 4);
  const int64_t steps = s[0], B = s[1], p = s[3];
  const auto dtype = gates.scalar_type();
  const bool fused = wi.numel() > 0;  // the input product per step
  const int64_t d = fused ? wi.size(0) : 4 * p;
  check(fn, gates, "gates", {steps, B, 5, p}, dtype);
  check(fn, x, fused ? "x" : "gi", {steps, B, d}, dtype);
  check(fn, h0, "h0", {B, 2 * p}, dtype);
  check(fn, wt, "wt", {p, 4 * p}, dtype);
  check(fn, out, "out", {steps, B, 2 * p}, dtype);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto step = loops<scalar_t>().lstm_step;
    const scalar_t* b = optional_arg<scalar_t>(fn, bias, "bias", {4 * p}, dtype);
    const scalar_t* w_in = optional_arg<scalar_t>(fn, wi, "wi", {d, 4 * p}, dtype);
    const scalar_t *x_all = x.data_ptr<scalar_t>(), *h0_all = h0.data_ptr<scalar_t>();
    scalar_t *gates_all = gates.data_ptr<scalar_t>(), *out_all = out.data_ptr<scalar_t>();
    // a step's passes over its gates (bias, products, activations, cell) run on CHUNK rows at a time:
    // the chunk's gates stay in cache between the passes at any batch size
    constexpr int64_t CHUNK = 64;
    rows_through_time(B, steps, grain(steps, 4 * p, p), [&](int64_t t, int64_t b0, int64_t rows) {
      for (int64_t r = b0; r < b0 + rows; r += CHUNK) {
        const scalar_t* prev = t == 0 ? h0_all + r * 2 * p : out_all + ((t - 1) * B + r) * 2 * p;  // [h, c]
        step(gates_all + (t * B + r) * 5 * p, x_all + (t * B + r) * d, w_in, d, b, prev,
             out_all + (t * B + r) * 2 * p, wt.data_ptr<scalar_t>(), std::min(CHUNK, b0 + rows - r), p, gates);
      }
    });
  });
}

// out: (T, B, p) holding x_t W_ih^T + b for all t, overwritten by h_1..h_T. h0: (B, p).
// wt: W_hh^T. activation: 0 tanh, 1 sigmoid, 2 identity, 3 relu.
void elman_forward_(torch::Tensor out, torch::Tensor h0, torch::Tensor wt, int64_t activation) {
  constexpr const char* fn = "elman_forward_";
  const auto s = sizes(fn, out, "out", 3);
  const int64_t steps = s[0], B = s[1], p = s[2];
  const auto dtype = out.scalar_type();
  check(fn, out, "out", {steps, B, p}, dtype);
  check(fn, h0, "h0", {B, p}, dtype);
  check(fn, wt, "wt", {p, p}, dtype);
  TORCH_CHECK(activation >= 0 && activation <= 3, fn, ": unknown activation code ", activation);
  AT_DISPATCH_FLOATING_TYPES(dtype, fn, [&] {
    const auto product = loops<scalar_t>().forward;
    scalar_t* out_all = out.data_ptr<scalar_t>();
    const scalar_t *w = wt.data_ptr<scalar_t>(), *h0_all = h0.data_ptr<scalar_t>();
    rows_through_time(B, steps, grain(steps, p, p), [&](int64_t t, int64_t b0, int64_t rows) {
      scalar_t* here = out_all + (t * B + b0) * p;
      product(here, p, t == 0 ? h0_all + b0 * p : out_all + ((t - 1) * B + b0) * p, p, w, rows, p, p);
      torch::Tensor cur = rows_view(here, rows, p, p, out);
      switch (activation) {
        case 0: cur.tanh_(); break;
        case 1: cur.sigmoid_(); break;
        case 3: cur.relu_(); break;
        default: break;  // identity
      }
    });
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scaled_recursion_", &scaled_recursion_, "lam[t-1] += (lam[t] */÷ factor[t-1]) @ mat for t = T..1, in place");
  m.def("elman_forward_", &elman_forward_, "Elman forward recursion, in place over the input projection");
  m.def("gru_forward_", &gru_forward_, "GRU forward keeping every step's gates [r, z, q, n]");
  m.def("gru_recursion_", &gru_recursion_, "GRU: lam[t-1] += z*lam[t] + s(lam[t]) @ mat for t = T..1, in place");
  m.def("lstm_forward_", &lstm_forward_, "LSTM forward keeping every step's gates [i, f, g, o, tanh c]");
  m.def("lstm_recursion_", &lstm_recursion_,
        "LSTM: lam_h[t-1] += s(lam[t]) @ mat, lam_c[t-1] += f*(lam_c + o tanh'(c) lam_h)[t] for t = T..1, in place");
  m.def("isa", &isa, "the instruction set whose loops are in use: base, avx2 or avx512");
  m.def("widest_isa", [] { return std::string(ISA_NAMES[widest_isa()]); }, "the widest instruction set this CPU has");
  m.def("set_isa", &set_isa, "use the loops built for this instruction set (at most the widest)");
  m.def("set_flush_enabled", [](bool on) { flush_enabled = on; }, "whether the loops flush denormals (default true)");
  m.def("flush_mode_available", &flush_mode_available, "whether this CPU has a flush-to-zero mode the loops set");
  m.def("denormals_flushed", &denormals_flushed, "whether the calling thread flushes denormals (FTZ and DAZ)");
}
