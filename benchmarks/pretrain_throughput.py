"""Pretraining throughput on CPU per recipe: trainer tokens/s (MDLM and AR), loader windows/s, and their ratios.

For each recipe in dna_mdlm/configs/pretrain (model size, window and batch as the recipe sets them) this measures:
  * the trainer: `PretrainModule.training_step` (MDLM NELBO with the run's seeded times and masks) + backward +
    gradient clipping + AdamW (the module's own parameter groups) + EMA update, on real windows drawn by
    `GenomeDataModule` from a human chr20 slice. The batches are drawn before timing, so this is compute only;
  * the same step with the AR objective at the same size (the backbone made causal, as `--objective ar` trains);
  * the loader: `GenomeDataModule.train_dataloader()` (RandomWindows + EpochSampler, num_workers 0) windows/s
    at the same window and batch, and loader windows/s / trainer windows/s (issue target: >= 10x, so data
    loading can never be what a CPU run waits on).
Lightning's own per-step bookkeeping (logging, progress bar, checkpoint callbacks) is not included.

Timings are the median of `--steps` steps after one warm-up step, one torch thread (OMP_NUM_THREADS=1):
the machine this was written on has 2 cores shared with other jobs, where OpenMP oversubscription costs 10x.
Recipes whose step holds more than `--max-tokens` tokens (gb-118: 128 x 1 kb) run at a batch reduced to fit, and
the table says so; per-token throughput hardly depends on batch on one CPU thread.

    .venv/bin/python benchmarks/pretrain_throughput.py
    .venv/bin/python benchmarks/pretrain_throughput.py --recipes tiny demo --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DNA_MDLM_SHARED_DATA", ROOT.parent / "shared" / "data"))
RECIPES = ROOT / "dna_mdlm" / "configs" / "pretrain"


def recipe(name: str) -> dict:
    from dna_mdlm.training.recipes import PRETRAIN_DEFAULTS, load_recipe, merge

    return merge(PRETRAIN_DEFAULTS, load_recipe(name, "pretrain"))


def datamodule(fasta: Path, window: int, batch_size: int, rc_aug: bool):
    from dna_mdlm.data.datamodules import GenomeDataModule

    dm = GenomeDataModule(fasta=str(fasta), window=window, batch_size=batch_size, num_workers=0, rc_aug=rc_aug,
                          seed=0, train_samples_per_epoch=1_000_000)
    dm.setup()
    return dm


def loader_windows_per_second(dm, min_seconds: float, min_batches: int) -> float:
    """Windows/s of the training DataLoader after its first batch (file opening is not throughput)."""
    iterator = iter(dm.train_dataloader())
    next(iterator)
    windows, batches, start = 0, 0, time.perf_counter()
    while batches < min_batches or time.perf_counter() - start < min_seconds:
        windows += len(next(iterator)["start"])
        batches += 1
    return windows / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # kernels run asynchronously: time them, not their launches


def step_seconds(cfg: dict, objective: str, batches: list[dict], device: str = "cpu",
                 precision: str = "32-true") -> tuple[list[float], int]:
    """Seconds per optimizer step (first batch is the warm-up, not returned) and the parameter count.

    `device` cuda runs the step there (batches are moved before the clock starts); `precision` "bf16-mixed" runs
    forward and loss under bf16 autocast and the backward outside it, as Lightning's bf16-mixed does."""
    from dna_mdlm.training.pretrain import PretrainModule

    device = torch.device(device)
    torch.manual_seed(cfg["seed"])
    o = cfg["optim"]
    module = PretrainModule(cfg["model"], objective, cfg["schedule"], lr=o["lr"], weight_decay=o["weight_decay"],
                            betas=o["betas"], warmup_steps=o["warmup_steps"], lr_schedule=o["lr_schedule"],
                            min_lr_ratio=o["min_lr_ratio"], max_steps=cfg["trainer"]["max_steps"],
                            ema_decay=o["ema_decay"], seed=cfg["seed"], window=cfg["data"]["window"]).to(device).train()
    optimizer = module.configure_optimizers()["optimizer"]
    times = []
    for i, batch in enumerate(batches):
        batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        _sync(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss = module.training_step(batch, i)  # self.log is a no-op without a Trainer
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), o["grad_clip"])
        optimizer.step()
        module.on_train_batch_end(None, batch, i)  # EMA update
        _sync(device)
        times.append(time.perf_counter() - start)
        if not torch.isfinite(loss):
            raise SystemExit(f"{objective} loss is not finite at step {i}")
    return times[1:], sum(p.numel() for p in module.model.parameters())


