// Fused CPU selective scan (Mamba S6 recurrence) with a hand-written backward.
//
// Owns the numeric kernels behind dna_mdlm.ops.selective_scan's "cpp" path. The Python side
// validates shapes, casts to float32/float64, and hands over contiguous tensors in these layouts:
//   u, delta, z, dout : (batch, D, L)        one contiguous row per (batch, channel)
//   A                 : (D, N)
//   Bt, Ct            : (batch, G, L, N)     transposed so the N states of one step are contiguous,
//                                            which lets gcc vectorise the per-step loop over N
//   D_skip, delta_bias: (D,)
// The state never leaves a thread-local array. The forward optionally stores the state at the
// start of every chunk of `chunk` steps; the backward recomputes states (and exp(dt*A)) chunk by
// chunk into a small local buffer and runs the reverse recurrence over it, so memory is
// (batch, D, L/chunk, N) saved + chunk*N per thread, never (batch, D, N, L).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace {

// Per-step scalars of one chunk, computed in loops over time that gcc vectorises (the scalar
// log1p/exp/sigmoid per step otherwise cost as much as the 16 vectorised exp(dt*A) of the step).
template <typename T>
inline void chunk_scalars(const T* __restrict__ dl, const T* z, int64_t len, T bias,
                          bool apply_softplus, T* __restrict__ dts, T* __restrict__ dsig,
                          T* __restrict__ zsig) {
  if (apply_softplus) {
    for (int64_t i = 0; i < len; ++i) {
      const T v = dl[i] + bias;
      // Same threshold as torch.nn.functional.softplus (beta=1, threshold=20).
      dts[i] = v > T(20) ? v : std::log1p(std::exp(v));
      if (dsig) dsig[i] = T(1) / (T(1) + std::exp(-v));
    }
  } else {
    for (int64_t i = 0; i < len; ++i) dts[i] = dl[i] + bias;
    if (dsig)
      for (int64_t i = 0; i < len; ++i) dsig[i] = T(1);
  }
  if (z)
    for (int64_t i = 0; i < len; ++i) zsig[i] = T(1) / (T(1) + std::exp(-z[i]));
}

template <typename T, int kN>
void scan_forward(const T* __restrict__ u, const T* __restrict__ delta, const T* __restrict__ A,
                  const T* __restrict__ Bt, const T* __restrict__ Ct, const T* D_skip, const T* z,
                  const T* delta_bias, bool apply_softplus, T* __restrict__ out,
                  T* __restrict__ last_state, T* ckpt, int64_t batch, int64_t dim, int64_t groups,
                  int64_t L, int64_t N_runtime, int64_t chunk) {
  // kN > 0 fixes the state size at compile time (16 in every Mamba/Caduceus config), so the per-step
  // loops over N unroll fully; kN == 0 is the generic build for any other size.
  const int64_t N = kN > 0 ? kN : N_runtime;
  const int64_t dims_per_group = dim / groups;
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  // Channels are handled in tiles that share one (batch, group), chunk by chunk, so the chunk of
  // B and C read by every channel of the tile stays in L1 rather than streaming L*N per channel.
  constexpr int64_t kTile = 32;
  at::parallel_for(0, batch * dim, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> h_buf(kTile * N), dt_buf(chunk), zsig_buf(chunk), y_buf(chunk);
    T* __restrict__ dts = dt_buf.data();
    T* __restrict__ zsig = zsig_buf.data();
    T* __restrict__ ys = y_buf.data();
    for (int64_t tile_lo = begin; tile_lo < end;) {
      const int64_t b = tile_lo / dim, g = (tile_lo % dim) / dims_per_group;
      const int64_t group_end = b * dim + (g + 1) * dims_per_group;
      const int64_t tile_hi = std::min({end, tile_lo + kTile, group_end});
      const T* __restrict__ B_bg = Bt + (b * groups + g) * L * N;
      const T* __restrict__ C_bg = Ct + (b * groups + g) * L * N;
      std::fill(h_buf.begin(), h_buf.end(), T(0));
      for (int64_t k = 0; k < n_chunks; ++k) {
        const int64_t t0 = k * chunk, len = std::min(chunk, L - t0);
        for (int64_t bd = tile_lo; bd < tile_hi; ++bd) {
          const int64_t d = bd % dim;
          T* __restrict__ h = h_buf.data() + (bd - tile_lo) * N;
          const T* __restrict__ a_row = A + d * N;
          const T* __restrict__ u_c = u + bd * L + t0;
          const T* z_c = z ? z + bd * L + t0 : nullptr;
          const T bias = delta_bias ? delta_bias[d] : T(0);
          const T d_skip = D_skip ? D_skip[d] : T(0);
          if (ckpt) {
            T* dst = ckpt + (bd * n_chunks + k) * N;
            for (int64_t n = 0; n < N; ++n) dst[n] = h[n];
          }
          chunk_scalars(delta + bd * L + t0, z_c, len, bias, apply_softplus, dts,
                        static_cast<T*>(nullptr), zsig);
          for (int64_t i = 0; i < len; ++i) {
            const T dt = dts[i];
            const T dtu = dt * u_c[i];
            const T* __restrict__ Bn = B_bg + (t0 + i) * N;
            const T* __restrict__ Cn = C_bg + (t0 + i) * N;
            T y = T(0);
            for (int64_t n = 0; n < N; ++n) {
              h[n] = std::exp(dt * a_row[n]) * h[n] + dtu * Bn[n];
              y += h[n] * Cn[n];
            }
            ys[i] = y;
          }
          T* __restrict__ o_c = out + bd * L + t0;
          if (z_c) {
            for (int64_t i = 0; i < len; ++i) o_c[i] = (ys[i] + d_skip * u_c[i]) * z_c[i] * zsig[i];
          } else {
            for (int64_t i = 0; i < len; ++i) o_c[i] = ys[i] + d_skip * u_c[i];
          }
        }
      }
      for (int64_t bd = tile_lo; bd < tile_hi; ++bd)
        for (int64_t n = 0; n < N; ++n) last_state[bd * N + n] = h_buf[(bd - tile_lo) * N + n];
      tile_lo = tile_hi;
    }
  });
}

