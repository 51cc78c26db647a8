// CPU selective scan and causal depthwise conv1d for vivim-monai (forward and backward).
//
// Maths: Gu & Dao, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces" (arXiv 2312.00752):
//   delta_t = softplus(delta_t + bias)                  (optional)
//   h_t[n]  = exp(delta_t * A[n]) * h_{t-1}[n] + delta_t * B_t[n] * u_t
//   y_t     = sum_n C_t[n] * h_t[n] + D * u_t,   out_t = y_t * silu(z_t)   (optional gate)
//
// Design:
// * one sequence per (batch, channel) row, rows spread over threads with at::parallel_for (OpenMP backend);
// * the inner loop runs over the state dimension N, contiguous in memory, and is vectorised (omp simd) with a
//   branch-free exp (Cody-Waite range reduction + degree-6 polynomial, Cephes constants; ~2 ulp in fp32);
// * a "scan order" maps scan position i to memory position m(i): forward (i), reverse (L-1-i) or temporal
//   (frame-major tokens scanned pixel by pixel: m(i) = (i % T) * P + i / T); no permuted copies are made;
// * the forward pass keeps the state at the start of every chunk of K positions; the backward pass recomputes the
//   states of one chunk at a time from those checkpoints and runs the adjoint recurrence in reverse;
// * gradients of B, C (shared by all channels of a group) and of A, D, delta_bias (shared over the batch) are
//   accumulated in per-thread buffers and summed at the end, so no atomics are needed.
// * the channel-vectorised tile is chosen at build time: 16 channels (one zmm vector) x 16 states with AVX-512, 8
//   channels (one ymm vector) x 16 states otherwise (measured faster than 16 x 16 and than an 8 x 8 tile that fits the
//   16 ymm registers in two passes: docs/performance.md section 1b). Build with -fno-trapping-math: under trapping
//   math GCC leaves fast_exp's clamp as a branch without AVX-512 masks, and the exp runs scalar (16x slower).
// All accumulation is in the input precision, float32 or float64 (the Python side upcasts half/bfloat16).

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <type_traits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

constexpr int64_t kForward = 0;
constexpr int64_t kReverse = 1;
constexpr int64_t kTemporal = 2;

// Memory position of every scan position, computed once per call and shared by all rows (L int64 values).
std::vector<int64_t> make_order(int64_t kind, int64_t length, int64_t frames) {
  TORCH_CHECK(kind >= kForward && kind <= kTemporal, "unknown scan order ", kind);
  std::vector<int64_t> order(length);
  if (kind == kForward) {
    for (int64_t i = 0; i < length; ++i) order[i] = i;
  } else if (kind == kReverse) {
    for (int64_t i = 0; i < length; ++i) order[i] = length - 1 - i;
  } else {
    TORCH_CHECK(frames >= 1 && length % frames == 0, "temporal scan order: length ", length,
                " is not a multiple of the frame count ", frames);
    const int64_t pixels = length / frames;
    for (int64_t p = 0, i = 0; p < pixels; ++p)
      for (int64_t t = 0; t < frames; ++t, ++i) order[i] = t * pixels + p;
  }
  return order;
}

#pragma omp declare simd notinbranch
inline float fast_exp(float x) {
  x = std::min(std::max(x, -87.5f), 88.5f);
  // round to nearest by adding and subtracting 1.5 * 2^23 (vectorises, unlike std::floor under trapping math)
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

#pragma omp declare simd notinbranch
inline double fast_exp(double x) { return std::exp(x); }

// softplus(x) = max(x, 0) + log1p(exp(-|x|)), branch-free so that it vectorises. With v = exp(-|x|) in (0, 1] and
// s = v / (2 + v) in (0, 1/3]: log1p(v) = 2 atanh(s) = 2 (s + s^3/3 + s^5/5 + ...); 9 terms reach float precision
// and keep full relative precision for tiny v.
template <typename T>
inline T softplus(T x) {
  const T v = fast_exp(-std::abs(x));
  const T s = v / (T(2) + v), s2 = s * s;
  T series = T(1) / T(17);
  series = series * s2 + T(1) / T(15);
  series = series * s2 + T(1) / T(13);
  series = series * s2 + T(1) / T(11);
  series = series * s2 + T(1) / T(9);
  series = series * s2 + T(1) / T(7);
  series = series * s2 + T(1) / T(5);
  series = series * s2 + T(1) / T(3);
  series = series * s2 + T(1);
  return std::max(x, T(0)) + T(2) * s * series;
}

template <>
inline double softplus(double x) {
  return std::max(x, 0.0) + std::log1p(std::exp(-std::abs(x)));
}

template <typename T>
inline T sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}

