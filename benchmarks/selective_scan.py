"""Benchmark of the selective scan on CPU: the C++ token-major kernel (what the model runs) and the pure-torch
blocked path against the sequential references, plus the exp microbenchmark that sets the floor.

Inputs at Mamba's init ranges (dt log-uniform in [1e-3, 0.1], A = -[1..N], softplus and delta_bias on, D and
z gate on), float32, batch 8, d_inner 256, d_state 16, the model's token-major layout (batch, L, d_inner).
Per length it measures:
  * forward (no grad) of each path and the speed-up over the sequential references: ``selective_scan_ref``
    (ours, time-major contiguous slices) and the algorithm of mamba-ssm's ``selective_scan_ref`` (the
    baseline of the targets: materialises exp(delta*A) and delta*B*u as (batch, d_inner, L, d_state));
  * forward+backward (forward with grad, backward of all 8 inputs) over the forward;
  * cost growth time(4L)/time(L) for every pair of lengths 4x apart;
  * state updates per second per core, forward and backward (one update = one (batch, channel, state,
    position)), next to the vector exp's own throughput (one exp per update is the floor);
  * max abs error of each path against the reference.

Run: ``.venv/bin/python benchmarks/selective_scan.py --threads 1 --clock cpu`` (defaults: L = 1k, 2k, 4k,
8k, 16k). Timings are best of ``--repeats`` (references: one run); ``--clock cpu`` counts this process's CPU
time, steadier when other jobs share the cores.
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import time

import torch

from dna_mdlm.ops import selective_scan as ss


def make_inputs(batch: int, dim: int, n_state: int, length: int, seed: int = 0) -> dict:
    """Token-major inputs: u, delta, z (batch, L, d_inner); B, C (batch, L, d_state)."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1e-3), math.log(0.1)
    dt = torch.exp(torch.rand(batch, length, dim, generator=gen) * (hi - lo) + lo)
    return {
        "u": torch.randn(batch, length, dim, generator=gen),
        "delta": torch.log(torch.expm1(dt)),  # so that softplus(delta) is the log-uniform dt
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, length, n_state, generator=gen),
        "C": torch.randn(batch, length, n_state, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(batch, length, dim, generator=gen),
        "delta_bias": torch.zeros(dim),
    }


def cpp_scan(u, delta, A, B, C, D, z, delta_bias, isa=None):
    """The model's call: token-major, one direction (K = 1)."""
    return ss.selective_scan_tokens(u[None], delta[None], A[None], B[None], C[None], D[None], z, delta_bias[None],
                                    True, isa=isa)


def bdl(inputs: dict) -> dict:
    """The (batch, d_inner, L) layout of mamba-ssm's API, for the torch paths (made contiguous, untimed)."""
    out = dict(inputs)
    for k in ("u", "delta", "z", "B", "C"):
        out[k] = inputs[k].transpose(1, 2).contiguous()
    return out