template <typename T, int kN>
void scan_backward(const T* __restrict__ u, const T* __restrict__ delta, const T* __restrict__ A,
                   const T* __restrict__ Bt, const T* __restrict__ Ct, const T* D_skip, const T* z,
                   const T* delta_bias, bool apply_softplus, const T* __restrict__ ckpt,
                   const T* __restrict__ dout, const T* dlast, T* __restrict__ du,
                   T* __restrict__ ddelta, T* __restrict__ dA_part, T* __restrict__ dBt_part,
                   T* __restrict__ dCt_part, T* dD_part, T* dz, T* dbias_part, int64_t batch,
                   int64_t dim, int64_t groups, int64_t L, int64_t N_runtime, int64_t chunk,
                   int64_t slices) {
  const int64_t N = kN > 0 ? kN : N_runtime;
  // Work unit: (batch b, group g, slice s) owns a contiguous run of the group's channels, and a
  // private (L, N) accumulator for dB and dC (B and C are shared by all channels of the group), so
  // no two threads ever write the same memory. The caller sums the slices afterwards.
  // Chunks are the outer loop and channels the inner one: every channel of the unit adds into the
  // same chunk of dB/dC, which then stays in L1 instead of streaming L*N values per channel.
  const int64_t dims_per_group = dim / groups;
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  const int64_t per_slice = (dims_per_group + slices - 1) / slices;
  at::parallel_for(0, batch * groups * slices, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> hs_buf((chunk + 1) * N), as_buf(chunk * N), dt_buf(chunk), sig_buf(chunk),
        zsig_buf(chunk), grad_h_buf(per_slice * N), dA_buf(per_slice * N), dD_buf(per_slice),
        dbias_buf(per_slice);
    T* __restrict__ hs = hs_buf.data();  // hs[0] = state before the chunk, hs[i+1] = after step i
    T* __restrict__ as = as_buf.data();  // exp(dt*A) of each step of the chunk
    T* __restrict__ dts = dt_buf.data();
    T* __restrict__ sig = sig_buf.data();
    T* __restrict__ zsig = zsig_buf.data();
    for (int64_t task = begin; task < end; ++task) {
      const int64_t s = task % slices;
      const int64_t bg = task / slices;
      const int64_t b = bg / groups, g = bg % groups;
      const int64_t d_lo = g * dims_per_group + std::min(dims_per_group, s * per_slice);
      const int64_t d_hi = g * dims_per_group + std::min(dims_per_group, (s + 1) * per_slice);
      const T* __restrict__ B_bg = Bt + bg * L * N;
      const T* __restrict__ C_bg = Ct + bg * L * N;
      T* __restrict__ dB_s = dBt_part + task * L * N;
      T* __restrict__ dC_s = dCt_part + task * L * N;
      // dLoss/dh carried backwards across chunk boundaries, one row of N per channel of the unit.
      for (int64_t d = d_lo; d < d_hi; ++d) {
        const int64_t j = d - d_lo, bd = b * dim + d;
        for (int64_t n = 0; n < N; ++n) {
          grad_h_buf[j * N + n] = dlast ? dlast[bd * N + n] : T(0);
          dA_buf[j * N + n] = T(0);
        }
        dD_buf[j] = T(0);
        dbias_buf[j] = T(0);
      }
      for (int64_t k = n_chunks - 1; k >= 0; --k) {
        const int64_t t0 = k * chunk, len = std::min(chunk, L - t0);
        for (int64_t d = d_lo; d < d_hi; ++d) {
          const int64_t j = d - d_lo, bd = b * dim + d;
          const T* __restrict__ u_row = u + bd * L;
          const T* __restrict__ dl_row = delta + bd * L;
          const T* z_row = z ? z + bd * L : nullptr;
          const T* __restrict__ dout_row = dout + bd * L;
          T* __restrict__ du_row = du + bd * L;
          T* __restrict__ ddl_row = ddelta + bd * L;
          T* dz_row = z ? dz + bd * L : nullptr;
          const T* __restrict__ a_row = A + d * N;
          T* __restrict__ grad_h = grad_h_buf.data() + j * N;
          T* __restrict__ dA_acc = dA_buf.data() + j * N;
          const T bias = delta_bias ? delta_bias[d] : T(0);
          const T d_skip = D_skip ? D_skip[d] : T(0);
          T dD_acc = T(0), dbias_acc = T(0);
          const T* c0 = ckpt + (bd * n_chunks + k) * N;
          for (int64_t n = 0; n < N; ++n) hs[n] = c0[n];
          chunk_scalars(dl_row + t0, z_row ? z_row + t0 : nullptr, len, bias, apply_softplus, dts,
                        sig, zsig);
          for (int64_t i = 0; i < len; ++i) {
            const T dt = dts[i];
            const T dtu = dt * u_row[t0 + i];
            const T* __restrict__ Bn = B_bg + (t0 + i) * N;
            const T* __restrict__ h_prev = hs + i * N;
            T* __restrict__ h_next = hs + (i + 1) * N;
            T* __restrict__ a_i = as + i * N;
            for (int64_t n = 0; n < N; ++n) {
              const T a = std::exp(dt * a_row[n]);
              a_i[n] = a;
              h_next[n] = a * h_prev[n] + dtu * Bn[n];
            }
          }
          for (int64_t i = len - 1; i >= 0; --i) {
            const int64_t t = t0 + i;
            const T dt = dts[i], ut = u_row[t], dtu = dt * ut;
            const T* __restrict__ Bn = B_bg + t * N;
            const T* __restrict__ Cn = C_bg + t * N;
            const T* __restrict__ h_prev = hs + i * N;
            const T* __restrict__ h_cur = hs + (i + 1) * N;
            const T* __restrict__ a_i = as + i * N;
            // With a gate, dLoss/dy = dout * silu(z) needs no y; only dz needs y, whose reduction
            // rides along in the main loop over N below.
            const T dout_t = dout_row[t];
            const T dy = z_row ? dout_t * z_row[t] * zsig[i] : dout_t;
            T* __restrict__ dBn = dB_s + t * N;
            T* __restrict__ dCn = dC_s + t * N;
            T dBu = T(0), ddt = T(0), y = T(0);
#pragma GCC ivdep
            for (int64_t n = 0; n < N; ++n) {
              const T gh = grad_h[n] + dy * Cn[n];  // dLoss/dh_t
              y += h_cur[n] * Cn[n];
              dCn[n] += dy * h_cur[n];
              dBn[n] += gh * dtu;
              dBu += gh * Bn[n];
              const T ha = gh * h_prev[n] * a_i[n];
              ddt += ha * a_row[n];
              dA_acc[n] += ha * dt;
              grad_h[n] = gh * a_i[n];  // carried to step t-1 through h_t = a_t * h_{t-1} + ...
            }
            if (z_row) {
              const T zt = z_row[t], sz = zsig[i];
              dz_row[t] = dout_t * (y + d_skip * ut) * sz * (T(1) + zt * (T(1) - sz));
            }
            du_row[t] = d_skip * dy + dBu * dt;
            dD_acc += dy * ut;
            const T draw = (ddt + dBu * ut) * sig[i];
            ddl_row[t] = draw;
            dbias_acc += draw;
          }
          dD_buf[j] += dD_acc;
          dbias_buf[j] += dbias_acc;
        }
      }
      for (int64_t d = d_lo; d < d_hi; ++d) {
        const int64_t j = d - d_lo, bd = b * dim + d;
        for (int64_t n = 0; n < N; ++n) dA_part[bd * N + n] = dA_buf[j * N + n];
        if (dD_part) dD_part[bd] = dD_buf[j];
        if (dbias_part) dbias_part[bd] = dbias_buf[j];
      }
    }
  });
}