// Strided views of the scan operands for one (batch, channel) row.
template <typename T>
struct Row {
  const T* u;
  const T* delta;
  const T* z;
  const T* B;
  const T* C;
  int64_t s_u, s_delta, s_z, s_B, s_C;  // strides along the sequence
};

struct Strides {
  int64_t b, d, l;
};

Strides strides3(const torch::Tensor& t) { return {t.stride(0), t.stride(1), t.stride(2)}; }

// B and C arrive as (batch, groups, length, N) with N contiguous.
template <typename T>
Row<T> make_row(const torch::Tensor& u, const torch::Tensor& delta, const c10::optional<torch::Tensor>& z,
                const torch::Tensor& B, const torch::Tensor& C, int64_t b, int64_t d, int64_t channels_per_group) {
  const int64_t g = d / channels_per_group;
  Row<T> row;
  row.u = u.data_ptr<T>() + b * u.stride(0) + d * u.stride(1);
  row.delta = delta.data_ptr<T>() + b * delta.stride(0) + d * delta.stride(1);
  row.z = z.has_value() ? z->data_ptr<T>() + b * z->stride(0) + d * z->stride(1) : nullptr;
  row.B = B.data_ptr<T>() + b * B.stride(0) + g * B.stride(1);
  row.C = C.data_ptr<T>() + b * C.stride(0) + g * C.stride(1);
  row.s_u = u.stride(2);
  row.s_delta = delta.stride(2);
  row.s_z = z.has_value() ? z->stride(2) : 0;
  row.s_B = B.stride(2);
  row.s_C = C.stride(2);
  return row;
}

void check_scan_args(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                     const torch::Tensor& B, const torch::Tensor& C) {
  TORCH_CHECK(u.device().is_cpu(), "the CPU selective scan needs CPU tensors");
  TORCH_CHECK(u.dim() == 3 && delta.sizes() == u.sizes(), "u and delta must be (batch, dim, length)");
  TORCH_CHECK(A.dim() == 2 && A.size(0) == u.size(1), "A must be (dim, N)");
  TORCH_CHECK(B.dim() == 4 && C.dim() == 4 && B.size(3) == A.size(1) && C.size(3) == A.size(1),
              "B and C must be (batch, groups, length, N)");
  TORCH_CHECK(B.stride(3) == 1 && C.stride(3) == 1 && A.stride(1) == 1, "B, C and A need a contiguous state axis");
  TORCH_CHECK(u.size(1) % B.size(1) == 0, "the groups of B and C must divide dim");
}

// Step sizes of one row in memory order: delta + bias, through softplus when asked (vectorised pre-pass).
template <typename T>
inline void step_sizes(const Row<T>& row, T bias, bool delta_softplus, int64_t length, T* dt) {
  const T* delta = row.delta;
  const int64_t s = row.s_delta;
  if (delta_softplus) {
#pragma omp simd
    for (int64_t m = 0; m < length; ++m) dt[m] = softplus(delta[m * s] + bias);
  } else {
#pragma omp simd
    for (int64_t m = 0; m < length; ++m) dt[m] = delta[m * s] + bias;
  }
}

// The recurrence of one row in scan order; kN > 0 fixes the state size at compile time so that the state stays in
// vector registers (kN = 0: any size). Writes y = C.h (no skip term, no gate) and the chunk-start checkpoints.
template <typename T, int kN>
inline void forward_row(const int64_t* position, int64_t length, int64_t chunk, int64_t nstate_runtime,
                        const T* dt_row, const Row<T>& row, const T* A_row, T* out_row, T* ckpt) {
  const int64_t nstate = kN > 0 ? kN : nstate_runtime;
  constexpr int kLocal = kN > 0 ? kN : 1;
  alignas(64) T h_local[kLocal], a_local[kLocal];
  std::vector<T> heap(kN > 0 ? 0 : 2 * nstate);
  T* h = kN > 0 ? h_local : heap.data();
  T* A_d = kN > 0 ? a_local : heap.data() + nstate;
  for (int64_t n = 0; n < nstate; ++n) {
    h[n] = T(0);
    A_d[n] = A_row[n];
  }
  for (int64_t start = 0; start < length; start += chunk) {
    std::copy(h, h + nstate, ckpt + (start / chunk) * nstate);
    const int64_t stop = std::min(length, start + chunk);
    for (int64_t i = start; i < stop; ++i) {
      const int64_t m = position[i];
      const T dt = dt_row[m];
      const T du = dt * row.u[m * row.s_u];
      const T* B_m = row.B + m * row.s_B;
      const T* C_m = row.C + m * row.s_C;
      T y = 0;
#pragma omp simd reduction(+ : y) aligned(h, A_d)
      for (int64_t n = 0; n < nstate; ++n) {
        const T a = fast_exp(dt * A_d[n]);
        h[n] = a * h[n] + du * B_m[n];
        y += C_m[n] * h[n];
      }
      out_row[m] = y;
    }
  }
}

