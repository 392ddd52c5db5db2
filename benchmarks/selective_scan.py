"""Benchmark of the selective scan paths on CPU: fused C++ kernel and blocked torch vs the sequential reference.

Measures, at Mamba's init ranges (dt log-uniform in [1e-3, 0.1], A = -[1..N], softplus and delta_bias on, D and
z gate on), float32:
  * forward time of each path and its speed-up over ``selective_scan_ref``,
  * forward+backward time over the fast forward (no-grad) time,
  * cost growth time(4L)/time(L),
  * max abs error of each path against the reference.

Run: ``.venv/bin/python benchmarks/selective_scan.py [--lengths 1024 4096 16384] [--skip-ref-above 4096]``.
Timings are best of ``--repeats`` runs (``--clock wall`` or ``cpu``); the reference runs once per length (it takes
seconds).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch

from dna_mdlm.ops import selective_scan as ss


def make_inputs(batch: int, dim: int, n_state: int, length: int, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    lo, hi = math.log(1e-3), math.log(0.1)
    dt = torch.exp(torch.rand(batch, dim, length, generator=gen) * (hi - lo) + lo)
    return {
        "u": torch.randn(batch, dim, length, generator=gen),
        "delta": torch.log(torch.expm1(dt)),  # so that softplus(delta) is the log-uniform dt
        "A": -torch.arange(1, n_state + 1, dtype=torch.float32).repeat(dim, 1),
        "B": torch.randn(batch, n_state, length, generator=gen),
        "C": torch.randn(batch, n_state, length, generator=gen),
        "D": torch.ones(dim),
        "z": torch.randn(batch, dim, length, generator=gen),
        "delta_bias": torch.zeros(dim),
    }


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def mamba_style_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """The algorithm of mamba-ssm's ``selective_scan_ref`` (the baseline the speed targets were set against):
    materialise exp(delta*A) and delta*B*u as (batch, d_inner, L, d_state), then step with strided slices."""
    delta = delta + delta_bias[:, None] if delta_bias is not None else delta
    delta = torch.nn.functional.softplus(delta) if delta_softplus else delta
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


def best_time(fn, repeats: int) -> float:
    best = math.inf
    for _ in range(repeats):
        start = _clock()
        fn()
        best = min(best, _clock() - start)
    return best


def forward_time(scan, inputs: dict, repeats: int) -> tuple[float, torch.Tensor]:
    out = {}

    def run():
        with torch.no_grad():
            out["y"] = scan(**inputs, delta_softplus=True)

    return best_time(run, repeats), out["y"]


def forward_backward_time(scan, inputs: dict, repeats: int) -> float:
    def run():
        leaves = {k: v.detach().requires_grad_() for k, v in inputs.items()}
        y = scan(**leaves, delta_softplus=True)
        y.backward(torch.ones_like(y))

    return best_time(run, repeats)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--d-inner", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5, help="timings are the best of this many runs")
    parser.add_argument("--skip-ref-above", type=int, default=None,
                        help="do not run the (slow) sequential reference for lengths above this")
    parser.add_argument("--mamba-ref-above", type=int, default=4096,
                        help="skip the mamba-ssm-style reference above this length (it materialises 2x (B,D,L,N))")
    parser.add_argument("--blocked-bwd-above", type=int, default=4096,
                        help="skip the blocked path's forward+backward for lengths above this (it takes ~20 s)")
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

    if ss.load_cpp_extension() is None:
        raise SystemExit("the C++ selective scan could not be built here; nothing to benchmark")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"batch {args.batch}, d_inner {args.d_inner}, d_state {args.d_state}, float32, best of {args.repeats}, "
          f"{args.clock} clock\n")

    rows = []
    for length in args.lengths:
        inputs = make_inputs(args.batch, args.d_inner, args.d_state, length)
        row = {"L": length}
        row["cpp_fwd"], y_cpp = forward_time(ss.selective_scan_cpp, inputs, args.repeats)
        row["cpp_fwdbwd"] = forward_backward_time(ss.selective_scan_cpp, inputs, args.repeats)
        row["blocked_fwd"], y_blocked = forward_time(ss.selective_scan_blocked, inputs, max(1, args.repeats // 2))
        if length <= args.blocked_bwd_above:
            row["blocked_fwdbwd"] = forward_backward_time(ss.selective_scan_blocked, inputs, 1)
        if args.skip_ref_above is None or length <= args.skip_ref_above:
            row["ref_fwd"], y_ref = forward_time(ss.selective_scan_ref, inputs, 1)
            row["cpp_err"] = (y_cpp - y_ref).abs().max().item()
            row["blocked_err"] = (y_blocked - y_ref).abs().max().item()
            row["scale"] = y_ref.abs().max().item()
        if length <= args.mamba_ref_above:
            row["mamba_ref_fwd"], _ = forward_time(mamba_style_ref, inputs, 1)
        rows.append(row)
        print(f"  L={length}: done", flush=True)

    def fmt(value, spec):
        return "-" if value is None else format(value, spec)

    print("\n| L | mamba-style ref fwd (s) | cpp speed-up vs it | ref fwd (s) | cpp fwd (ms) | cpp speed-up | cpp fwd+bwd (ms) | fwd+bwd / fwd | cpp max abs err "
          "| blocked fwd (ms) | blocked speed-up | blocked fwd+bwd (ms) | blocked max abs err | max abs y |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ref = r.get("ref_fwd")
        mref = r.get("mamba_ref_fwd")
        print(
            f"| {r['L']} | {fmt(mref, '.2f')} | {fmt(mref / r['cpp_fwd'] if mref else None, '.1f')}x | {fmt(ref, '.2f')} | {r['cpp_fwd'] * 1e3:.1f} | "
            f"{fmt(ref / r['cpp_fwd'] if ref else None, '.1f')}x | {r['cpp_fwdbwd'] * 1e3:.1f} | "
            f"{r['cpp_fwdbwd'] / r['cpp_fwd']:.2f} | {fmt(r.get('cpp_err'), '.1e')} | {r['blocked_fwd'] * 1e3:.0f} | "
            f"{fmt(ref / r['blocked_fwd'] if ref else None, '.1f')}x | "
            f"{fmt(r['blocked_fwdbwd'] * 1e3 if 'blocked_fwdbwd' in r else None, '.0f')} | "
            f"{fmt(r.get('blocked_err'), '.1e')} | {fmt(r.get('scale'), '.1f')} |"
        )
    growth = []
    for short, long in zip(rows, rows[1:]):
        if long["L"] == 4 * short["L"]:
            growth.append(
                f"L {short['L']}->{long['L']}: cpp fwd x{long['cpp_fwd'] / short['cpp_fwd']:.2f}, "
                f"cpp fwd+bwd x{long['cpp_fwdbwd'] / short['cpp_fwdbwd']:.2f}, "
                f"blocked fwd x{long['blocked_fwd'] / short['blocked_fwd']:.2f}"
                + (f", ref x{long['ref_fwd'] / short['ref_fwd']:.2f}" if "ref_fwd" in long and "ref_fwd" in short
                   else "")
            )
    if growth:
        print("\nCost growth time(4L)/time(L): " + "; ".join(growth))
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