def main(argv=None) -> int:
    import warnings

    warnings.filterwarnings("ignore", message=".*self.log.*")
    warnings.filterwarnings("ignore", message=".*trainer reference is not registered.*")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fasta", type=Path, default=SHARED / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa")
    p.add_argument("--recipes", nargs="+", default=["tiny", "demo", "cpu-small", "gb-118"])
    p.add_argument("--steps", type=int, default=3, help="timed optimizer steps per objective (after one warm-up)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="reduce a recipe's batch so one step holds at most this many tokens (0: never reduce)")
    p.add_argument("--loader-seconds", type=float, default=2.0, help="minimum seconds of loader timing per recipe")
    p.add_argument("--no-ar", action="store_true", help="skip the AR step (MDLM/AR ratio)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if not args.fasta.exists():
        print(f"skip: {args.fasta} not found (needs ../shared/data or DNA_MDLM_SHARED_DATA)")
        return 0
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), load average before: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"data: {args.fasta.name}; median of {args.steps} steps after one warm-up\n", flush=True)

    rows = []
    for name in args.recipes:
        cfg = recipe(name)
        window, batch = cfg["data"]["window"], cfg["data"]["batch_size"]
        if args.max_tokens and batch * window > args.max_tokens:
            batch = max(1, args.max_tokens // window)
        rc_aug = cfg["data"]["rc_aug"] if cfg["data"]["rc_aug"] is not None else not cfg["model"].get("rcps", True)
        dm = datamodule(args.fasta, window, batch, rc_aug)
        loader_wps = loader_windows_per_second(dm, args.loader_seconds, min_batches=5)
        iterator = iter(dm.train_dataloader())
        batches = [next(iterator) for _ in range(args.steps + 1)]
        mdlm_times, params = step_seconds(cfg, "mdlm", batches)
        row = {"recipe": name, "d_model": cfg["model"]["d_model"], "n_layer": cfg["model"]["n_layer"],
               "window": window, "batch": batch, "recipe_batch": cfg["data"]["batch_size"], "params": params,
               "mdlm_s": statistics.median(mdlm_times), "loader_wps": loader_wps}
        if not args.no_ar:
            ar_times, row["ar_params"] = step_seconds(cfg, "ar", batches)
            row["ar_s"] = statistics.median(ar_times)
        rows.append(row)
        print(f"  {name}: MDLM {row['mdlm_s']:.3f} s/step" + (f", AR {row['ar_s']:.3f} s/step" if "ar_s" in row else "")
              + f", loader {loader_wps:,.0f} windows/s", flush=True)

    print("\n| recipe | model | window x batch | params | MDLM s/step | MDLM tokens/s | AR tokens/s | MDLM/AR step time "
          "| loader windows/s | trainer windows/s | loader / trainer |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        tokens = r["window"] * r["batch"]
        batch = f"{r['batch']}" + (f" (recipe {r['recipe_batch']})" if r["batch"] != r["recipe_batch"] else "")
        trainer_wps = r["batch"] / r["mdlm_s"]
        ar = (f"{tokens / r['ar_s']:,.0f} | {r['mdlm_s'] / r['ar_s']:.2f}x") if "ar_s" in r else "- | -"
        print(f"| {r['recipe']} | d{r['d_model']} x {r['n_layer']} PS | {r['window']} x {batch} | {r['params']:,} | "
              f"{r['mdlm_s']:.3f} | {tokens / r['mdlm_s']:,.0f} | {ar} | {r['loader_wps']:,.0f} | {trainer_wps:,.1f} | "
              f"{r['loader_wps'] / trainer_wps:,.0f}x |")
    worst = min(r["loader_wps"] / (r["batch"] / r["mdlm_s"]) for r in rows)
    print(f"\nloader / trainer windows/s, worst recipe: {worst:,.0f}x (target >= 10x): "
          f"{'met' if worst >= 10 else 'NOT met'}")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