// Skip connection and gate of one row, elementwise in memory order (vectorised post-pass): out = (y + D u) silu(z).
template <typename T>
inline void finish_row(const Row<T>& row, T D_d, int64_t length, T* out_row) {
  if (row.z) {
#pragma omp simd
    for (int64_t m = 0; m < length; ++m) {
      const T zz = row.z[m * row.s_z];
      out_row[m] = (out_row[m] + D_d * row.u[m * row.s_u]) * zz * sigmoid(zz);
    }
  } else {
#pragma omp simd
    for (int64_t m = 0; m < length; ++m) out_row[m] += D_d * row.u[m * row.s_u];
  }
}

#if !defined(VIVIM_SCAN_LANES)
#if defined(__AVX512F__)
#define VIVIM_SCAN_LANES 16
#else
#define VIVIM_SCAN_LANES 8
#endif
#endif
constexpr int64_t kLanes = VIVIM_SCAN_LANES;  // channels per block (one vector) in the channel-vectorised float path
constexpr int64_t kBlockState = 16;          // the state size that path serves

// Channel-vectorised recurrence for up to kLanes channels of one (batch, group) that share B and C, with N = 16
// states: the 16 x kLanes state stays in registers/L1, B_t and C_t are broadcast, and y needs no horizontal reduction.
// dtT/duT hold delta and delta*u transposed to (L, kLanes); yT receives C.h transposed the same way.
inline void forward_block(const int64_t* position, int64_t length, int64_t chunk, const float* dtT, const float* duT,
                          const float* AT, const float* B_base, int64_t s_B, const float* C_base, int64_t s_C,
                          float* yT, float* const* ckpt_rows, int64_t count) {
  alignas(64) float h[kBlockState * kLanes] = {};
  for (int64_t start = 0; start < length; start += chunk) {
    for (int64_t dd = 0; dd < count; ++dd)
      for (int64_t n = 0; n < kBlockState; ++n) ckpt_rows[dd][(start / chunk) * kBlockState + n] = h[n * kLanes + dd];
    const int64_t stop = std::min(length, start + chunk);
    for (int64_t i = start; i < stop; ++i) {
      const int64_t m = position[i];
      const float* dtv = dtT + m * kLanes;
      const float* duv = duT + m * kLanes;
      const float* B_m = B_base + m * s_B;
      const float* C_m = C_base + m * s_C;
      alignas(64) float y[kLanes] = {};
      for (int64_t n = 0; n < kBlockState; ++n) {
        const float bn = B_m[n], cn = C_m[n];
        float* hn = h + n * kLanes;
        const float* an = AT + n * kLanes;
#pragma omp simd aligned(hn, an, y : VIVIM_SCAN_LANES * 4)
        for (int64_t dd = 0; dd < kLanes; ++dd) {
          const float hv = fast_exp(dtv[dd] * an[dd]) * hn[dd] + duv[dd] * bn;
          hn[dd] = hv;
          y[dd] += cn * hv;
        }
      }
      std::copy(y, y + kLanes, yT + m * kLanes);
    }
  }
}

