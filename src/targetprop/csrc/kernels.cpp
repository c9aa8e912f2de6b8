// Fused CPU loops for the Elman and GRU cells (targetprop.kernels builds this file on first use).
//
// Recursions, each a row vector times a small matrix per step:
//   Elman forward:   h_t = a(u_t + h_{t-1} W_hh^T)               (u_t = x_t W_ih^T + b, precomputed)
//   Elman backward:  lam[t-1] += (lam[t] (*|/) factor[t-1]) @ mat,  t = T..1
//   GRU backward:    lam[t-1] += z_t * lam[t] + [s_r, s_z, s_n](lam[t], gates_t) @ mat (3p x p)
// The Elman backward covers BP's adjoint (factor a'(u_t), mat W_hh), linearized TP (factor a'(u_t)
// floored and divided, mat M^T) and the through-time pass; the GRU one BP (mat W_hh) and the
// authors' rule (mat [M_r; M_z; M_n]^T), see targetprop/gru.py. Each row's product keeps its output
// block in vector registers over the whole reduction (p FMAs per register, no memory round
// trip), with no per-step dispatch or allocation. Backward rows are independent over the whole
// recursion, so they are split across threads once. On x86-64 an AVX2+FMA build and a baseline
// build of the loops are chosen at run time, so one binary runs on any x86-64 machine.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

#define TP_INLINE inline __attribute__((always_inline))

namespace {

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

// out[j0 : j0 + K*N] += s[0:n] @ mat[0:n, j0 : j0 + K*N] (rows of length p), K accumulators in registers.
template <typename T, int BYTES, int K>
TP_INLINE void block(T* __restrict out, const T* __restrict s, const T* __restrict mat, int64_t n, int64_t p,
                     int64_t j0) {
  using V = typename Vec<T, BYTES>::type;
  constexpr int N = Vec<T, BYTES>::N;
  V acc[K];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) acc[k] = vload<V>(out + j0 + k * N);
  for (int64_t i = 0; i < n; ++i) {
    const V si = s[i] - V{};  // broadcast
    const T* row = mat + i * p + j0;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[k] += si * vload<V>(row + k * N);
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) vstore(out + j0 + k * N, acc[k]);
}

// out[0:p] += s[0:n] @ mat (n x p, row-major)
template <typename T, int BYTES>
TP_INLINE void rowvec_mat(T* __restrict out, const T* __restrict s, const T* __restrict mat, int64_t n, int64_t p) {
  constexpr int N = Vec<T, BYTES>::N;
  int64_t j0 = 0;
  for (; j0 + 8 * N <= p; j0 += 8 * N) block<T, BYTES, 8>(out, s, mat, n, p, j0);
  for (; j0 + 4 * N <= p; j0 += 4 * N) block<T, BYTES, 4>(out, s, mat, n, p, j0);
  for (; j0 + N <= p; j0 += N) block<T, BYTES, 1>(out, s, mat, n, p, j0);
  for (; j0 < p; ++j0) {
    T acc = out[j0];
    for (int64_t i = 0; i < n; ++i) acc += s[i] * mat[i * p + j0];
    out[j0] = acc;
  }
}

template <typename T, int BYTES>
TP_INLINE void recursion_rows(T* lam, const T* factor, const T* mat, int64_t b0, int64_t b1, int64_t steps,
                              int64_t B, int64_t p, bool divide, T floor) {
  const int64_t stride = B * p;
  std::vector<T> tmp(p);
  T* s = tmp.data();
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = steps; t >= 1; --t) {
      const T* cur = lam + t * stride + b * p;
      const T* f = factor + (t - 1) * stride + b * p;
      bool any = false;
      if (divide) {
        for (int64_t i = 0; i < p; ++i) s[i] = cur[i] / std::max(f[i], floor);
      } else {
        for (int64_t i = 0; i < p; ++i) s[i] = cur[i] * f[i];
      }
      for (int64_t i = 0; i < p; ++i) any |= (s[i] != T(0));
      // Displacements underflow to exactly zero far back in time; such steps add nothing.
      if (any) rowvec_mat<T, BYTES>(lam + (t - 1) * stride + b * p, s, mat, p, p);
    }
  }
}

