"""Lightning DataModules over genome windows: what pretraining feeds on.

`GenomeDataModule` wraps `GenomeWindows` (dna_mdlm/data/genome.py): a random-window training stream
(`RandomWindows` + `EpochSampler`) and deterministic tiled validation / test sets. The training DataLoader is a
`ResumableDataLoader`: Lightning saves its `state_dict` (epoch and batches consumed) in every checkpoint and
restores it on resume, and because item `g` of the stream is a pure function of `(seed, g)`, a run resumed
mid-epoch continues at the same step with exactly the batches the uninterrupted run would have seen.
`LabelledDataModule` does the same for class-labelled sequences (a class-conditional MDLM, `pretrain --labels`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..errors import InputError
from ..tokenizer import PAD_ID, rc_ids
from .genome import DEFAULT_MAX_N_FRAC, DEFAULT_WINDOW, EpochSampler, GenomeWindows, RandomWindows, TiledWindows
from .labelled import LabelledSequences, read_labelled


class ResumableDataLoader(DataLoader):
    """A DataLoader over an `EpochSampler` that can skip the batches already consumed in the current epoch.

    Lightning treats a loader with `state_dict` / `load_state_dict` as resumable and calls them when it saves
    and loads checkpoints. `consumed_batches` tells how many batches of the current epoch the training loop
    has finished; by default it counts batches this loader has yielded, but a fetcher that reads ahead makes
    that count too high, so `GenomeDataModule` passes a function reading the trainer's own progress counter.
    """

    def __init__(self, dataset: RandomWindows, batch_size: int, num_workers: int = 0,
                 consumed_batches: Callable[[], int | None] | None = None, num_replicas: int = 1, rank: int = 0,
                 **kwargs: Any):
        self.epoch_sampler = EpochSampler(len(dataset), num_replicas, rank)
        super().__init__(dataset, batch_size=batch_size, sampler=self.epoch_sampler, num_workers=num_workers,
                         **kwargs)
        self._consumed_batches = consumed_batches
        self._yielded = 0
        self._skipped = 0

    def __iter__(self):
        # A generator, so the sampler's epoch and skip are read at the first `next`, after Lightning has
        # restored state and called `set_epoch`.
        self._skipped = self.epoch_sampler.skip // self.batch_size
        self._yielded = 0
        for batch in super().__iter__():
            self._yielded += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        consumed = self._consumed_batches() if self._consumed_batches is not None else None
        if consumed is None:
            consumed = self._skipped + self._yielded
        return {"epoch": self.epoch_sampler.epoch, "consumed_batches": int(consumed)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch_sampler.set_epoch(state["epoch"])
        skip = int(state["consumed_batches"]) * self.batch_size
        # A checkpoint taken after the epoch's last batch: Lightning itself moves on to the next epoch (and
        # calls set_epoch), which must then start from its beginning.
        self.epoch_sampler.skip = skip if skip < self.epoch_sampler.per_rank else 0


class GenomeDataModule(pl.LightningDataModule):
    """Train / val / test windows from FASTA (+ BED) with held-out records or regions.

    Args (see `GenomeWindows` for the genome ones):
        fasta, bed, window, max_n_frac, val_records, val_regions, test_records, test_regions, unknown,
        cache_dir: passed to `GenomeWindows`.
        batch_size: windows per batch (all splits).
        num_workers: DataLoader worker processes (items do not depend on it).
        rc_aug: reverse-complement half of the training windows.
        seed: the training stream's seed.
        train_samples_per_epoch: windows per training epoch (the stream itself is endless).
        max_val_windows / max_test_windows: cap the tiled eval sets, keeping tiles spread evenly.
    Batches are dicts: `input_ids` (B, L) int64, `loss_mask` (B, L) bool, `start`/`end`/`index` (B,) int64,
    `record`/`strand` lists of str.
    """

    def __init__(
        self,
        fasta: str | os.PathLike | Sequence[str | os.PathLike],
        bed: str | os.PathLike | None = None,
        window: int = DEFAULT_WINDOW,
        batch_size: int = 16,
        num_workers: int = 0,
        val_records: Sequence[str] = (),
        val_regions: Sequence[str] = (),
        test_records: Sequence[str] = (),
        test_regions: Sequence[str] = (),
        max_n_frac: float = DEFAULT_MAX_N_FRAC,
        rc_aug: bool = True,
        seed: int = 0,
        train_samples_per_epoch: int = 10_000,
        max_val_windows: int | None = None,
        max_test_windows: int | None = None,
        unknown: str = "error",
        cache_dir: str | os.PathLike | None = None,
        pin_memory: bool = False,
    ):
        super().__init__()
        for name, value in (("batch_size", batch_size), ("train_samples_per_epoch", train_samples_per_epoch)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"{name}: expected a positive integer, got {value!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise InputError(f"num_workers: expected an integer >= 0, got {num_workers!r}")
        self.genome_kwargs = dict(
            fasta=fasta, bed=bed, window=window, max_n_frac=max_n_frac, val_records=val_records,
            val_regions=val_regions, test_records=test_records, test_regions=test_regions, unknown=unknown,
            cache_dir=cache_dir,
        )
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.rc_aug = rc_aug
        self.seed = seed
        self.train_samples_per_epoch = train_samples_per_epoch
        self.max_windows = {"val": max_val_windows, "test": max_test_windows}
        self.pin_memory = pin_memory
        self.genome: GenomeWindows | None = None
        self.train_set: RandomWindows | None = None
        self.eval_sets: dict[str, TiledWindows] = {}

    def setup(self, stage: str | None = None) -> None:
        # Built once and shared by all stages: validating and indexing the genome is the expensive part.
        if self.genome is None:
            self.genome = GenomeWindows(**self.genome_kwargs)
            self.genome.require_training_window()

    def _eval_set(self, split: str) -> TiledWindows:
        self.setup()
        if split not in self.eval_sets:
            self.eval_sets[split] = self.genome.eval_dataset(split, self.max_windows[split])
        return self.eval_sets[split]

    def _loader_kwargs(self) -> dict[str, Any]:
        return dict(num_workers=self.num_workers, pin_memory=self.pin_memory,
                    persistent_workers=self.num_workers > 0)

    def _consumed_batches(self) -> int | None:
        # The fit loop's count of training batches processed in the current epoch (a checkpoint saved in
        # on_train_batch_end already counts that batch as processed, not yet as completed): exact even though
        # Lightning's fetcher has already pulled the next batch from the loader.
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return None
        return trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> ResumableDataLoader:
        self.setup()
        if self.train_set is None:
            self.train_set = self.genome.train_dataset(self.train_samples_per_epoch, self.seed, self.rc_aug)
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableDataLoader(self.train_set, batch_size=self.batch_size, consumed_batches=self._consumed_batches,
                                   num_replicas=world, rank=rank, **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader | list:
        dataset = self._eval_set("val")
        if len(dataset) == 0:
            return []  # no validation split configured: Lightning skips validation
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **self._loader_kwargs())

    def test_dataloader(self) -> DataLoader | list:
        dataset = self._eval_set("test")
        if len(dataset) == 0:
            return []
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, **self._loader_kwargs())


class LabelledWindows(Dataset):
    """Labelled sequences as MDLM training items: `input_ids` (L,) right-padded to the longest sequence of the set,
    `loss_mask` / `attention_mask` (L,) True on real bases, `class_labels` () the class id.

    `stream=True` (training): item `g` is a pure function of `(seed, g)`, a sequence drawn uniformly with
    replacement and reverse-complemented with probability 1/2 when `rc_aug`, so any `g >= 0` is valid and the
    `EpochSampler` / `ResumableDataLoader` resume rules of genome windows hold unchanged. `stream=False`
    (validation): item i is sequence i as it is."""

    def __init__(self, data: LabelledSequences, length: int, num_samples: int | None = None, seed: int = 0,
                 rc_aug: bool = False, stream: bool = False):
        self.ids = data.encoded()
        self.labels = data.labels
        self.length = int(length)
        self.num_samples = int(num_samples or len(self.ids))
        self.seed, self.rc_aug, self.stream = int(seed), bool(rc_aug), bool(stream)

    def __len__(self) -> int:
        return self.num_samples if self.stream else len(self.ids)

    def __getitem__(self, g: int) -> dict:
        if self.stream:
            rng = np.random.default_rng([self.seed, int(g)])
            i = int(rng.integers(len(self.ids)))
            ids = rc_ids(torch.from_numpy(self.ids[i])).numpy() if self.rc_aug and rng.random() < 0.5 else self.ids[i]
        else:
            i = int(g)
            ids = self.ids[i]
        x = np.full(self.length, PAD_ID, dtype=np.int64)
        x[: len(ids)] = ids
        real = np.zeros(self.length, dtype=bool)
        real[: len(ids)] = True
        return {"input_ids": torch.from_numpy(x), "loss_mask": torch.from_numpy(real),
                "attention_mask": torch.from_numpy(real.copy()), "class_labels": torch.tensor(int(self.labels[i]))}


class LabelledDataModule(pl.LightningDataModule):
    """Class-labelled sequences for a class-conditional MDLM (`pretrain --labels`): what `GenomeDataModule` is for
    genome windows, with the same resumable training stream (`LabelledWindows`).

    Args:
        labels: a labels table (CSV/TSV, labelled FASTA or a Genomic Benchmarks task), read by
            `data.labelled.read_labelled` exactly as `finetune` reads it (at least two classes).
        window: the longest sequence allowed (bases); a longer one is an InputError naming `--labels` (never
            truncated). Batches are padded to the longest sequence of the table, not to the window.
        val_fraction: a seeded stratified share of the table held out for validation (0: none).
        batch_size, num_workers, seed, train_samples_per_epoch, rc_aug, unknown: as `GenomeDataModule`.
    Batches: `input_ids` (B, L) int64, `loss_mask` and `attention_mask` (B, L) bool, `class_labels` (B,) int64.
    `classes` lists the class names in id order."""

    def __init__(self, labels: str | os.PathLike, window: int, batch_size: int = 16, num_workers: int = 0,
                 val_fraction: float = 0.1, seed: int = 0, train_samples_per_epoch: int = 10_000,
                 rc_aug: bool = False, unknown: str = "error", max_val: int | None = None):
        super().__init__()
        data = read_labelled(labels, unknown=unknown, what="--labels")
        longest = int(data.lengths.max())
        if longest > window:
            i = int(data.lengths.argmax())
            name = data.ids[i] if data.ids else f"row {i + 1}"
            raise InputError(f"--labels {labels}: sequence {name} is {longest} bp, longer than --window {window} "
                             f"(raise --window; sequences are never truncated)")
        if not 0 <= val_fraction < 1:
            raise InputError(f"data.val_fraction {val_fraction}: expected a fraction in [0, 1)")
        train, val = (data.stratified_split(val_fraction, seed) if val_fraction > 0 else (data, None))
        if val is not None and max_val is not None and len(val) > max_val:
            val = val.subset(np.linspace(0, len(val) - 1, max_val).round().astype(np.int64))
        self.data, self.train, self.val, self.classes, self.length = data, train, val, list(data.classes), longest
        self.batch_size, self.num_workers, self.seed, self.rc_aug = batch_size, num_workers, seed, rc_aug
        self.train_samples_per_epoch = train_samples_per_epoch
        self.train_set = LabelledWindows(train, longest, train_samples_per_epoch, seed, rc_aug, stream=True)
        self.eval_sets = {"val": LabelledWindows(val, longest) if val is not None else [], "test": []}

    def setup(self, stage: str | None = None) -> None:
        return None

    def _eval_set(self, split: str):
        return self.eval_sets[split]

    def _consumed_batches(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def train_dataloader(self) -> ResumableDataLoader:
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        return ResumableDataLoader(self.train_set, batch_size=self.batch_size, consumed_batches=self._consumed_batches,
                                   num_replicas=world, rank=rank, num_workers=self.num_workers,
                                   persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader | list:
        dataset = self.eval_sets["val"]
        if len(dataset) == 0:
            return []
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