template <typename T>
std::vector<torch::Tensor> scan_forward_impl(const torch::Tensor& u, const torch::Tensor& delta,
                                             const torch::Tensor& A, const torch::Tensor& B, const torch::Tensor& C,
                                             const c10::optional<torch::Tensor>& D,
                                             const c10::optional<torch::Tensor>& z,
                                             const c10::optional<torch::Tensor>& delta_bias, bool delta_softplus,
                                             const std::vector<int64_t>& order, int64_t chunk) {
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), nstate = A.size(1);
  const int64_t groups = B.size(1), per_group = dim / groups;
  const int64_t num_chunks = (length + chunk - 1) / chunk;
  auto out = torch::empty({batch, dim, length}, u.options());
  auto checkpoints = torch::empty({batch, dim, num_chunks, nstate}, u.options());
  const T* A_ptr = A.data_ptr<T>();
  const T* D_ptr = D.has_value() ? D->data_ptr<T>() : nullptr;
  const T* bias_ptr = delta_bias.has_value() ? delta_bias->data_ptr<T>() : nullptr;
  T* out_ptr = out.data_ptr<T>();
  T* ckpt_ptr = checkpoints.data_ptr<T>();
  const int64_t* position = order.data();
  const bool blocked = std::is_same<T, float>::value && nstate == kBlockState;
  const int64_t lanes = blocked ? kLanes : 1;
  const int64_t blocks_per_group = (per_group + lanes - 1) / lanes;

  at::parallel_for(0, batch * groups * blocks_per_group, 1, [&](int64_t begin, int64_t end) {
    // scratch reused across calls (no page faults on every call): per-channel step sizes, then (L, kLanes) slabs
    static thread_local std::vector<T> scratch;
    static thread_local std::vector<float> slabs;
    if (scratch.size() < static_cast<size_t>(lanes * length)) scratch.resize(lanes * length);
    constexpr int64_t kSlack = 64 / sizeof(float);  // room to move the slabs' start to a 64-byte boundary
    if (blocked && slabs.size() < static_cast<size_t>(3 * kLanes * length + kSlack)) {
      slabs.resize(3 * kLanes * length + kSlack);
    }
    T* dt_buffer = scratch.data();
    for (int64_t block = begin; block < end; ++block) {
      const int64_t b = block / (groups * blocks_per_group);
      const int64_t g = (block / blocks_per_group) % groups;
      const int64_t d0 = g * per_group + (block % blocks_per_group) * lanes;
      const int64_t count = std::min(lanes, (g + 1) * per_group - d0);
      std::vector<Row<T>> rows;
      for (int64_t dd = 0; dd < count; ++dd) {
        rows.push_back(make_row<T>(u, delta, z, B, C, b, d0 + dd, per_group));
        step_sizes(rows[dd], bias_ptr ? bias_ptr[d0 + dd] : T(0), delta_softplus, length, dt_buffer + dd * length);
      }
      if constexpr (std::is_same<T, float>::value) {
        if (blocked) {
          // 64-byte aligned (L, kLanes) slabs: delta, delta*u, and the C.h outputs
          float* base = slabs.data();
          while (reinterpret_cast<uintptr_t>(base) % 64) ++base;
          float *dtT = base, *duT = base + kLanes * length, *yT = base + 2 * kLanes * length;
          alignas(64) float AT[kBlockState * kLanes] = {};
          float* ckpt_rows[kLanes];
          for (int64_t dd = 0; dd < kLanes; ++dd) {
            for (int64_t n = 0; n < kBlockState; ++n)
              AT[n * kLanes + dd] = dd < count ? A_ptr[(d0 + dd) * A.stride(0) + n] : 0.0f;
            ckpt_rows[dd] = ckpt_ptr + (b * dim + d0 + std::min(dd, count - 1)) * num_chunks * nstate;
          }
          // transpose to (L, kLanes) in kLanes-position tiles; idle lanes get delta = 0 (their state stays 0)
          for (int64_t m0 = 0; m0 < length; m0 += kLanes) {
            const int64_t m1 = std::min(length, m0 + kLanes);
            for (int64_t dd = 0; dd < kLanes; ++dd) {
              const float* dt_dd = dt_buffer + dd * length;
              const float* u_dd = dd < count ? rows[dd].u : nullptr;
              const int64_t s_u = dd < count ? rows[dd].s_u : 0;
              for (int64_t m = m0; m < m1; ++m) {
                const float dt = u_dd ? dt_dd[m] : 0.0f;
                dtT[m * kLanes + dd] = dt;
                duT[m * kLanes + dd] = u_dd ? dt * u_dd[m * s_u] : 0.0f;
              }
            }
          }
          forward_block(position, length, chunk, dtT, duT, AT, rows[0].B, rows[0].s_B, rows[0].C, rows[0].s_C, yT,
                        ckpt_rows, count);
          for (int64_t dd = 0; dd < count; ++dd) {
            float* out_row = out_ptr + (b * dim + d0 + dd) * length;
            for (int64_t m = 0; m < length; ++m) out_row[m] = yT[m * kLanes + dd];
            finish_row(rows[dd], D_ptr ? D_ptr[d0 + dd] : 0.0f, length, out_row);
          }
          continue;
        }
      }
      const int64_t d = d0;
      const T* A_d = A_ptr + d * A.stride(0);
      T* ckpt = ckpt_ptr + (b * dim + d) * num_chunks * nstate;
      T* out_row = out_ptr + (b * dim + d) * length;
      if (nstate == 16) {
        forward_row<T, 16>(position, length, chunk, nstate, dt_buffer, rows[0], A_d, out_row, ckpt);
      } else {
        forward_row<T, 0>(position, length, chunk, nstate, dt_buffer, rows[0], A_d, out_row, ckpt);
      }
      finish_row(rows[0], D_ptr ? D_ptr[d] : T(0), length, out_row);
    }
  });
  return {out, checkpoints};
}

