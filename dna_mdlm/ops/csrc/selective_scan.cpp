// CPU kernels of dna_mdlm.ops: the selective scan (Mamba S6 recurrence) and the depthwise causal
// conv in front of it, both on token-major (stream, batch, L, channel) activations, with
// hand-written backward passes.
//
// The scan's backward recomputes: the forward keeps only the state at the start of every chunk of
// `chunk` steps, and the backward rebuilds one chunk at a time into a small buffer (as mamba-ssm's
// CUDA kernel recomputes instead of storing per-step states), so saved memory is 1/chunk of the
// state history and nothing of size (batch, d_inner, d_state, L) ever exists.
//
// Instruction sets: the kernels (scan_kernels.inc) are compiled three times, for AVX-512, for
// AVX2+FMA and portably, and the caller picks one at run time (`isa`); float64 always takes the
// portable code. The Python side (selective_scan.py) validates shapes, dtypes and devices.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define DNA_MDLM_X86_SIMD 1
#include <immintrin.h>
#else
#define DNA_MDLM_X86_SIMD 0
#endif

namespace {

// Shapes (K directions, Bt batch rows, L steps, E channels, G groups of B/C, N states). Strided
// tensors are passed as pointer + element strides; the last dimension is always contiguous.
template <typename T>
struct ScanArgs {
  int64_t K, Bt, L, E, N, G;
  const T* u;
  int64_t u_sk, u_sb, u_st;
  const T* delta;  // (K, Bt, L, E), or (K, Bt, L, R) low-rank input of a fused dt_proj when R > 0
  int64_t d_sk, d_sb, d_st;
  const T* dtw;    // (K, R, E): dt_proj weight transposed, when R > 0
  int64_t R;
  const T* A;   // (K, N, E): A transposed so one state's channels are contiguous
  const T* A2;  // (K, N, E): A * log2(e), so exp(dt * A) = exp2(dt * A2)
  const T* Bm;
  int64_t B_sk, B_sb, B_st, B_sg;
  const T* Cm;
  int64_t C_sk, C_sb, C_st, C_sg;
  const T* D;     // (K, E) or null
  const T* z;     // gate or null; z_sk == 0 when one gate is shared by all K directions
  int64_t z_sk, z_sb, z_st;
  const T* bias;  // (K, E) or null
  const bool* mask;  // (mask_rows, L): row bt % mask_rows; false = padding; or null
  int64_t mask_rows;
  const bool* reverse;  // (K, Bt)
  bool softplus, sum_k;
  int64_t chunk;
  T* out;    // (Bt, L, E) when sum_k, else (K, Bt, L, E)
  T* last;   // (K, Bt, N, E) or null
  T* ckpt;   // (Bt, K, n_chunks, N, E) or null: batch-major, so a range of rows is one block
  const T* dout;  // do_sk == 0 when sum_k
  int64_t do_sk, do_sb, do_st;
  const T* dlast;  // (K, Bt, N, E) or null
  T* du;           // (K, Bt, L, E)
  T* ddelta;       // (K, Bt, L, E) when R == 0; may alias delta (each element is read before written)
  T* dW_part;      // (Bt, K, R, E) when R > 0
  T* dA_part;      // (Bt, K, N, E); dB, dC (and d dt_low) go to one (K, Bt, L, R + 2GN) block
  T* dD_part;      // (Bt, K, E) or null
  T* dbias_part;   // (Bt, K, E) or null
  T* dz;           // (Bt, L, E) for a shared gate, else (K, Bt, L, E); or null
  T* y_out;        // the forward output before the gate, recomputed (layout of out), or null
};

template <typename T>
struct ConvArgs {
  int64_t K, Bt, L, E, Wk;
  const T* x;  // x_sk == 0 when all K directions read the same input
  int64_t x_sk, x_sb, x_st;
  const T* w;  // (K, Wk, E)
  const T* b;  // (K, E) or null
  const bool* mask;
  int64_t mask_rows;
  const bool* reverse;  // (K, Bt)
  bool silu;
  T* out;         // (K, Bt, L, E)
  const T* dout;  // (K, Bt, L, E)
  T* dx;          // (Bt, L, E) summed over K when dx_shared, else (K, Bt, L, E)
  bool dx_shared;
  T* dw_part;  // (Bt, K, Wk, E)
  T* db_part;  // (Bt, K, E) or null
};

constexpr float kLog2e = 1.4426950408889634f;
// 2^f ~ sum_i c_i f^i on [-1/2, 1/2]; log1p(e) / e ~ sum_i c_i e^i on [0, 1] (fitted for this file by
// iteratively reweighted least squares on the relative error, a near-minimax fit). exp2's constant term
// is held at exactly 1: a free fit puts it 1 ulp above 1 in float32, and that bias at dt*A ~ 0 compounds
// over the thousands of steps a slowly decaying state remembers.
constexpr float kExp2Poly[6] = {1.0f, 0.6931469775891529f, 0.24022242076537384f, 0.055507337559975195f,
                                0.009671513120338666f, 0.0013264724113960786f};
constexpr float kLog1pPoly[9] = {0.9999999698778625f,  -0.49999493060392264f, 0.33319094882563033f,
                                 -0.2484296597385292f, 0.19105941075783667f,  -0.13663102976926758f,
                                 0.07822424045419359f, -0.029504174016476793f, 0.005232425637669104f};

namespace portable {
#include "scan_kernels.inc"
}  // namespace portable

#if DNA_MDLM_X86_SIMD
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2 {
struct VF {
  using value_type = float;
  static constexpr int W = 8;
  __m256 v;
  static inline VF load(const float* p) { return {_mm256_loadu_ps(p)}; }
  inline void store(float* p) const { _mm256_storeu_ps(p, v); }
  static inline VF set1(float x) { return {_mm256_set1_ps(x)}; }
  static inline VF zero() { return {_mm256_setzero_ps()}; }
  friend inline VF operator+(VF a, VF b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend inline VF operator-(VF a, VF b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend inline VF operator*(VF a, VF b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend inline VF operator/(VF a, VF b) { return {_mm256_div_ps(a.v, b.v)}; }
  static inline VF fma(VF a, VF b, VF c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  static inline VF max(VF a, VF b) { return {_mm256_max_ps(a.v, b.v)}; }
  static inline VF min(VF a, VF b) { return {_mm256_min_ps(a.v, b.v)}; }
  static inline VF abs(VF a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.0f), a.v)}; }
  static inline VF select_ge(VF x, VF y, VF a, VF b) {
    return {_mm256_blendv_ps(b.v, a.v, _mm256_cmp_ps(x.v, y.v, _CMP_GE_OQ))};
  }
  // 2^n is built in the exponent field, so n must stay in the normal range.
  static inline VF exp2_clamp(VF x) { return min(max(x, set1(-126.0f)), set1(126.0f)); }
  static inline VF round(VF x) { return {_mm256_round_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static inline VF ldexp(VF p, VF n) {
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127)), 23);
    return {_mm256_mul_ps(p.v, _mm256_castsi256_ps(e))};
  }
  static inline float hsum(VF a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  // out[i] += sum of the lanes of v[i], i < n: for 8 vectors a transpose-and-add tree (7 adds, 14
  // shuffles) whose result vector holds the 8 sums.
  static inline __m256 tree8(const VF* v) {
    __m256 s[4], t[2];
    for (int i = 0; i < 4; ++i)
      s[i] = _mm256_add_ps(_mm256_unpacklo_ps(v[2 * i].v, v[2 * i + 1].v), _mm256_unpackhi_ps(v[2 * i].v, v[2 * i + 1].v));
    for (int i = 0; i < 2; ++i) {
      const __m256d a = _mm256_castps_pd(s[2 * i]), b = _mm256_castps_pd(s[2 * i + 1]);
      t[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(a, b)), _mm256_castpd_ps(_mm256_unpackhi_pd(a, b)));
    }
    return _mm256_add_ps(_mm256_permute2f128_ps(t[0], t[1], 0x20), _mm256_permute2f128_ps(t[0], t[1], 0x31));
  }
  static inline void reduce_add(const VF* v, int64_t n, float* out) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(out + i, _mm256_add_ps(_mm256_loadu_ps(out + i), tree8(v + i)));
    for (; i < n; ++i) out[i] += hsum(v[i]);
  }
};
#include "simd_math.inc"
#include "scan_kernels.inc"
}  // namespace avx2
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma")
namespace avx512 {
struct VF {
  using value_type = float;
  static constexpr int W = 16;
  __m512 v;
  static inline VF load(const float* p) { return {_mm512_loadu_ps(p)}; }
  inline void store(float* p) const { _mm512_storeu_ps(p, v); }
  static inline VF set1(float x) { return {_mm512_set1_ps(x)}; }
  static inline VF zero() { return {_mm512_setzero_ps()}; }
  friend inline VF operator+(VF a, VF b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend inline VF operator-(VF a, VF b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend inline VF operator*(VF a, VF b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend inline VF operator/(VF a, VF b) { return {_mm512_div_ps(a.v, b.v)}; }
  static inline VF fma(VF a, VF b, VF c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  static inline VF max(VF a, VF b) { return {_mm512_max_ps(a.v, b.v)}; }
  static inline VF min(VF a, VF b) { return {_mm512_min_ps(a.v, b.v)}; }
  static inline VF abs(VF a) { return {_mm512_abs_ps(a.v)}; }
  static inline VF select_ge(VF x, VF y, VF a, VF b) {
    return {_mm512_mask_blend_ps(_mm512_cmp_ps_mask(x.v, y.v, _CMP_GE_OQ), b.v, a.v)};
  }
  // scalef handles the whole range (underflow to 0, overflow to inf): no clamp needed.
  static inline VF exp2_clamp(VF x) { return x; }
  static inline VF round(VF x) { return {_mm512_roundscale_ps(x.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static inline VF ldexp(VF p, VF n) { return {_mm512_scalef_ps(p.v, n.v)}; }
  static inline float hsum(VF a) { return _mm512_reduce_add_ps(a.v); }
  // out[i] += sum of the lanes of v[i], i < n: for 16 vectors a transpose-and-add tree (15 adds, 30
  // shuffles) whose result vector holds the 16 sums.
  static inline __m512 tree16(const VF* v) {
    __m512 s[8], t[4];
    for (int i = 0; i < 8; ++i)
      s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i].v, v[2 * i + 1].v), _mm512_unpackhi_ps(v[2 * i].v, v[2 * i + 1].v));
    for (int i = 0; i < 4; ++i) {
      const __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
      t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    const __m512 u0 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
    const __m512 u1 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(u0, u1, 0x88), _mm512_shuffle_f32x4(u0, u1, 0xDD));
  }
  static inline void reduce_add(const VF* v, int64_t n, float* out) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) _mm512_storeu_ps(out + i, _mm512_add_ps(_mm512_loadu_ps(out + i), tree16(v + i)));
    for (; i < n; ++i) out[i] += hsum(v[i]);
  }
};
#include "simd_math.inc"
#include "scan_kernels.inc"
}  // namespace avx512
#pragma GCC pop_options
#endif

enum Isa : int64_t { kPortable = 0, kAvx2 = 1, kAvx512 = 2 };

bool cpu_has(int64_t isa) {
  if (isa == kPortable) return true;
#if DNA_MDLM_X86_SIMD
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == kAvx2) return avx2;
  if (isa == kAvx512) return avx2 && __builtin_cpu_supports("avx512f");
#endif
  return false;
}

std::vector<int64_t> supported_isas() {
  std::vector<int64_t> out;
  for (int64_t isa : {kPortable, kAvx2, kAvx512})
    if (cpu_has(isa)) out.push_back(isa);
  return out;
}

void check_isa(int64_t isa) {
  TORCH_CHECK(cpu_has(isa), "dna_mdlm scan: instruction set ", isa, " is not available on this CPU or build");
}

// One entry per element type: float picks the instruction set, float64 always runs portably.
void scan_fwd_any(const ScanArgs<float>& a, int64_t isa, int64_t slices) {
#if DNA_MDLM_X86_SIMD
  if (isa == kAvx512) return avx512::run_scan_fwd<avx512::VF, float>(a, slices);
  if (isa == kAvx2) return avx2::run_scan_fwd<avx2::VF, float>(a, slices);
#endif
  portable::run_scan_fwd<portable::VS<float>, float>(a, slices);
}
void scan_fwd_any(const ScanArgs<double>& a, int64_t, int64_t slices) {
  portable::run_scan_fwd<portable::VS<double>, double>(a, slices);
}
void scan_bwd_any(const ScanArgs<float>& a, int64_t isa, int64_t slices, float* dX) {
#if DNA_MDLM_X86_SIMD
  if (isa == kAvx512) return avx512::run_scan_bwd<avx512::VF, float>(a, slices, dX);
  if (isa == kAvx2) return avx2::run_scan_bwd<avx2::VF, float>(a, slices, dX);
#endif
  portable::run_scan_bwd<portable::VS<float>, float>(a, slices, dX);
}
void scan_bwd_any(const ScanArgs<double>& a, int64_t, int64_t slices, double* dX) {
  portable::run_scan_bwd<portable::VS<double>, double>(a, slices, dX);
}
template <bool kBackward>
void conv_any(const ConvArgs<float>& a, int64_t isa, int64_t slices) {
#if DNA_MDLM_X86_SIMD
  if (isa == kAvx512) return avx512::run_conv<avx512::VF, float, kBackward>(a, slices);
  if (isa == kAvx2) return avx2::run_conv<avx2::VF, float, kBackward>(a, slices);
#endif
  portable::run_conv<portable::VS<float>, float, kBackward>(a, slices);
}
template <bool kBackward>
void conv_any(const ConvArgs<double>& a, int64_t, int64_t slices) {
  portable::run_conv<portable::VS<double>, double, kBackward>(a, slices);
}
void elementwise_any(const float* x, float* y, int64_t n, int64_t op, int64_t isa) {
#if DNA_MDLM_X86_SIMD
  if (isa == kAvx512) return avx512::run_elementwise<avx512::VF, float>(x, y, n, op);
  if (isa == kAvx2) return avx2::run_elementwise<avx2::VF, float>(x, y, n, op);
#endif
  portable::run_elementwise<portable::VS<float>, float>(x, y, n, op);
}
void elementwise_any(const double* x, double* y, int64_t n, int64_t op, int64_t) {
  portable::run_elementwise<portable::VS<double>, double>(x, y, n, op);
}

template <typename T>
const T* opt_ptr(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

void check_inner(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.stride(-1) == 1 || t.size(-1) == 1, "dna_mdlm scan: ", name, " needs a contiguous last dimension");
}

int64_t auto_slices(int64_t units, int64_t per_unit_tiles, int64_t requested) {
  if (requested > 0) return std::max<int64_t>(1, std::min(requested, per_unit_tiles));
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  if (units >= 2 * threads) return 1;
  return std::max<int64_t>(1, std::min(per_unit_tiles, (2 * threads + units - 1) / units));
}

template <typename T>
void fill_scan_args(ScanArgs<T>& a, const torch::Tensor& u, const torch::Tensor& delta,
                    const torch::Tensor& At, const torch::Tensor& A2, const torch::Tensor& dtw,
                    const torch::Tensor& B,
                    const torch::Tensor& C, const c10::optional<torch::Tensor>& D,
                    const c10::optional<torch::Tensor>& z,
                    const c10::optional<torch::Tensor>& delta_bias,
                    const c10::optional<torch::Tensor>& mask, const torch::Tensor& reverse,
                    bool softplus, bool sum_k, int64_t chunk) {
  a.K = u.size(0);
  a.Bt = u.size(1);
  a.L = u.size(2);
  a.E = u.size(3);
  a.G = B.size(3);
  a.N = B.size(4);
  a.u = u.data_ptr<T>();
  a.u_sk = u.stride(0);
  a.u_sb = u.stride(1);
  a.u_st = u.stride(2);
  a.delta = delta.data_ptr<T>();
  a.d_sk = delta.stride(0);
  a.d_sb = delta.stride(1);
  a.d_st = delta.stride(2);
  a.R = dtw.defined() ? dtw.size(1) : 0;
  a.dtw = dtw.defined() ? dtw.data_ptr<T>() : nullptr;
  a.A = At.data_ptr<T>();
  a.A2 = A2.data_ptr<T>();
  a.Bm = B.data_ptr<T>();
  a.B_sk = B.stride(0);
  a.B_sb = B.stride(1);
  a.B_st = B.stride(2);
  a.B_sg = B.stride(3);
  a.Cm = C.data_ptr<T>();
  a.C_sk = C.stride(0);
  a.C_sb = C.stride(1);
  a.C_st = C.stride(2);
  a.C_sg = C.stride(3);
  a.D = opt_ptr<T>(D);
  a.z = opt_ptr<T>(z);
  a.z_sk = z.has_value() ? z->stride(0) : 0;
  a.z_sb = z.has_value() ? z->stride(1) : 0;
  a.z_st = z.has_value() ? z->stride(2) : 0;
  a.bias = opt_ptr<T>(delta_bias);
  a.mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  a.mask_rows = mask.has_value() ? mask->size(0) : 1;
  a.reverse = reverse.data_ptr<bool>();
  a.softplus = softplus;
  a.sum_k = sum_k;
  a.chunk = chunk;
  a.out = a.last = a.ckpt = nullptr;
  a.dout = a.dlast = nullptr;
  a.do_sk = a.do_sb = a.do_st = 0;
  a.du = a.ddelta = a.dW_part = a.dA_part = a.dD_part = a.dbias_part = a.dz = a.y_out = nullptr;
}

void check_scan_inputs(const torch::Tensor& u, const torch::Tensor& delta, const torch::Tensor& A,
                       const torch::Tensor& B, const torch::Tensor& C,
                       const c10::optional<torch::Tensor>& z, const c10::optional<torch::Tensor>& mask,
                       const torch::Tensor& reverse, int64_t chunk, const c10::optional<torch::Tensor>& dt_proj) {
  TORCH_CHECK(u.dim() == 4, "dna_mdlm scan: u must be (K, batch, L, E)");
  if (dt_proj.has_value()) {
    TORCH_CHECK(dt_proj->dim() == 3 && dt_proj->size(0) == u.size(0) && dt_proj->size(1) == u.size(3) &&
                    delta.dim() == 4 && delta.size(0) == u.size(0) && delta.size(1) == u.size(1) &&
                    delta.size(2) == u.size(2) && delta.size(3) == dt_proj->size(2),
                "dna_mdlm scan: with dt_proj (K, E, R), delta must be the low-rank (K, batch, L, R)");
  } else {
    TORCH_CHECK(delta.sizes() == u.sizes(), "dna_mdlm scan: u and delta must be (K, batch, L, E)");
  }
  TORCH_CHECK(B.dim() == 5 && C.sizes() == B.sizes(), "dna_mdlm scan: B and C must be (K, batch, L, G, N)");
  TORCH_CHECK(A.dim() == 3 && A.size(0) == u.size(0) && A.size(1) == u.size(3) && A.size(2) == B.size(4),
              "dna_mdlm scan: A must be (K, E, N)");
  TORCH_CHECK(B.size(4) <= 256, "dna_mdlm scan: d_state above 256 is not supported");
  TORCH_CHECK(u.size(3) % B.size(3) == 0, "dna_mdlm scan: groups must divide E");
  TORCH_CHECK(reverse.dtype() == torch::kBool && reverse.is_contiguous() && reverse.numel() == u.size(0) * u.size(1),
              "dna_mdlm scan: reverse must be a contiguous (K, batch) bool tensor");
  TORCH_CHECK(chunk >= 1, "dna_mdlm scan: chunk must be positive");
  if (mask.has_value())
    TORCH_CHECK(mask->dtype() == torch::kBool && mask->is_contiguous() && mask->dim() == 2 &&
                    mask->size(1) == u.size(2) && u.size(1) % mask->size(0) == 0,
                "dna_mdlm scan: mask must be a contiguous (rows, L) bool tensor with rows dividing batch");
  for (auto* t : {&u, &delta, &B, &C}) check_inner(*t, "an input");
  if (z.has_value()) {
    TORCH_CHECK(z->dim() == 4 && z->size(1) == u.size(1) && z->size(2) == u.size(2) && z->size(3) == u.size(3),
                "dna_mdlm scan: z must be (K, batch, L, E)");
    check_inner(*z, "z");
  }
}

std::vector<torch::Tensor> scan_fwd(const torch::Tensor& u, const torch::Tensor& delta,
                                    const torch::Tensor& A, const torch::Tensor& B,
                                    const torch::Tensor& C, const c10::optional<torch::Tensor>& D,
                                    const c10::optional<torch::Tensor>& z,
                                    const c10::optional<torch::Tensor>& delta_bias,
                                    const c10::optional<torch::Tensor>& mask,
                                    const torch::Tensor& reverse, bool softplus, bool sum_k,
                                    int64_t chunk, bool save_ckpt, bool want_last,
                                    const c10::optional<torch::Tensor>& dt_proj,
                                    const c10::optional<torch::Tensor>& ckpt_out, int64_t isa,
                                    int64_t slices) {
  check_isa(isa);
  check_scan_inputs(u, delta, A, B, C, z, mask, reverse, chunk, dt_proj);
  const int64_t K = u.size(0), Bt = u.size(1), L = u.size(2), E = u.size(3), G = B.size(3), N = B.size(4);
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  auto At = A.transpose(1, 2).contiguous();
  auto A2 = At * 1.4426950408889634;
  auto dtw = dt_proj.has_value() ? dt_proj->transpose(1, 2).contiguous() : torch::Tensor();
  auto out = sum_k ? torch::empty({Bt, L, E}, u.options()) : torch::empty({K, Bt, L, E}, u.options());
  auto last = want_last ? torch::empty({K, Bt, N, E}, u.options()) : torch::Tensor();
  torch::Tensor ckpt;
  if (save_ckpt && ckpt_out.has_value()) {
    TORCH_CHECK(ckpt_out->is_contiguous() && ckpt_out->numel() == Bt * K * n_chunks * N * E,
                "dna_mdlm scan: ckpt_out must be a contiguous (batch, K, n_chunks, N, E) tensor");
    ckpt = *ckpt_out;
  } else if (save_ckpt) {
    ckpt = torch::empty({Bt, K, n_chunks, N, E}, u.options());
  }
  const int64_t n_slices = auto_slices(Bt * G, (E / G + 15) / 16, slices);
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dna_mdlm_scan_fwd", [&] {
    ScanArgs<scalar_t> a;
    fill_scan_args<scalar_t>(a, u, delta, At, A2, dtw, B, C, D, z, delta_bias, mask, reverse, softplus, sum_k, chunk);
    a.out = out.data_ptr<scalar_t>();
    a.last = want_last ? last.data_ptr<scalar_t>() : nullptr;
    a.ckpt = save_ckpt ? ckpt.data_ptr<scalar_t>() : nullptr;
    scan_fwd_any(a, isa, n_slices);
  });
  return {out, last, ckpt};
}

