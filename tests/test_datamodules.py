"""Tests for dna_mdlm/data/datamodules.py: loaders, eval caps, and exact mid-epoch resume under real Lightning."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from conftest import SLICE
from lightning.pytorch.callbacks import ModelCheckpoint

from dna_mdlm.data.datamodules import GenomeDataModule
from dna_mdlm.errors import InputError

SLICE_NAME = "20:40000001-41000000"

pytestmark = pytest.mark.skipif(not SLICE.is_file(), reason=f"shared genome data not found at {SLICE.parent}")


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("DNA_MDLM_CACHE", str(tmp_path / "cache"))


def test_batches_have_the_documented_shapes_and_splits_are_tiled():
    dm = GenomeDataModule(SLICE, window=256, batch_size=4, train_samples_per_epoch=12, seed=1,
                          val_regions=[f"{SLICE_NAME}:900,001-1,000,000"], test_regions=[f"{SLICE_NAME}:1-2,560"],
                          max_val_windows=10)
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert len(train) == 3
    batch = train[0]
    assert batch["input_ids"].shape == (4, 256) and batch["input_ids"].dtype == torch.int64
    assert batch["loss_mask"].dtype == torch.bool and batch["loss_mask"].shape == (4, 256)
    assert batch["record"] == [SLICE_NAME] * 4 and set(batch["strand"]) <= {"+", "-"}
    assert all(0 <= s and s + 256 <= 900_000 for s in batch["start"].tolist())  # never in the held-out tail
    val = [s for b in dm.val_dataloader() for s in b["start"].tolist()]
    assert len(val) == 10 and val[0] == 900_000 and val[-1] == 1_000_000 - 256  # evenly spread, right-aligned end
    test = [s for b in dm.test_dataloader() for s in b["start"].tolist()]
    assert test == [i * 256 for i in range(10)]


def test_no_validation_split_gives_no_val_loader_and_bad_arguments_fail():
    dm = GenomeDataModule(SLICE, window=128, batch_size=2)
    assert dm.val_dataloader() == []
    with pytest.raises(InputError, match="batch_size"):
        GenomeDataModule(SLICE, batch_size=0)
    with pytest.raises(InputError, match="--val-region"):
        GenomeDataModule(SLICE, val_regions=["not a region"]).setup("fit")


def test_training_stream_is_the_same_with_two_workers_and_new_each_epoch():
    def epochs(num_workers):
        dm = GenomeDataModule(SLICE, window=128, batch_size=4, train_samples_per_epoch=8, num_workers=num_workers,
                              seed=7)
        loader = dm.train_dataloader()
        out = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            out.append([tuple(b["start"].tolist()) + tuple(b["strand"]) for b in loader])
        return out

    serial, parallel = epochs(0), epochs(2)
    assert serial == parallel and serial[0] != serial[1]


class _RecordingModule(pl.LightningModule):
    """A minimal real model (embedding -> mean) that records which stream items each optimizer step used."""

    def __init__(self):
        super().__init__()
        self.embedding = torch.nn.Embedding(16, 4)
        self.seen: dict[int, list[int]] = {}

    def training_step(self, batch, batch_idx):
        self.seen[self.global_step] = batch["index"].tolist()
        return self.embedding(batch["input_ids"])[batch["loss_mask"]].mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_resume_mid_epoch_continues_the_same_data_stream(tmp_path):
    def datamodule():
        return GenomeDataModule(SLICE, window=64, batch_size=4, train_samples_per_epoch=40, seed=3)

    trainer_kwargs = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                          max_steps=14)
    full = _RecordingModule()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    pl.Trainer(default_root_dir=tmp_path, callbacks=[checkpoints], **trainer_kwargs).fit(full, datamodule())
    assert sorted(full.seen) == list(range(14))
    assert full.seen[10] == [40, 41, 42, 43]  # epoch 1 starts a fresh part of the stream
    for step in (6, 10, 12):  # mid-epoch, exactly at the epoch's end (10 batches per epoch), and in epoch 1
        resumed = _RecordingModule()
        pl.Trainer(default_root_dir=tmp_path / f"resume{step}", **trainer_kwargs).fit(
            resumed, datamodule(), ckpt_path=tmp_path / f"step={step}.ckpt")
        assert sorted(resumed.seen) == list(range(step, 14))
        assert all(resumed.seen[s] == full.seen[s] for s in resumed.seen), step