template <typename T>
std::vector<torch::Tensor> scan_backward_impl(const torch::Tensor& grad_out, const torch::Tensor& u,
                                              const torch::Tensor& delta, const torch::Tensor& A,
                                              const torch::Tensor& B, const torch::Tensor& C,
                                              const c10::optional<torch::Tensor>& D,
                                              const c10::optional<torch::Tensor>& z,
                                              const c10::optional<torch::Tensor>& delta_bias, bool delta_softplus,
                                              const std::vector<int64_t>& order, int64_t chunk,
                                              const torch::Tensor& checkpoints) {
  const int64_t batch = u.size(0), dim = u.size(1), length = u.size(2), nstate = A.size(1);
  const int64_t groups = B.size(1), per_group = dim / groups;
  const int64_t num_chunks = checkpoints.size(2);
  const int threads = at::get_num_threads();
  auto du = torch::empty({batch, dim, length}, u.options());
  auto ddelta = torch::empty({batch, dim, length}, u.options());
  auto dz = z.has_value() ? torch::empty({batch, dim, length}, u.options()) : torch::Tensor();
  // per-thread accumulators: B/C gradients in (batch, groups, length, N) and parameter gradients
  auto dB_parts = torch::zeros({threads, batch, groups, length, nstate}, u.options());
  auto dC_parts = torch::zeros({threads, batch, groups, length, nstate}, u.options());
  auto dA_parts = torch::zeros({threads, dim, nstate}, u.options());
  auto dD_parts = torch::zeros({threads, dim}, u.options());
  auto dbias_parts = torch::zeros({threads, dim}, u.options());
  const T* A_ptr = A.data_ptr<T>();
  const T* D_ptr = D.has_value() ? D->data_ptr<T>() : nullptr;
  const T* bias_ptr = delta_bias.has_value() ? delta_bias->data_ptr<T>() : nullptr;
  const T* ckpt_ptr = checkpoints.data_ptr<T>();
  const Strides g_s = strides3(grad_out);
  const T* g_ptr = grad_out.data_ptr<T>();
  const int64_t* position = order.data();

  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    std::vector<T> states(chunk * nstate), decays(chunk * nstate), dh(nstate), dt_buffer(length), dy_buffer(length);
    T* dt_row = dt_buffer.data();
    T* dy_row = dy_buffer.data();
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t b = row_index / dim, d = row_index % dim, g = d / per_group;
      const Row<T> row = make_row<T>(u, delta, z, B, C, b, d, per_group);
      const T* A_d = A_ptr + d * A.stride(0);
      const T D_d = D_ptr ? D_ptr[d] : T(0);
      const T* g_row = g_ptr + b * g_s.b + d * g_s.d;
      T* du_row = du.data_ptr<T>() + (b * dim + d) * length;
      T* ddelta_row = ddelta.data_ptr<T>() + (b * dim + d) * length;
      T* dz_row = z.has_value() ? dz.data_ptr<T>() + (b * dim + d) * length : nullptr;
      T* dB_row = dB_parts.data_ptr<T>() + ((tid * batch + b) * groups + g) * length * nstate;
      T* dC_row = dC_parts.data_ptr<T>() + ((tid * batch + b) * groups + g) * length * nstate;
      T* dA_d = dA_parts.data_ptr<T>() + (tid * dim + d) * nstate;
      step_sizes(row, bias_ptr ? bias_ptr[d] : T(0), delta_softplus, length, dt_row);
      // gradient reaching y = C.h + D u, through the gate when there is one (pre-pass, memory order)
      if (row.z) {
#pragma omp simd
        for (int64_t m = 0; m < length; ++m) {
          const T zz = row.z[m * row.s_z];
          dy_row[m] = g_row[m * g_s.l] * zz * sigmoid(zz);
        }
      } else {
#pragma omp simd
        for (int64_t m = 0; m < length; ++m) dy_row[m] = g_row[m * g_s.l];
      }
      std::fill(dh.begin(), dh.end(), T(0));
      for (int64_t c = num_chunks - 1; c >= 0; --c) {
        const int64_t start = c * chunk, stop = std::min(length, start + chunk);
        const T* h0 = ckpt_ptr + ((b * dim + d) * num_chunks + c) * nstate;
        // recompute the chunk's states and decays from its checkpoint
        for (int64_t i = start; i < stop; ++i) {
          const int64_t m = position[i], k = i - start;
          const T dt = dt_row[m];
          const T du_m = dt * row.u[m * row.s_u];
          const T* B_m = row.B + m * row.s_B;
          const T* prev = k == 0 ? h0 : states.data() + (k - 1) * nstate;
          T* h = states.data() + k * nstate;
          T* a_k = decays.data() + k * nstate;
#pragma omp simd
          for (int64_t n = 0; n < nstate; ++n) {
            a_k[n] = fast_exp(dt * A_d[n]);
            h[n] = a_k[n] * prev[n] + du_m * B_m[n];
          }
        }
        // adjoint recurrence, last position first
        for (int64_t i = stop - 1; i >= start; --i) {
          const int64_t m = position[i], k = i - start;
          const T dt = dt_row[m];
          const T u_m = row.u[m * row.s_u];
          const T* B_m = row.B + m * row.s_B;
          const T* C_m = row.C + m * row.s_C;
          const T* h = states.data() + k * nstate;
          const T* prev = k == 0 ? h0 : states.data() + (k - 1) * nstate;
          const T* a_k = decays.data() + k * nstate;
          const T dy = dy_row[m];
          T* dB_m = dB_row + m * nstate;
          T* dC_m = dC_row + m * nstate;
          T ddt = 0, du_acc = 0, y = 0;
#pragma omp simd reduction(+ : du_acc, ddt, y)
          for (int64_t n = 0; n < nstate; ++n) {
            const T dh_n = dh[n] + dy * C_m[n];
            y += C_m[n] * h[n];
            dC_m[n] += dy * h[n];
            const T da = dh_n * prev[n] * a_k[n];  // d(loss)/d(delta*A) through the decay
            ddt += da * A_d[n] + dh_n * B_m[n] * u_m;
            dA_d[n] += da * dt;
            dB_m[n] += dh_n * dt * u_m;
            du_acc += dh_n * dt * B_m[n];
            dh[n] = dh_n * a_k[n];
          }
          ddelta_row[m] = ddt;
          du_row[m] = du_acc;
          if (dz_row) dz_row[m] = y;  // pre-gate y without the skip term; finished in the post-pass
        }
      }
      // post-pass in memory order: skip connection, gate and softplus derivatives, parameter sums
      T dD_acc = 0, dbias_acc = 0;
#pragma omp simd reduction(+ : dD_acc, dbias_acc)
      for (int64_t m = 0; m < length; ++m) {
        const T u_m = row.u[m * row.s_u];
        dD_acc += dy_row[m] * u_m;
        du_row[m] += dy_row[m] * D_d;
        // softplus'(x) = sigmoid(x) = 1 - exp(-softplus(x))
        const T ddt = delta_softplus ? ddelta_row[m] * (T(1) - fast_exp(-dt_row[m])) : ddelta_row[m];
        ddelta_row[m] = ddt;
        dbias_acc += ddt;
      }
      if (dz_row) {
#pragma omp simd
        for (int64_t m = 0; m < length; ++m) {
          const T zz = row.z[m * row.s_z];
          const T sig = sigmoid(zz);
          dz_row[m] = g_row[m * g_s.l] * (dz_row[m] + D_d * row.u[m * row.s_u]) * sig * (T(1) + zz * (T(1) - sig));
        }
      }
      dD_parts.data_ptr<T>()[tid * dim + d] += dD_acc;
      dbias_parts.data_ptr<T>()[tid * dim + d] += dbias_acc;
    }
  });
  return {du, ddelta, dA_parts.sum(0), dB_parts.sum(0), dC_parts.sum(0), dD_parts.sum(0), dz, dbias_parts.sum(0)};
}