std::vector<torch::Tensor> scan_bwd(const torch::Tensor& u, const torch::Tensor& delta,
                                    const torch::Tensor& A, const torch::Tensor& B,
                                    const torch::Tensor& C, const c10::optional<torch::Tensor>& D,
                                    const c10::optional<torch::Tensor>& z,
                                    const c10::optional<torch::Tensor>& delta_bias,
                                    const c10::optional<torch::Tensor>& mask,
                                    const torch::Tensor& reverse, bool softplus, bool sum_k,
                                    int64_t chunk, const torch::Tensor& ckpt,
                                    const torch::Tensor& dout,
                                    const c10::optional<torch::Tensor>& dlast, bool want_dz, bool want_y,
                                    const c10::optional<torch::Tensor>& dt_proj,
                                    const c10::optional<torch::Tensor>& ddelta_out, int64_t isa,
                                    int64_t slices) {
  check_isa(isa);
  check_scan_inputs(u, delta, A, B, C, z, mask, reverse, chunk, dt_proj);
  const int64_t K = u.size(0), Bt = u.size(1), L = u.size(2), E = u.size(3), G = B.size(3), N = B.size(4);
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  TORCH_CHECK(ckpt.is_contiguous() && ckpt.numel() == K * Bt * n_chunks * N * E, "dna_mdlm scan: bad checkpoint tensor");
  TORCH_CHECK(!dt_proj.has_value() || !ddelta_out.has_value(), "dna_mdlm scan: ddelta_out needs a full delta");
  TORCH_CHECK(dout.dim() == (sum_k ? 3 : 4), "dna_mdlm scan: dout must be (batch, L, E) when summing directions, else (K, batch, L, E)");
  check_inner(dout, "dout");
  auto At = A.transpose(1, 2).contiguous();
  auto A2 = At * 1.4426950408889634;
  auto dtw = dt_proj.has_value() ? dt_proj->transpose(1, 2).contiguous() : torch::Tensor();
  const int64_t R = dt_proj.has_value() ? dt_proj->size(2) : 0;
  auto du = torch::empty({K, Bt, L, E}, u.options());
  torch::Tensor ddelta;
  if (R > 0) {
    // no full-size delta gradient: it goes straight to dt_low and the dt_proj weight
  } else if (ddelta_out.has_value()) {
    TORCH_CHECK(ddelta_out->is_contiguous() && ddelta_out->numel() == K * Bt * L * E, "dna_mdlm scan: bad ddelta buffer");
    ddelta = *ddelta_out;
  } else {
    ddelta = torch::empty({K, Bt, L, E}, u.options());
  }
  const int64_t n_slices = auto_slices(Bt * G, (E / G + 15) / 16, slices);
  auto dX = torch::zeros({n_slices, K, Bt, L, R + 2 * G * N}, u.options());
  auto dW_part = R > 0 ? torch::empty({Bt, K, R, E}, u.options()) : torch::Tensor();
  auto dA_part = torch::empty({Bt, K, N, E}, u.options());
  auto dD_part = D.has_value() ? torch::empty({Bt, K, E}, u.options()) : torch::Tensor();
  auto dbias_part = delta_bias.has_value() ? torch::empty({Bt, K, E}, u.options()) : torch::Tensor();
  const bool z_shared = z.has_value() && z->stride(0) == 0 && K > 1;
  auto dz = z.has_value() && want_dz ? (z_shared ? torch::empty({Bt, L, E}, u.options()) : torch::empty({K, Bt, L, E}, u.options()))
                          : torch::Tensor();
  auto y = want_y ? (sum_k ? torch::empty({Bt, L, E}, u.options()) : torch::empty({K, Bt, L, E}, u.options()))
                  : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dna_mdlm_scan_bwd", [&] {
    ScanArgs<scalar_t> a;
    fill_scan_args<scalar_t>(a, u, delta, At, A2, dtw, B, C, D, z, delta_bias, mask, reverse, softplus, sum_k, chunk);
    if (z_shared) a.z_sk = 0;
    a.ckpt = ckpt.data_ptr<scalar_t>();
    a.dout = dout.data_ptr<scalar_t>();
    a.do_sk = sum_k ? 0 : dout.stride(0);
    a.do_sb = dout.stride(sum_k ? 0 : 1);
    a.do_st = dout.stride(sum_k ? 1 : 2);
    a.dlast = opt_ptr<scalar_t>(dlast);
    a.du = du.data_ptr<scalar_t>();
    a.ddelta = R > 0 ? nullptr : ddelta.data_ptr<scalar_t>();
    a.dW_part = R > 0 ? dW_part.data_ptr<scalar_t>() : nullptr;
    a.dA_part = dA_part.data_ptr<scalar_t>();
    a.dD_part = D.has_value() ? dD_part.data_ptr<scalar_t>() : nullptr;
    a.dbias_part = delta_bias.has_value() ? dbias_part.data_ptr<scalar_t>() : nullptr;
    a.dz = z.has_value() && want_dz ? dz.data_ptr<scalar_t>() : nullptr;
    a.y_out = want_y ? y.data_ptr<scalar_t>() : nullptr;
    scan_bwd_any(a, isa, n_slices, dX.data_ptr<scalar_t>());
  });
  auto dA = dA_part.sum(0).transpose(1, 2);  // (K, E, N)
  auto dXs = n_slices == 1 ? dX.squeeze(0) : dX.sum(0);  // (K, Bt, L, R + 2GN)
  auto dW = R > 0 ? dW_part.sum(0).transpose(1, 2) : torch::Tensor();  // (K, E, R)
  auto dD = D.has_value() ? dD_part.sum(0) : torch::Tensor();
  auto dbias = delta_bias.has_value() ? dbias_part.sum(0) : torch::Tensor();
  return {du, ddelta, dA, dXs, dD, dz, dbias, y, dW};
}