// out[b, 0:width] += h[b, 0:n] @ wt (n x width) for each of B rows (row strides ldo, ldh)
template <typename T, int BYTES>
TP_INLINE void forward_step(T* out, int64_t ldo, const T* h, int64_t ldh, const T* wt, int64_t B, int64_t n,
                            int64_t width) {
  for (int64_t b = 0; b < B; ++b) rowvec_mat<T, BYTES>(out + b * ldo, h + b * ldh, wt, n, width);
}

// GRU, rows b0..b1 for t = T..1. gates: (T, B, 4, p) holding r, z, q = h W_hn^T + b_hn, n per step;
// h0 (B, p) and out (T, B, p) give h_{t-1}. With dn = (1 - n^2)(1 - z):
//   BP:          s = [r(1-r) q dn, z(1-z)(h-n), r dn] * lam_t
//   linearized:  s = [q dn / max(r(1-r), floor), (h-n) / max(z(1-z), floor), r dn] * lam_t
// and, if g is given, g[t-1] = [r(1-r) q dn, z(1-z)(h-n), r dn, dn] * lam_t: the cell's
// pre-activation adjoints for the parameter directions, written while lam_t is final.
template <typename T, int BYTES>
TP_INLINE void gru_rows(T* lam, const T* gates, const T* h0, const T* out, const T* mat, T* g, int64_t b0,
                        int64_t b1, int64_t steps, int64_t B, int64_t p, bool linearized, T floor) {
  const int64_t stride = B * p;
  std::vector<T> tmp(3 * p);
  T* s = tmp.data();
  for (int64_t b = b0; b < b1; ++b) {
    for (int64_t t = steps; t >= 1; --t) {
      const T* cur = lam + t * stride + b * p;
      const T* gt = gates + ((t - 1) * B + b) * 4 * p;
      const T *r = gt, *z = gt + p, *q = gt + 2 * p, *n = gt + 3 * p;
      const T* h = t == 1 ? h0 + b * p : out + (t - 2) * stride + b * p;
      T* gr = g ? g + ((t - 1) * B + b) * 4 * p : nullptr;
      T* dst = lam + (t - 1) * stride + b * p;
      bool any = false;
      for (int64_t i = 0; i < p; ++i) any |= (cur[i] != T(0));
      if (!any) {  // an exactly-zero displacement (underflow far back in time) adds nothing
        if (gr) std::fill(gr, gr + 4 * p, T(0));
        continue;
      }
      for (int64_t i = 0; i < p; ++i) {
        const T l = cur[i], dn = (T(1) - n[i] * n[i]) * (T(1) - z[i]);
        const T dr = r[i] * (T(1) - r[i]), dz = z[i] * (T(1) - z[i]);
        const T br = dr * q[i] * dn * l, bz = dz * (h[i] - n[i]) * l, bn = r[i] * dn * l;
        if (gr) {
          gr[i] = br;
          gr[p + i] = bz;
          gr[2 * p + i] = bn;
          gr[3 * p + i] = dn * l;
        }
        if (linearized) {
          s[i] = q[i] * dn * l / std::max(dr, floor);
          s[p + i] = (h[i] - n[i]) * l / std::max(dz, floor);
        } else {
          s[i] = br;
          s[p + i] = bz;
        }
        s[2 * p + i] = bn;
        dst[i] += z[i] * l;
      }
      rowvec_mat<T, BYTES>(dst, s, mat, 3 * p, p);
    }
  }
}