// pre[i] = bias + sum_k w[k] * x_padded[i + k]: one causal conv row over a front-padded, scan-ordered input.
template <typename T>
inline void conv_row(const T* x_padded, const T* w, int64_t width, T bias, int64_t length, T* pre) {
#pragma omp simd
  for (int64_t i = 0; i < length; ++i) pre[i] = bias;
  for (int64_t k = 0; k < width; ++k) {
    const T wk = w[k];
#pragma omp simd
    for (int64_t i = 0; i < length; ++i) pre[i] += wk * x_padded[i + k];
  }
}

// Causal depthwise conv1d along a scan order. Each row is gathered into scan order (zero-padded in front), convolved
// with vectorised loops and scattered back to memory order; everything per row stays in L1/L2.
template <typename T>
torch::Tensor conv_forward_impl(const torch::Tensor& x, const torch::Tensor& weight,
                                const c10::optional<torch::Tensor>& bias, bool silu,
                                const std::vector<int64_t>& order) {
  const int64_t batch = x.size(0), dim = x.size(1), length = x.size(2), width = weight.size(1);
  auto out = torch::empty({batch, dim, length}, x.options());
  const Strides xs = strides3(x);
  const int64_t* position = order.data();
  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> padded(length + width - 1, T(0)), result(length), w(width);
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t b = row_index / dim, d = row_index % dim;
      const T* x_row = x.data_ptr<T>() + b * xs.b + d * xs.d;
      for (int64_t k = 0; k < width; ++k) w[k] = weight.data_ptr<T>()[d * weight.stride(0) + k * weight.stride(1)];
      const T bias_d = bias.has_value() ? bias->data_ptr<T>()[d] : T(0);
      T* out_row = out.data_ptr<T>() + (b * dim + d) * length;
      T* xp = padded.data() + width - 1;
      for (int64_t i = 0; i < length; ++i) xp[i] = x_row[position[i] * xs.l];
      T* r = result.data();
      conv_row(padded.data(), w.data(), width, bias_d, length, r);
      if (silu) {
#pragma omp simd
        for (int64_t i = 0; i < length; ++i) r[i] = r[i] * sigmoid(r[i]);
      }
      for (int64_t i = 0; i < length; ++i) out_row[position[i]] = r[i];
    }
  });
  return out;
}