template <typename T>
void fill_conv_args(ConvArgs<T>& a, const torch::Tensor& x, const torch::Tensor& wt,
                    const c10::optional<torch::Tensor>& b, const c10::optional<torch::Tensor>& mask,
                    const torch::Tensor& reverse, bool silu) {
  a.K = wt.size(0);
  a.Bt = x.size(1);
  a.L = x.size(2);
  a.E = x.size(3);
  a.Wk = wt.size(1);
  a.x = x.data_ptr<T>();
  a.x_sk = x.size(0) == 1 ? 0 : x.stride(0);
  a.x_sb = x.stride(1);
  a.x_st = x.stride(2);
  a.w = wt.data_ptr<T>();
  a.b = opt_ptr<T>(b);
  a.mask = mask.has_value() ? mask->data_ptr<bool>() : nullptr;
  a.mask_rows = mask.has_value() ? mask->size(0) : 1;
  a.reverse = reverse.data_ptr<bool>();
  a.silu = silu;
  a.out = nullptr;
  a.dout = nullptr;
  a.dx = nullptr;
  a.dx_shared = false;
  a.dw_part = a.db_part = nullptr;
}

void check_conv_inputs(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& mask,
                       const torch::Tensor& reverse) {
  TORCH_CHECK(x.dim() == 4 && (x.size(0) == 1 || x.size(0) == w.size(0)), "dna_mdlm conv: x must be (K or 1, batch, L, E)");
  TORCH_CHECK(w.dim() == 3 && w.size(1) == x.size(3) && w.size(2) >= 1 && w.size(2) <= 16,
              "dna_mdlm conv: weight must be (K, E, width <= 16)");
  check_inner(x, "x");
  TORCH_CHECK(reverse.dtype() == torch::kBool && reverse.is_contiguous() && reverse.numel() == w.size(0) * x.size(1),
              "dna_mdlm conv: reverse must be a contiguous (K, batch) bool tensor");
  if (mask.has_value())
    TORCH_CHECK(mask->dtype() == torch::kBool && mask->is_contiguous() && mask->dim() == 2 &&
                    mask->size(1) == x.size(2) && x.size(1) % mask->size(0) == 0,
                "dna_mdlm conv: mask must be a contiguous (rows, L) bool tensor with rows dividing batch");
}