#define TP_DEFINE(NAME, TARGET, BYTES)                                                                        \
  TARGET void recursion_##NAME##_f(float* l, const float* f, const float* m, int64_t b0, int64_t b1,          \
                                   int64_t T, int64_t B, int64_t p, bool d, float fl) {                       \
    recursion_rows<float, BYTES>(l, f, m, b0, b1, T, B, p, d, fl);                                            \
  }                                                                                                           \
  TARGET void recursion_##NAME##_d(double* l, const double* f, const double* m, int64_t b0, int64_t b1,       \
                                   int64_t T, int64_t B, int64_t p, bool d, double fl) {                      \
    recursion_rows<double, BYTES>(l, f, m, b0, b1, T, B, p, d, fl);                                           \
  }                                                                                                           \
  TARGET void forward_##NAME##_f(float* o, int64_t lo, const float* h, int64_t lh, const float* w, int64_t B, \
                                 int64_t n, int64_t width) {                                                  \
    forward_step<float, BYTES>(o, lo, h, lh, w, B, n, width);                                                 \
  }                                                                                                           \
  TARGET void forward_##NAME##_d(double* o, int64_t lo, const double* h, int64_t lh, const double* w,         \
                                 int64_t B, int64_t n, int64_t width) {                                       \
    forward_step<double, BYTES>(o, lo, h, lh, w, B, n, width);                                                \
  }                                                                                                           \
  TARGET void gru_##NAME##_f(float* l, const float* ga, const float* h0, const float* o, const float* m,      \
                             float* g, int64_t b0, int64_t b1, int64_t T, int64_t B, int64_t p, bool lin,     \
                             float fl) {                                                                      \
    gru_rows<float, BYTES>(l, ga, h0, o, m, g, b0, b1, T, B, p, lin, fl);                                     \
  }                                                                                                           \
  TARGET void gru_##NAME##_d(double* l, const double* ga, const double* h0, const double* o, const double* m, \
                             double* g, int64_t b0, int64_t b1, int64_t T, int64_t B, int64_t p, bool lin,    \
                             double fl) {                                                                     \
    gru_rows<double, BYTES>(l, ga, h0, o, m, g, b0, b1, T, B, p, lin, fl);                                    \
  }

TP_DEFINE(base, , 16)
#if defined(__x86_64__) && defined(__GNUC__)
TP_DEFINE(avx2, __attribute__((target("avx2,fma"))), 32)
bool use_avx2() {
  static const bool yes = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return yes;
}
#else
bool use_avx2() { return false; }
#define recursion_avx2_f recursion_base_f
#define recursion_avx2_d recursion_base_d
#define forward_avx2_f forward_base_f
#define forward_avx2_d forward_base_d
#define gru_avx2_f gru_base_f
#define gru_avx2_d gru_base_d
#endif

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be on the CPU");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, name,
              " must be float32 or float64");
}

// lam: (T+1, B, p) updated in place; factor: (T, B, p); mat: (p, p).
void scaled_recursion_(torch::Tensor lam, torch::Tensor factor, torch::Tensor mat, bool divide, double floor) {
  check(lam, "lam");
  check(factor, "factor");
  check(mat, "mat");
  TORCH_CHECK(lam.dim() == 3 && factor.dim() == 3 && mat.dim() == 2, "scaled_recursion_: bad ranks");
  const int64_t steps = factor.size(0), B = factor.size(1), p = factor.size(2);
  TORCH_CHECK(lam.size(0) == steps + 1 && lam.size(1) == B && lam.size(2) == p, "scaled_recursion_: lam shape");
  TORCH_CHECK(mat.size(0) == p && mat.size(1) == p, "scaled_recursion_: mat shape");
  TORCH_CHECK(lam.scalar_type() == factor.scalar_type() && lam.scalar_type() == mat.scalar_type(),
              "scaled_recursion_: dtypes differ");
  const bool avx2 = use_avx2();
  // Rows are independent through the whole recursion: one parallel region per call.
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, steps * p * p / 1024));
  if (lam.scalar_type() == torch::kFloat) {
    float* l = lam.data_ptr<float>();
    const float* f = factor.data_ptr<float>();
    const float* m = mat.data_ptr<float>();
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      (avx2 ? recursion_avx2_f : recursion_base_f)(l, f, m, b0, b1, steps, B, p, divide, (float)floor);
    });
  } else {
    double* l = lam.data_ptr<double>();
    const double* f = factor.data_ptr<double>();
    const double* m = mat.data_ptr<double>();
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      (avx2 ? recursion_avx2_d : recursion_base_d)(l, f, m, b0, b1, steps, B, p, divide, floor);
    });
  }
}