template <typename T>
const T* opt_ptr(const c10::optional<torch::Tensor>& t) {
  return t.has_value() ? t->data_ptr<T>() : nullptr;
}

std::vector<torch::Tensor> fwd(const torch::Tensor& u, const torch::Tensor& delta,
                               const torch::Tensor& A, const torch::Tensor& Bt,
                               const torch::Tensor& Ct, const c10::optional<torch::Tensor>& D_skip,
                               const c10::optional<torch::Tensor>& z,
                               const c10::optional<torch::Tensor>& delta_bias,
                               bool apply_softplus, int64_t chunk, bool save_checkpoints) {
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  const int64_t groups = Bt.size(1), N = A.size(1);
  const int64_t n_chunks = (L + chunk - 1) / chunk;
  auto out = torch::empty_like(u);
  auto last_state = torch::empty({batch, dim, N}, u.options());
  auto ckpt = save_checkpoints ? torch::empty({batch, dim, n_chunks, N}, u.options())
                               : torch::empty({0}, u.options());
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dna_mdlm_selective_scan_fwd", [&] {
    auto run = N == 16 ? scan_forward<scalar_t, 16> : scan_forward<scalar_t, 0>;
    run(u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(),
                           A.data_ptr<scalar_t>(), Bt.data_ptr<scalar_t>(),
                           Ct.data_ptr<scalar_t>(), opt_ptr<scalar_t>(D_skip),
                           opt_ptr<scalar_t>(z), opt_ptr<scalar_t>(delta_bias), apply_softplus,
                           out.data_ptr<scalar_t>(), last_state.data_ptr<scalar_t>(),
                           save_checkpoints ? ckpt.data_ptr<scalar_t>() : nullptr, batch, dim,
                           groups, L, N, chunk);
  });
  return {out, last_state, ckpt};
}