torch::Tensor conv_fwd(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& b,
                       const c10::optional<torch::Tensor>& mask, const torch::Tensor& reverse, bool silu,
                       int64_t isa, int64_t slices) {
  check_isa(isa);
  check_conv_inputs(x, w, mask, reverse);
  const int64_t K = w.size(0), Bt = x.size(1), L = x.size(2), E = x.size(3);
  auto wt = w.transpose(1, 2).contiguous();
  auto out = torch::empty({K, Bt, L, E}, x.options());
  const int64_t n_slices = auto_slices(Bt, (E + 15) / 16, slices);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dna_mdlm_conv_fwd", [&] {
    ConvArgs<scalar_t> a;
    fill_conv_args<scalar_t>(a, x, wt, b, mask, reverse, silu);
    a.out = out.data_ptr<scalar_t>();
    conv_any<false>(a, isa, n_slices);
  });
  return out;
}

std::vector<torch::Tensor> conv_bwd(const torch::Tensor& x, const torch::Tensor& w,
                                    const c10::optional<torch::Tensor>& b,
                                    const c10::optional<torch::Tensor>& mask,
                                    const torch::Tensor& reverse, bool silu, const torch::Tensor& dout,
                                    int64_t isa, int64_t slices) {
  check_isa(isa);
  check_conv_inputs(x, w, mask, reverse);
  const int64_t K = w.size(0), Bt = x.size(1), L = x.size(2), E = x.size(3), Wk = w.size(2);
  TORCH_CHECK(dout.is_contiguous() && dout.dim() == 4 && dout.size(0) == K && dout.size(1) == Bt &&
                  dout.size(2) == L && dout.size(3) == E,
              "dna_mdlm conv: dout must be a contiguous (K, batch, L, E) tensor");
  auto wt = w.transpose(1, 2).contiguous();
  const bool shared = x.size(0) == 1 && K > 1;
  auto dx = shared ? torch::empty({Bt, L, E}, x.options()) : torch::empty({K, Bt, L, E}, x.options());
  auto dw_part = torch::empty({Bt, K, Wk, E}, x.options());
  auto db_part = b.has_value() ? torch::empty({Bt, K, E}, x.options()) : torch::Tensor();
  const int64_t n_slices = auto_slices(Bt, (E + 15) / 16, slices);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dna_mdlm_conv_bwd", [&] {
    ConvArgs<scalar_t> a;
    fill_conv_args<scalar_t>(a, x, wt, b, mask, reverse, silu);
    a.dout = dout.data_ptr<scalar_t>();
    a.dx = dx.data_ptr<scalar_t>();
    a.dx_shared = shared;
    a.dw_part = dw_part.data_ptr<scalar_t>();
    a.db_part = b.has_value() ? db_part.data_ptr<scalar_t>() : nullptr;
    conv_any<true>(a, isa, n_slices);
  });
  auto dw = dw_part.sum(0).transpose(1, 2);  // (K, E, Wk)
  auto db = b.has_value() ? db_part.sum(0) : torch::Tensor();
  return {dx, dw, db};
}