// lam: (T+1, B, p) updated in place; gates: (T, B, 4, p) (r, z, q, n); h0: (B, p); out: (T, B, p);
// mat: (3p, p); g: (T, B, 4, p) to receive the pre-activation adjoints, or an empty tensor.
void gru_recursion_(torch::Tensor lam, torch::Tensor gates, torch::Tensor h0, torch::Tensor out, torch::Tensor mat,
                    bool linearized, double floor, torch::Tensor g) {
  check(lam, "lam");
  check(gates, "gates");
  check(h0, "h0");
  check(out, "out");
  check(mat, "mat");
  const bool emit = g.numel() > 0;
  if (emit) check(g, "g");
  TORCH_CHECK(lam.dim() == 3 && gates.dim() == 4 && h0.dim() == 2 && out.dim() == 3 && mat.dim() == 2,
              "gru_recursion_: bad ranks");
  const int64_t steps = out.size(0), B = out.size(1), p = out.size(2);
  TORCH_CHECK(lam.size(0) == steps + 1 && lam.size(1) == B && lam.size(2) == p, "gru_recursion_: lam shape");
  TORCH_CHECK(gates.size(0) == steps && gates.size(1) == B && gates.size(2) == 4 && gates.size(3) == p,
              "gru_recursion_: gates shape");
  TORCH_CHECK(h0.size(0) == B && h0.size(1) == p, "gru_recursion_: h0 shape");
  TORCH_CHECK(mat.size(0) == 3 * p && mat.size(1) == p, "gru_recursion_: mat shape");
  TORCH_CHECK(!emit || g.sizes() == gates.sizes(), "gru_recursion_: g shape");
  for (const auto* t : {&gates, &h0, &out, &mat})
    TORCH_CHECK(t->scalar_type() == lam.scalar_type(), "gru_recursion_: dtypes differ");
  TORCH_CHECK(!emit || g.scalar_type() == lam.scalar_type(), "gru_recursion_: dtypes differ");
  const bool avx2 = use_avx2();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(1, steps * 3 * p * p / 1024));
  if (lam.scalar_type() == torch::kFloat) {
    float* gp = emit ? g.data_ptr<float>() : nullptr;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      (avx2 ? gru_avx2_f : gru_base_f)(lam.data_ptr<float>(), gates.data_ptr<float>(), h0.data_ptr<float>(),
                                       out.data_ptr<float>(), mat.data_ptr<float>(), gp, b0, b1, steps, B, p,
                                       linearized, (float)floor);
    });
  } else {
    double* gp = emit ? g.data_ptr<double>() : nullptr;
    at::parallel_for(0, B, grain, [&](int64_t b0, int64_t b1) {
      (avx2 ? gru_avx2_d : gru_base_d)(lam.data_ptr<double>(), gates.data_ptr<double>(), h0.data_ptr<double>(),
                                       out.data_ptr<double>(), mat.data_ptr<double>(), gp, b0, b1, steps, B, p,
                                       linearized, floor);
    });
  }
}

// GRU forward keeping the gates. gi: (T, B, 3p) = x W_ih^T + b_ih; h0: (B, p); wt: W_hh^T (p, 3p);
// bias: b_hh (3p) or empty. Writes out (T, B, p) and gates (T, B, 4, p) = [r, z, q, n] per step:
// one fused row-times-matrix per row for h W_hh^T, then the gate arithmetic as vectorized ATen ops.
void gru_forward_(torch::Tensor gi, torch::Tensor h0, torch::Tensor wt, torch::Tensor bias, torch::Tensor out,
                  torch::Tensor gates) {
  check(gi, "gi");
  check(h0, "h0");
  check(wt, "wt");
  check(out, "out");
  check(gates, "gates");
  const int64_t steps = out.size(0), B = out.size(1), p = out.size(2);
  TORCH_CHECK(gi.dim() == 3 && gi.size(0) == steps && gi.size(1) == B && gi.size(2) == 3 * p,
              "gru_forward_: gi shape");
  TORCH_CHECK(h0.dim() == 2 && h0.size(0) == B && h0.size(1) == p, "gru_forward_: h0 shape");
  TORCH_CHECK(wt.dim() == 2 && wt.size(0) == p && wt.size(1) == 3 * p, "gru_forward_: wt shape");
  TORCH_CHECK(gates.dim() == 4 && gates.size(0) == steps && gates.size(1) == B && gates.size(2) == 4 &&
              gates.size(3) == p, "gru_forward_: gates shape");
  const bool has_bias = bias.numel() > 0;
  if (has_bias) {
    check(bias, "bias");
    TORCH_CHECK(bias.numel() == 3 * p, "gru_forward_: bias shape");
  }
  for (const auto* t : {&h0, &wt, &out, &gates, &bias})
    TORCH_CHECK(!t->defined() || t->numel() == 0 || t->scalar_type() == gi.scalar_type(), "gru_forward_: dtypes differ");
  const bool avx2 = use_avx2();
  const bool is_float = gi.scalar_type() == torch::kFloat;
  const torch::Tensor bias3 = has_bias ? bias.view({1, 3, p}).expand({B, 3, p}) : torch::Tensor();
  torch::Tensor h = h0;
  for (int64_t t = 0; t < steps; ++t) {
    torch::Tensor g = gates.select(0, t);  // (B, 4, p)
    torch::Tensor gh = g.narrow(1, 0, 3);  // the r, z, q slots receive h W_hh^T + b_hh
    if (has_bias) gh.copy_(bias3);
    else gh.zero_();
    if (is_float) {
      (avx2 ? forward_avx2_f : forward_base_f)(g.data_ptr<float>(), 4 * p, h.data_ptr<float>(), p,
                                               wt.data_ptr<float>(), B, p, 3 * p);
    } else {
      (avx2 ? forward_avx2_d : forward_base_d)(g.data_ptr<double>(), 4 * p, h.data_ptr<double>(), p,
                                               wt.data_ptr<double>(), B, p, 3 * p);
    }
    const torch::Tensor git = gi.select(0, t).view({B, 3, p});
    g.narrow(1, 0, 2).add_(git.narrow(1, 0, 2)).sigmoid_();
    torch::Tensor n = g.select(1, 3);
    at::addcmul_out(n, git.select(1, 2), g.select(1, 0), g.select(1, 2)).tanh_();
    torch::Tensor cur = out.select(0, t);
    at::sub_out(cur, h, n).mul_(g.select(1, 1)).add_(n);
    h = cur;
  }
}

