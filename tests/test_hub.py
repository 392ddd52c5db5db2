"""Hub ids wherever a model is read: a Hugging Face cache built in a temp folder, read with HF_HUB_OFFLINE=1.

The cached model's config.json is written in the published Caduceus form (model_type caduceus, an auto_map to remote
code, transformers_version 4.38.1, complement_map with string keys, no dna-mdlm fields), so these tests also show
that a released checkpoint loads as it is, without running remote code. No network is used.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dna_mdlm.cli import main
from dna_mdlm.errors import InputError
from dna_mdlm.generate import sample
from dna_mdlm.loading import load_language_model, load_model, model_dir
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.tokenizer import encode_dna

REPO = "kuleshov-group/caduceus-ps_seqlen-1k_d_model-8_n_layer-1_test"
SHA = "0123456789abcdef0123456789abcdef01234567"
PUBLISHED_KEYS = {
    "auto_map": {"AutoConfig": "configuration_caduceus.CaduceusConfig",
                 "AutoModel": "modeling_caduceus.Caduceus",
                 "AutoModelForMaskedLM": "modeling_caduceus.CaduceusForMaskedLM",
                 "AutoModelForSequenceClassification": "modeling_caduceus.CaduceusForSequenceClassification"},
    "transformers_version": "4.38.1",
    "torch_dtype": "float32",
    "architectures": ["CaduceusForMaskedLM"],
}
DNA_MDLM_ONLY = ("objective", "train_window", "schedule", "time_conditioning", "pooling_strategy", "head",
                 "head_hidden", "head_dropout", "conjoin_train", "conjoin_eval")


@pytest.fixture()
def hub(tmp_path, monkeypatch):
    """A published-style model in a hub-shaped cache under HF_HOME, plus the same files as a plain directory."""
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1, rcps=True, fused_add_norm=True))
    plain = tmp_path / "plain"
    model.save_pretrained(plain)
    cfg = json.loads((plain / "config.json").read_text())
    for key in DNA_MDLM_ONLY + ("dtype",):
        cfg.pop(key, None)
    cfg.update(PUBLISHED_KEYS)
    (plain / "config.json").write_text(json.dumps(cfg, indent=2))
    home = tmp_path / "hf"
    repo_dir = home / "hub" / ("models--" + REPO.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / SHA
    shutil.copytree(plain, snapshot)
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(SHA)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return plain, snapshot


def test_a_hub_id_loads_offline_from_the_cache_like_the_directory(hub):
    plain, snapshot = hub
    assert model_dir(REPO) == snapshot and model_dir(f"{REPO}@main") == snapshot
    a, kind_a = load_model(plain)
    b, kind_b = load_model(REPO)
    assert kind_a == kind_b == "mdlm"  # a masked-LM checkpoint is read as an MDLM denoiser
    x = torch.from_numpy(encode_dna("ACGTTGCAAC" * 5))[None]
    with torch.no_grad():
        assert torch.equal(a(x).logits, b(x).logits)
    assert b.config.fused_add_norm is True and b.config.objective == "mdlm"
    assert sample(load_language_model(REPO), 2, 40, steps=4, seed=1) == sample(load_language_model(plain), 2, 40,
                                                                               steps=4, seed=1)


def test_every_verb_takes_a_hub_id(hub, tmp_path, capsys):
    plain, _ = hub
    fa = tmp_path / "x.fa"
    fa.write_text(">a\n" + "ACGTTGCAAC" * 20 + "\n")
    outs = {}
    for name, model in (("hub", REPO), ("dir", str(plain))):
        o = tmp_path / name
        o.mkdir()
        assert main(["likelihood", "--model", model, "--fasta", str(fa), "--out", str(o / "l.json")]) == 0
        assert main(["embed", "--model", model, "--fasta", str(fa), "--out", str(o / "e.npz")]) == 0
        assert main(["sample", "--model", model, "--num-samples", "2", "--length", "30", "--steps", "4",
                     "--out", str(o / "s.fa")]) == 0
        outs[name] = (json.loads((o / "l.json").read_text())["bits_per_base"], (o / "s.fa").read_text().split("\n")[1])
    assert outs["hub"] == outs["dir"]


def test_offline_and_not_cached_is_one_line_that_says_how_to_download(hub, capsys, tmp_path):
    with pytest.raises(InputError, match=r"not in the Hugging Face cache while offline.*hf download other/model"):
        model_dir("other/model")
    (tmp_path / "x.fa").write_text(">a\nACGTACGT\n")
    rc = main(["likelihood", "--model", "other/model@v1", "--fasta", str(tmp_path / "x.fa")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "hf download other/model" in err[0]


def test_pickled_weights_are_never_read(hub, tmp_path):
    plain, _ = hub
    bad = tmp_path / "pickled"
    bad.mkdir()
    (bad / "config.json").write_text((plain / "config.json").read_text())
    torch.save({"x": torch.zeros(1)}, bad / "pytorch_model.bin")
    with pytest.raises(InputError, match="model.safetensors missing.*never from pickled"):
        load_model(bad)


def test_a_local_path_that_looks_like_an_id_but_does_not_exist_is_a_plain_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(InputError, match="no such directory or hub id"):
        load_model(str(Path("runs") / "missing" / "model"))