template <typename T>
void gate_any(T* y, int64_t y_st, const T* z, int64_t z_st, const T* d, int64_t d_st, T* dz, int64_t dz_st,
              int64_t rows, int64_t E, int64_t isa) {
  if constexpr (std::is_same<T, float>::value) {
#if DNA_MDLM_X86_SIMD
    if (isa == kAvx512) return avx512::run_gate_bwd<avx512::VF, float>(y, y_st, z, z_st, d, d_st, dz, dz_st, rows, E);
    if (isa == kAvx2) return avx2::run_gate_bwd<avx2::VF, float>(y, y_st, z, z_st, d, d_st, dz, dz_st, rows, E);
#endif
  }
  portable::run_gate_bwd<portable::VS<T>, T>(y, y_st, z, z_st, d, d_st, dz, dz_st, rows, E);
}

// y <- y * silu(z) in place and dz = dout * y * silu'(z) (all (rows, L, E), unit channel stride; dz may be z).
void gate_bwd(torch::Tensor y, const torch::Tensor& z, const torch::Tensor& dout, torch::Tensor dz, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(y.dim() == 3 && z.sizes() == y.sizes() && dout.sizes() == y.sizes() && dz.sizes() == y.sizes(),
              "dna_mdlm gate: shapes differ");
  for (const torch::Tensor* t : {static_cast<const torch::Tensor*>(&y), &z, &dout, static_cast<const torch::Tensor*>(&dz)}) {
    check_inner(*t, "a gate operand");
    TORCH_CHECK(t->stride(0) == t->size(1) * t->stride(1), "dna_mdlm gate: rows must be evenly strided");
  }
  const int64_t rows = y.size(0) * y.size(1), E = y.size(2);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "dna_mdlm_gate_bwd", [&] {
    gate_any<scalar_t>(y.data_ptr<scalar_t>(), y.stride(1), z.data_ptr<scalar_t>(), z.stride(1),
                       dout.data_ptr<scalar_t>(), dout.stride(1), dz.data_ptr<scalar_t>(), dz.stride(1), rows, E, isa);
  });
}