def mamba_style_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None):
    """The algorithm of mamba-ssm's ``selective_scan_ref`` (the baseline the speed targets were set against):
    materialise exp(delta*A) and delta*B*u as (batch, d_inner, L, d_state), then step with strided slices."""
    delta = delta + delta_bias[:, None] if delta_bias is not None else delta
    delta = torch.nn.functional.softplus(delta)
    decay = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    inject = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    state = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        state = decay[:, :, t] * state + inject[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", state, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    y = y + u * D[:, None] if D is not None else y
    return y * torch.nn.functional.silu(z) if z is not None else y


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = _clock()
        fn()
        best = min(best, _clock() - start)
    return best


def forward_time(scan, inputs: dict, repeats: int, **kw) -> tuple[float, torch.Tensor]:
    out = {}

    def run():
        with torch.no_grad():
            out["y"] = scan(**inputs, **kw)

    return best_time(run, repeats), out["y"]


def forward_backward_time(scan, inputs: dict, repeats: int, **kw) -> float:
    def run():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        y = scan(**leaves, **kw)
        y.backward(torch.ones_like(y))

    return best_time(run, repeats)


def sys_share(scan, inputs: dict, **kw) -> float:
    """Share of one forward+backward spent in the kernel (system time): first-touch page faults of the
    freshly allocated outputs and gradients, which glibc maps anew for every tensor above 32 MiB."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
    y = scan(**leaves, **kw)
    y.backward(torch.ones_like(y))
    after = resource.getrusage(resource.RUSAGE_SELF)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    return system / max(user + system, 1e-9)


def exp_rate(isa: str, n: int = 1 << 26) -> float:
    """exp evaluations per second on one core for the kernel's vector exp (8 independent chains, L1 data)."""
    ext = ss.load_cpp_extension()
    ext.exp_bench(ss.ISAS[isa], n // 16)  # warm-up
    return n / best_time(lambda: ext.exp_bench(ss.ISAS[isa], n), 3)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timings are the best of this many runs")
    parser.add_argument("--skip-ref-above", type=int, default=None,
                        help="do not run the (slow) sequential reference for lengths above this")
    parser.add_argument("--mamba-ref-above", type=int, default=4096,
                        help="skip the mamba-ssm-style reference above this length (it materialises 2x (B,D,L,N))")
    parser.add_argument("--blocked-above", type=int, default=4096,
                        help="skip the blocked torch path above this length (its backward takes minutes)")
    parser.add_argument("--isa-length", type=int, default=4096,
                        help="length of the per-instruction-set rate table (0 to skip it)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's choice); 1 avoids OpenMP spinning on a shared machine")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall: elapsed time; cpu: this process's CPU time, steadier when other jobs share "
                             "the cores (with --threads 1 it equals the time on a quiet core)")
    args = parser.parse_args(argv)
    global _clock
    _clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    if ss.load_cpp_extension() is None:
        raise SystemExit("the C++ selective scan could not be built here; nothing to benchmark")
    isa = ss.scan_isa()
    print(f"torch {torch.__version__}, {threads} threads, C++ kernels: {isa} (available: "
          f"{', '.join(ss.available_isas())}), load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"batch {args.batch}, d_inner {args.d_inner}, d_state {args.d_state}, float32, best of {args.repeats}, "
          f"{args.clock} clock\n")

    warm = make_inputs(args.batch, args.d_inner, args.d_state, 256)
    forward_backward_time(cpp_scan, warm, 1)  # first calls pay one-off costs (thread pools, page mapping)
    rows = []
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.d_inner, args.d_state, length)
        torch_inputs = bdl(inputs)
        row = {"L": length, "updates": args.batch * length * args.d_inner * args.d_state}
        row["cpp_fwd"], y_cpp = forward_time(cpp_scan, inputs, args.repeats)
        row["cpp_fwdbwd"] = forward_backward_time(cpp_scan, inputs, args.repeats)
        row["sys"] = sys_share(cpp_scan, inputs)
        if length <= args.blocked_above:
            row["blocked_fwd"], y_blocked = forward_time(ss.selective_scan_blocked, torch_inputs,
                                                         max(1, args.repeats // 2), delta_softplus=True)
            row["blocked_fwdbwd"] = forward_backward_time(ss.selective_scan_blocked, torch_inputs, 1,
                                                          delta_softplus=True)
        if args.skip_ref_above is None or length <= args.skip_ref_above:
            row["ref_fwd"], y_ref = forward_time(ss.selective_scan_ref, torch_inputs, 1, delta_softplus=True)
            y_ref = y_ref.transpose(1, 2)
            row["cpp_err"] = (y_cpp[0] - y_ref).abs().max().item()
            if "blocked_fwd" in row:
                row["blocked_err"] = (y_blocked.transpose(1, 2) - y_ref).abs().max().item()
            row["scale"] = y_ref.abs().max().item()
        if length <= args.mamba_ref_above:
            row["mamba_ref_fwd"], _ = forward_time(mamba_style_ref, torch_inputs, 1)
        rows.append(row)
        print(f"  L={length}: done", flush=True)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print("\n| L | mamba-style ref fwd (s) | cpp speed-up vs it | ref fwd (s) | cpp speed-up vs ref | cpp fwd (ms) "
          "| cpp fwd+bwd (ms) | fwd+bwd / fwd | fwd+bwd system time | cpp fwd G upd/s/core | cpp bwd G upd/s/core "
          "| cpp max abs err | blocked fwd (ms) | blocked fwd+bwd (ms) | blocked max abs err | max abs y |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref, mref = r.get("ref_fwd"), r.get("mamba_ref_fwd")
        fwd_rate = r["updates"] / r["cpp_fwd"] / threads / 1e9
        bwd_rate = r["updates"] / max(r["cpp_fwdbwd"] - r["cpp_fwd"], 1e-9) / threads / 1e9
        print(
            f"| {r['L']} | {fmt(mref, '.2f')} | {fmt(mref / r['cpp_fwd'] if mref else None, '.1f')}x | "
            f"{fmt(ref, '.2f')} | {fmt(ref / r['cpp_fwd'] if ref else None, '.1f')}x | {r['cpp_fwd'] * 1e3:.1f} | "
            f"{r['cpp_fwdbwd'] * 1e3:.1f} | {r['cpp_fwdbwd'] / r['cpp_fwd']:.2f} | {r['sys']:.0%} | {fwd_rate:.2f} | "
            f"{bwd_rate:.2f} | "
            f"{fmt(r.get('cpp_err'), '.1e')} | {fmt(r.get('blocked_fwd', 0) * 1e3 or None, '.0f')} | "
            f"{fmt(r.get('blocked_fwdbwd', 0) * 1e3 or None, '.0f')} | {fmt(r.get('blocked_err'), '.1e')} | "
            f"{fmt(r.get('scale'), '.1f')} |"
        )
    by_len = {r["L"]: r for r in rows}
    growth = [(r["L"], by_len[4 * r["L"]]) for r in rows if 4 * r["L"] in by_len]
    if growth:
        print("\nCost growth time(4L)/time(L): " + "; ".join(
            f"L {short}->{4 * short}: cpp fwd x{long['cpp_fwd'] / by_len[short]['cpp_fwd']:.2f}, "
            f"fwd+bwd x{long['cpp_fwdbwd'] / by_len[short]['cpp_fwdbwd']:.2f}" for short, long in growth))

    if args.isa_length:
        print(f"\nPer instruction set at L={args.isa_length} (one thread): state updates/s next to the exp alone")
        print("| instruction set | exp alone (G exp/s) | fwd (G upd/s) | fwd / exp | bwd (G upd/s) | bwd / exp |")
        print("|---|---|---|---|---|---|")
        saved_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        inputs = make_inputs(args.batch, args.d_inner, args.d_state, args.isa_length)
        updates = args.batch * args.isa_length * args.d_inner * args.d_state
        for name in ss.available_isas():
            e = exp_rate(name)
            f, _ = forward_time(cpp_scan, inputs, args.repeats, isa=name)
            fb = forward_backward_time(cpp_scan, inputs, args.repeats, isa=name)
            fr, br = updates / f, updates / max(fb - f, 1e-9)
            print(f"| {name} | {e / 1e9:.2f} | {fr / 1e9:.2f} | {fr / e:.2f} | {br / 1e9:.2f} | {br / e:.2f} |")
        torch.set_num_threads(saved_threads)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