template <typename T>
std::vector<torch::Tensor> conv_backward_impl(const torch::Tensor& grad_out, const torch::Tensor& x,
                                              const torch::Tensor& weight, const c10::optional<torch::Tensor>& bias,
                                              bool silu, const std::vector<int64_t>& order) {
  const int64_t batch = x.size(0), dim = x.size(1), length = x.size(2), width = weight.size(1);
  const int threads = at::get_num_threads();
  auto dx = torch::empty({batch, dim, length}, x.options());
  auto dw_parts = torch::zeros({threads, dim, width}, x.options());
  auto db_parts = torch::zeros({threads, dim}, x.options());
  const Strides xs = strides3(x), gs = strides3(grad_out);
  const int64_t* position = order.data();
  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    const int tid = at::get_thread_num();
    // x zero-padded in front, gradient zero-padded at the back, both in scan order
    std::vector<T> x_padded(length + width - 1, T(0)), g_padded(length + width - 1, T(0)), dx_scan(length), w(width);
    for (int64_t row_index = begin; row_index < end; ++row_index) {
      const int64_t b = row_index / dim, d = row_index % dim;
      const T* x_row = x.data_ptr<T>() + b * xs.b + d * xs.d;
      const T* g_row = grad_out.data_ptr<T>() + b * gs.b + d * gs.d;
      for (int64_t k = 0; k < width; ++k) w[k] = weight.data_ptr<T>()[d * weight.stride(0) + k * weight.stride(1)];
      const T bias_d = bias.has_value() ? bias->data_ptr<T>()[d] : T(0);
      T* xp = x_padded.data() + width - 1;
      T* g = g_padded.data();
      const T* xw = x_padded.data();
      for (int64_t i = 0; i < length; ++i) {
        xp[i] = x_row[position[i] * xs.l];
        g[i] = g_row[position[i] * gs.l];
      }
      if (silu) {  // recompute the pre-activation and apply silu'(pre) = sig (1 + pre (1 - sig))
        T* pre = dx_scan.data();
        conv_row(xw, w.data(), width, bias_d, length, pre);
#pragma omp simd
        for (int64_t i = 0; i < length; ++i) {
          const T sig = sigmoid(pre[i]);
          g[i] *= sig * (T(1) + pre[i] * (T(1) - sig));
        }
      }
      T db = 0;
#pragma omp simd reduction(+ : db)
      for (int64_t i = 0; i < length; ++i) db += g[i];
      T* dw = dw_parts.data_ptr<T>() + (tid * dim + d) * width;
      for (int64_t k = 0; k < width; ++k) {
        T acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < length; ++i) acc += g[i] * xw[i + k];
        dw[k] += acc;
      }
      // dx at scan position j collects g[j + width - 1 - k] * w[k]
      T* dxs = dx_scan.data();
#pragma omp simd
      for (int64_t j = 0; j < length; ++j) dxs[j] = T(0);
      for (int64_t k = 0; k < width; ++k) {
        const T wk = w[k];
        const T* gk = g + (width - 1 - k);
#pragma omp simd
        for (int64_t j = 0; j < length; ++j) dxs[j] += wk * gk[j];
      }
      T* dx_row = dx.data_ptr<T>() + (b * dim + d) * length;
      for (int64_t j = 0; j < length; ++j) dx_row[position[j]] = dxs[j];
      db_parts.data_ptr<T>()[tid * dim + d] += db;
    }
  });
  return {dx, dw_parts.sum(0), db_parts.sum(0)};
}

}  // namespace