// out: (T, B, p) holding x_t W_ih^T + b for all t, overwritten by h_1..h_T. h0: (B, p).
// wt: W_hh^T. activation: 0 tanh, 1 sigmoid, 2 identity, 3 relu.
void elman_forward_(torch::Tensor out, torch::Tensor h0, torch::Tensor wt, int64_t activation) {
  check(out, "out");
  check(h0, "h0");
  check(wt, "wt");
  TORCH_CHECK(out.dim() == 3 && h0.dim() == 2 && wt.dim() == 2, "elman_forward_: bad ranks");
  const int64_t steps = out.size(0), B = out.size(1), p = out.size(2);
  TORCH_CHECK(h0.size(0) == B && h0.size(1) == p && wt.size(0) == p && wt.size(1) == p, "elman_forward_: shapes");
  TORCH_CHECK(out.scalar_type() == h0.scalar_type() && out.scalar_type() == wt.scalar_type(),
              "elman_forward_: dtypes differ");
  const bool avx2 = use_avx2();
  const bool is_float = out.scalar_type() == torch::kFloat;
  for (int64_t t = 0; t < steps; ++t) {
    torch::Tensor cur = out.select(0, t);
    const torch::Tensor prev = t == 0 ? h0 : out.select(0, t - 1);
    if (is_float) {
      (avx2 ? forward_avx2_f : forward_base_f)(cur.data_ptr<float>(), p, prev.data_ptr<float>(), p,
                                               wt.data_ptr<float>(), B, p, p);
    } else {
      (avx2 ? forward_avx2_d : forward_base_d)(cur.data_ptr<double>(), p, prev.data_ptr<double>(), p,
                                               wt.data_ptr<double>(), B, p, p);
    }
    switch (activation) {
      case 0: cur.tanh_(); break;
      case 1: cur.sigmoid_(); break;
      case 2: break;
      case 3: cur.relu_(); break;
      default: TORCH_CHECK(false, "elman_forward_: unknown activation code ", activation);
    }
  }
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("scaled_recursion_", &scaled_recursion_, "lam[t-1] += (lam[t] */÷ factor[t-1]) @ mat for t = T..1, in place");
  m.def("elman_forward_", &elman_forward_, "Elman forward recursion, in place over the input projection");
  m.def("gru_forward_", &gru_forward_, "GRU forward keeping every step's gates [r, z, q, n]");
  m.def("gru_recursion_", &gru_recursion_, "GRU: lam[t-1] += z*lam[t] + s(lam[t]) @ mat for t = T..1, in place");
  m.def("uses_avx2", &use_avx2, "whether the AVX2+FMA loops are used on this CPU");
}