std::vector<torch::Tensor> bwd(const torch::Tensor& u, const torch::Tensor& delta,
                               const torch::Tensor& A, const torch::Tensor& Bt,
                               const torch::Tensor& Ct, const c10::optional<torch::Tensor>& D_skip,
                               const c10::optional<torch::Tensor>& z,
                               const c10::optional<torch::Tensor>& delta_bias,
                               bool apply_softplus, const torch::Tensor& ckpt,
                               const torch::Tensor& dout,
                               const c10::optional<torch::Tensor>& dlast, int64_t chunk,
                               int64_t slices) {
  const int64_t batch = u.size(0), dim = u.size(1), L = u.size(2);
  const int64_t groups = Bt.size(1), N = A.size(1);
  auto du = torch::empty_like(u);
  auto ddelta = torch::empty_like(u);
  auto dA_part = torch::empty({batch, dim, N}, u.options());
  auto dBt_part = torch::zeros({batch, groups, slices, L, N}, u.options());
  auto dCt_part = torch::zeros({batch, groups, slices, L, N}, u.options());
  auto dD_part = D_skip.has_value() ? torch::empty({batch, dim}, u.options()) : torch::Tensor();
  auto dz = z.has_value() ? torch::empty_like(u) : torch::Tensor();
  auto dbias_part =
      delta_bias.has_value() ? torch::empty({batch, dim}, u.options()) : torch::Tensor();
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "dna_mdlm_selective_scan_bwd", [&] {
    auto run = N == 16 ? scan_backward<scalar_t, 16> : scan_backward<scalar_t, 0>;
    run(
        u.data_ptr<scalar_t>(), delta.data_ptr<scalar_t>(), A.data_ptr<scalar_t>(),
        Bt.data_ptr<scalar_t>(), Ct.data_ptr<scalar_t>(), opt_ptr<scalar_t>(D_skip),
        opt_ptr<scalar_t>(z), opt_ptr<scalar_t>(delta_bias), apply_softplus,
        ckpt.data_ptr<scalar_t>(), dout.data_ptr<scalar_t>(), opt_ptr<scalar_t>(dlast),
        du.data_ptr<scalar_t>(), ddelta.data_ptr<scalar_t>(), dA_part.data_ptr<scalar_t>(),
        dBt_part.data_ptr<scalar_t>(), dCt_part.data_ptr<scalar_t>(),
        D_skip.has_value() ? dD_part.data_ptr<scalar_t>() : nullptr,
        z.has_value() ? dz.data_ptr<scalar_t>() : nullptr,
        delta_bias.has_value() ? dbias_part.data_ptr<scalar_t>() : nullptr, batch, dim, groups,
        L, N, chunk, slices);
  });
  auto dA = dA_part.sum(0);
  auto dBt = slices == 1 ? dBt_part.squeeze(2) : dBt_part.sum(2);
  auto dCt = slices == 1 ? dCt_part.squeeze(2) : dCt_part.sum(2);
  auto dD = D_skip.has_value() ? dD_part.sum(0) : torch::Tensor();
  auto dbias = delta_bias.has_value() ? dbias_part.sum(0) : torch::Tensor();
  return {du, ddelta, dA, dBt, dCt, dD, dz, dbias};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("fwd", &fwd, "selective scan forward (CPU)");
  m.def("bwd", &bwd, "selective scan backward (CPU)");
}