torch::Tensor elementwise(const torch::Tensor& x, int64_t op, int64_t isa) {
  check_isa(isa);
  TORCH_CHECK(x.is_contiguous() && op >= 0 && op <= 3, "dna_mdlm elementwise: contiguous x and op in 0..3");
  auto y = torch::empty_like(x);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dna_mdlm_elementwise", [&] {
    elementwise_any(x.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(), x.numel(), op, isa);
  });
  return y;
}

double exp_bench(int64_t isa, int64_t n_exp) {
  check_isa(isa);
#if DNA_MDLM_X86_SIMD
  if (isa == kAvx512) return avx512::run_exp_bench<avx512::VF, float>(n_exp);
  if (isa == kAvx2) return avx2::run_exp_bench<avx2::VF, float>(n_exp);
#endif
  return portable::run_exp_bench<portable::VS<float>, float>(n_exp);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("supported_isas", &supported_isas, "instruction sets this CPU and build can run (0 portable, 1 avx2, 2 avx512)");
  m.def("scan_fwd", &scan_fwd, "token-major selective scan, forward");
  m.def("scan_bwd", &scan_bwd, "token-major selective scan, backward (recomputes chunk by chunk)");
  m.def("conv_fwd", &conv_fwd, "token-major depthwise causal conv (+ SiLU), forward");
  m.def("conv_bwd", &conv_bwd, "token-major depthwise causal conv (+ SiLU), backward");
  m.def("gate_bwd", &gate_bwd, "the gate of a summed scan output, backward, in place");
  m.def("elementwise", &elementwise, "exp2 / softplus / sigmoid / softplus' of one instruction set (tests)");
  m.def("exp_bench", &exp_bench, "n exp2 evaluations of one instruction set; returns a checksum (benchmark)");
}