std::vector<torch::Tensor> scan_forward(torch::Tensor u, torch::Tensor delta, torch::Tensor A, torch::Tensor B,
                                        torch::Tensor C, c10::optional<torch::Tensor> D,
                                        c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                        bool delta_softplus, int64_t order_kind, int64_t frames, int64_t chunk) {
  check_scan_args(u, delta, A, B, C);
  const std::vector<int64_t> order = make_order(order_kind, u.size(2), frames);
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "vivim_scan_forward", [&] {
    result = scan_forward_impl<scalar_t>(u, delta, A, B, C, D, z, delta_bias, delta_softplus, order, chunk);
  });
  return result;
}

std::vector<torch::Tensor> scan_backward(torch::Tensor grad_out, torch::Tensor u, torch::Tensor delta, torch::Tensor A,
                                         torch::Tensor B, torch::Tensor C, c10::optional<torch::Tensor> D,
                                         c10::optional<torch::Tensor> z, c10::optional<torch::Tensor> delta_bias,
                                         bool delta_softplus, int64_t order_kind, int64_t frames, int64_t chunk,
                                         torch::Tensor checkpoints) {
  check_scan_args(u, delta, A, B, C);
  const std::vector<int64_t> order = make_order(order_kind, u.size(2), frames);
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "vivim_scan_backward", [&] {
    result = scan_backward_impl<scalar_t>(grad_out, u, delta, A, B, C, D, z, delta_bias, delta_softplus, order, chunk,
                                          checkpoints);
  });
  return result;
}

torch::Tensor conv_forward(torch::Tensor x, torch::Tensor weight, c10::optional<torch::Tensor> bias, bool silu,
                           int64_t order_kind, int64_t frames) {
  TORCH_CHECK(x.dim() == 3 && weight.dim() == 2 && weight.size(0) == x.size(1), "x (batch, dim, L), weight (dim, W)");
  const std::vector<int64_t> order = make_order(order_kind, x.size(2), frames);
  torch::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vivim_conv_forward",
                             [&] { out = conv_forward_impl<scalar_t>(x, weight, bias, silu, order); });
  return out;
}

std::vector<torch::Tensor> conv_backward(torch::Tensor grad_out, torch::Tensor x, torch::Tensor weight,
                                         c10::optional<torch::Tensor> bias, bool silu, int64_t order_kind,
                                         int64_t frames) {
  const std::vector<int64_t> order = make_order(order_kind, x.size(2), frames);
  std::vector<torch::Tensor> result;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "vivim_conv_backward",
                             [&] { result = conv_backward_impl<scalar_t>(grad_out, x, weight, bias, silu, order); });
  return result;
}

// Seconds to evaluate fast_exp on `elements` values per thread (an L1-resident buffer swept `repeats` times), on
// every thread of the pool: the vectorised-exp throughput that bounds the scan (it needs D * L * N exps).
double exp_throughput(int64_t elements, int64_t repeats) {
  const int threads = at::get_num_threads();
  std::vector<double> checksums(threads, 0.0);
  const auto start = std::chrono::steady_clock::now();
  at::parallel_for(0, threads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      std::vector<float> values(elements), results(elements);
      for (int64_t i = 0; i < elements; ++i) values[i] = -0.01f * static_cast<float>(i % 1000);
      float* v = values.data();
      float* r = results.data();
      for (int64_t rep = 0; rep < repeats; ++rep) {
#pragma omp simd
        for (int64_t i = 0; i < elements; ++i) r[i] = fast_exp(v[i]);
        v[rep % elements] += r[(rep * 7) % elements] * 1e-12f;  // keep the sweeps dependent and alive
      }
      checksums[t] = r[0];
    }
  });
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  TORCH_CHECK(std::isfinite(checksums[0]), "exp_throughput produced a non-finite value");
  return seconds;
}

// The build's channel-vectorised tile: (channels per block, states).
std::vector<int64_t> tile() { return {kLanes, kBlockState}; }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("tile", &tile, "(channels per block, states) of the channel-vectorised float32 path");
  m.def("exp_throughput", &exp_throughput, "seconds for `elements` fast_exp calls x `repeats` on every thread");
  m.def("scan_forward", &scan_forward, "selective scan forward (CPU)");
  m.def("scan_backward", &scan_backward, "selective scan backward (CPU)");
  m.def("conv_forward", &conv_forward, "causal depthwise conv1d forward (CPU)");
  m.def("conv_backward", &conv_backward, "causal depthwise conv1d backward (CPU)");
}
