// Fused CPU loops for the Elman cell (targetprop.kernels builds this file on first use).
//
// Two recursions, each a row vector times a small p x p matrix per step:
//   forward:   h_t = a(u_t + h_{t-1} W_hh^T)                    (u_t = x_t W_ih^T + b, precomputed)
//   backward:  lam[t-1] += (lam[t] (*|/) factor[t-1]) @ mat,  t = T..1
// The backward covers BP's adjoint (factor a'(u_t), mat W_hh), linearized TP (factor a'(u_t)
// floored and divided, mat M^T) and the through-time pass. Each row's product keeps its output
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

// out[j0 : j0 + K*N] += s[0:p] @ mat[0:p, j0 : j0 + K*N], K accumulators held in registers.
template <typename T, int BYTES, int K>
TP_INLINE void block(T* __restrict out, const T* __restrict s, const T* __restrict mat, int64_t p, int64_t j0) {
  using V = typename Vec<T, BYTES>::type;
  constexpr int N = Vec<T, BYTES>::N;
  V acc[K];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) acc[k] = vload<V>(out + j0 + k * N);
  for (int64_t i = 0; i < p; ++i) {
    const V si = s[i] - V{};  // broadcast
    const T* row = mat + i * p + j0;
#pragma GCC unroll 16
    for (int k = 0; k < K; ++k) acc[k] += si * vload<V>(row + k * N);
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) vstore(out + j0 + k * N, acc[k]);
}

// out[0:p] += s[0:p] @ mat (p x p, row-major)
template <typename T, int BYTES>
TP_INLINE void rowvec_mat(T* __restrict out, const T* __restrict s, const T* __restrict mat, int64_t p) {
  constexpr int N = Vec<T, BYTES>::N;
  int64_t j0 = 0;
  for (; j0 + 8 * N <= p; j0 += 8 * N) block<T, BYTES, 8>(out, s, mat, p, j0);
  for (; j0 + 4 * N <= p; j0 += 4 * N) block<T, BYTES, 4>(out, s, mat, p, j0);
  for (; j0 + N <= p; j0 += N) block<T, BYTES, 1>(out, s, mat, p, j0);
  for (; j0 < p; ++j0) {
    T acc = out[j0];
    for (int64_t i = 0; i < p; ++i) acc += s[i] * mat[i * p + j0];
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
      if (any) rowvec_mat<T, BYTES>(lam + (t - 1) * stride + b * p, s, mat, p);
    }
  }
}

template <typename T, int BYTES>
TP_INLINE void forward_step(T* out, const T* h, const T* wt, int64_t B, int64_t p) {
  for (int64_t b = 0; b < B; ++b) rowvec_mat<T, BYTES>(out + b * p, h + b * p, wt, p);
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
  TARGET void forward_##NAME##_f(float* o, const float* h, const float* w, int64_t B, int64_t p) {            \
    forward_step<float, BYTES>(o, h, w, B, p);                                                                \
  }                                                                                                           \
  TARGET void forward_##NAME##_d(double* o, const double* h, const double* w, int64_t B, int64_t p) {         \
    forward_step<double, BYTES>(o, h, w, B, p);                                                               \
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
      (avx2 ? forward_avx2_f : forward_base_f)(cur.data_ptr<float>(), prev.data_ptr<float>(), wt.data_ptr<float>(), B, p);
    } else {
      (avx2 ? forward_avx2_d : forward_base_d)(cur.data_ptr<double>(), prev.data_ptr<double>(), wt.data_ptr<double>(), B, p);
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
  m.def("uses_avx2", &use_avx2, "whether the AVX2+FMA loops are used on this CPU");
}
