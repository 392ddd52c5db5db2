"""Caduceus-PS against a parameter-matched Transformer encoder: training tokens/s and peak memory on CPU.

Both models are masked-LM denoisers over the 16-token DNA vocabulary with a tied LM head:
  * Caduceus-PS (`CaduceusForMaskedLM`, d_model 128, 4 layers, bidirectional, RC parameter sharing);
  * a pre-LN Transformer encoder (same width and depth, `scaled_dot_product_attention`, sinusoidal positions,
    head width 32) whose feed-forward width is solved so its parameter count matches Caduceus within ~5%.
One training step = forward + cross-entropy + backward (no optimizer: AdamW costs the same for equal
parameter counts). Batch x length is held constant (`--tokens`), so every row does the same number of
tokens and the only thing that changes is the length the mixer has to cover.

Lengths above `--tokens` run one sequence per step (batch 1, L tokens), so a 131,072-token window can be
trained and its memory shown; the Transformer is not run above `--transformer-max-len` (its O(L^2) attention
would take hours per step there).

Each (model, length) runs in its own subprocess, one thread, so `ru_maxrss` is that config's peak resident
memory; "step" memory is its growth over what was resident before the first step (torch, the model, the C++
kernels), so it holds activations, gradients and workspace, plus whatever one-off buffers the first step
allocates (it errs high); per token it is that growth over the tokens of one step. A config that runs past
`--timeout` is reported as "did not finish" rather than stalling the rest. `--clock cpu` times with the
process's CPU time, steadier than wall time when other jobs share the cores (with one thread it is the time
on a quiet core).

    .venv/bin/python benchmarks/backbone.py                                 # L 1k, 4k, 16k at 16,384 tokens
    .venv/bin/python benchmarks/backbone.py --lengths 1024 16384 131072 --clock cpu
    .venv/bin/python benchmarks/backbone.py --lengths 1024 4096 --tokens 8192 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: OpenMP spinning on a shared 2-core box costs 10x

import torch
import torch.nn as nn
import torch.nn.functional as F

from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.ops.selective_scan import load_cpp_extension
from dna_mdlm.tokenizer import A_ID, PADDED_VOCAB_SIZE, T_ID

HEAD_DIM = 32


class EncoderBlock(nn.Module):
    """Pre-LN block: x + Attn(LN(x)), then x + FFN(LN(x)) with a GELU feed-forward of width `ff`."""

    def __init__(self, d_model: int, n_head: int, ff: int):
        super().__init__()
        self.n_head = n_head
        self.norm_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.attn_out = nn.Linear(d_model, d_model)
        self.norm_ff = nn.LayerNorm(d_model)
        self.ff_in = nn.Linear(d_model, ff)
        self.ff_out = nn.Linear(ff, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, length, d = x.shape
        q, k, v = self.qkv(self.norm_attn(x)).view(b, length, 3, self.n_head, d // self.n_head).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no causal mask, as the MDLM denoiser
        x = x + self.attn_out(attn.transpose(1, 2).reshape(b, length, d))
        return x + self.ff_out(F.gelu(self.ff_in(self.norm_ff(x))))


class TransformerMLM(nn.Module):
    """Token embedding + sinusoidal positions (no parameters) -> pre-LN encoder -> LN -> tied LM head."""

    def __init__(self, d_model: int, n_layer: int, ff: int, vocab_size: int = PADDED_VOCAB_SIZE):
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, d_model // HEAD_DIM, ff) for _ in range(n_layer))
        self.norm = nn.LayerNorm(d_model)

    def positions(self, length: int) -> torch.Tensor:
        pos = torch.arange(length, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, self.d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / self.d_model))
        table = torch.zeros(length, self.d_model)
        table[:, 0::2], table[:, 1::2] = torch.sin(pos * freq), torch.cos(pos * freq)
        return table

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(input_ids) + self.positions(input_ids.shape[1])
        for block in self.blocks:
            x = block(x)
        return F.linear(self.norm(x), self.embedding.weight)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # .parameters() deduplicates tied weights


def caduceus(d_model: int, n_layer: int) -> CaduceusForMaskedLM:
    return CaduceusForMaskedLM(CaduceusConfig(d_model=d_model, n_layer=n_layer, rcps=True, bidirectional=True))


def matched_transformer(target: int, d_model: int, n_layer: int) -> TransformerMLM:
    """Same width and depth; the FFN width (a multiple of 8) that brings the count closest to `target`."""
    per_ff_unit = n_layer * (2 * d_model + 1)  # ff_in weight column + bias, ff_out weight row
    fixed = n_params(TransformerMLM(d_model, n_layer, ff=1)) - per_ff_unit
    ff = max(8, int(round((target - fixed) / per_ff_unit / 8)) * 8)
    return TransformerMLM(d_model, n_layer, ff)


def build(kind: str, d_model: int, n_layer: int) -> nn.Module:
    reference = caduceus(d_model, n_layer)
    return reference if kind == "caduceus" else matched_transformer(n_params(reference), d_model, n_layer)


def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    return out.logits if hasattr(out, "logits") else out


def child(kind: str, length: int, batch: int, d_model: int, n_layer: int, repeats: int, clock: str) -> dict:
    """Time `repeats` training steps after one warm-up step; report per-step seconds and step memory."""
    tick = time.process_time if clock == "cpu" else time.perf_counter
    torch.manual_seed(0)
    model = build(kind, d_model, n_layer).train()
    load_cpp_extension()  # the compiled kernels are code, not activations: resident before the baseline
    x = torch.randint(A_ID, T_ID + 1, (batch, length))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats + 1):
        start = tick()
        logits = logits_of(model, x)
        loss = F.cross_entropy(logits.float().transpose(1, 2), x)
        loss.backward()
        model.zero_grad(set_to_none=True)
        times.append(tick() - start)
        del logits, loss
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "L": length, "batch": batch, "params": n_params(model), "step_s": times[1:],
            "rss_before_mib": rss_before / 1024, "peak_rss_mib": peak / 1024}


def run_config(kind: str, length: int, batch: int, args) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--lengths", str(length), "--batch", str(batch),
           "--d-model", str(args.d_model), "--n-layer", str(args.n_layer), "--repeats", str(args.repeats),
           "--threads", str(args.threads), "--clock", args.clock]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"kind": kind, "L": length, "batch": batch, "timeout": True, "wall_s": time.time() - start}
    if proc.returncode != 0:
        return {"kind": kind, "L": length, "batch": batch, "error": proc.stderr.strip().splitlines()[-1:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 4096, 16384])
    p.add_argument("--tokens", type=int, default=16384, help="batch x length of every step")
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--n-layer", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up; the median is reported")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per (model, length) subprocess")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="wall: elapsed time per step; cpu: the process's CPU time (steadier on a shared machine)")
    p.add_argument("--transformer-max-len", type=int, default=16384,
                   help="do not run the Transformer above this length (quadratic attention)")
    p.add_argument("--batch", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--child", choices=["caduceus", "transformer"], default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(child(args.child, args.lengths[0], args.batch, args.d_model, args.n_layer, args.repeats,
                               args.clock)))
        return 0
    for length in args.lengths:
        if length <= args.tokens and args.tokens % length:
            raise SystemExit(f"--tokens {args.tokens} is not a multiple of length {length}: batch x L must be constant")

    cad = caduceus(args.d_model, args.n_layer)
    trf = matched_transformer(n_params(cad), args.d_model, args.n_layer)
    mismatch = n_params(trf) / n_params(cad) - 1
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"Caduceus-PS d_model {args.d_model}, {args.n_layer} layers: {n_params(cad):,} parameters")
    print(f"Transformer d_model {args.d_model}, {args.n_layer} layers, {args.d_model // HEAD_DIM} heads, "
          f"FFN {trf.blocks[0].ff_in.out_features}: {n_params(trf):,} parameters ({mismatch:+.1%})")
    print(f"{args.tokens} tokens per step (one sequence of L above that); median of {args.repeats} steps after a "
          f"warm-up, {args.clock} clock; timeout {args.timeout:g} s\n", flush=True)
    del cad, trf

    def batch_of(length):
        return max(1, args.tokens // length)

    rows = []
    for length in args.lengths:
        batch = batch_of(length)
        for kind in ("caduceus", "transformer"):
            if kind == "transformer" and length > args.transformer_max_len:
                rows.append({"kind": kind, "L": length, "batch": batch, "skipped": True})
                continue
            r = run_config(kind, length, batch, args)
            rows.append(r)
            status = "timeout" if r.get("timeout") else ("error " + str(r["error"]) if "error" in r else
                                                           f"median {sorted(r['step_s'])[len(r['step_s']) // 2]:.2f} s/step")
            print(f"  {kind:11s} L={length:6d} batch={batch:3d}: {status}", flush=True)

    def cell(r):
        """(tokens/s text, memory text, tokens/s, KiB per token)"""
        if r.get("skipped"):
            return f"not run (L > {args.transformer_max_len})", "-", None, None
        if r.get("timeout"):
            return f"did not finish in {args.timeout:g} s", "-", None, None
        if "error" in r:
            return f"error: {r['error']}", "-", None, None
        tokens = r["batch"] * r["L"]
        median = sorted(r["step_s"])[len(r["step_s"]) // 2]
        tps = tokens / median
        step_mib = r["peak_rss_mib"] - r["rss_before_mib"]
        per_token = step_mib * 1024 / tokens
        return f"{tps:,.0f}", f"{r['peak_rss_mib']:.0f} ({step_mib:+.0f}; {per_token:.1f} KiB/token)", tps, per_token

    print("\n| L | batch | Caduceus-PS tokens/s | Transformer tokens/s | Caduceus / Transformer | "
          "Caduceus peak RSS MiB (step; per token) | Transformer peak RSS MiB (step; per token) |")
    print("|---|---|---|---|---|---|---|")
    by = {(r["kind"], r["L"]): r for r in rows}
    for length in args.lengths:
        c_tps, c_mem, c, _ = cell(by[("caduceus", length)])
        t_tps, t_mem, t, _ = cell(by[("transformer", length)])
        ratio = f"{c / t:.2f}x" if c and t else "-"
        print(f"| {length} | {batch_of(length)} | {c_tps} | {t_tps} | {ratio} | {c_mem} | {t_mem} |")
    print("\nPeak RSS: the subprocess's ru_maxrss; step: its growth over what was resident before the first step "
          "(activations, gradients, workspace and first-step one-offs).")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
