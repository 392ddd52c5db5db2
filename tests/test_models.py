"""Caduceus models: causality, bidirectionality, RC equivariance (PS, both add-norm paths), Ph conjoining,
padding, recurrent stepping, save/load, and loading published-style state dicts with tied keys omitted."""

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoModelForMaskedLM

import dna_mdlm.models.modeling_caduceus as mc
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM, CaduceusForSequenceClassification, CaduceusModel
from dna_mdlm.models.modeling_caduceus import masked_pool, rc_padded
from dna_mdlm.ops import selective_scan as ss
from dna_mdlm.tokenizer import MASK_ID, PAD_ID, complement_map, rc_ids

COMP = torch.tensor(complement_map())


def tiny(**kw):
    base = dict(d_model=16, n_layer=2, rcps=True)
    base.update(kw)
    return CaduceusConfig(**base)


def ids(batch=2, length=29, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(7, 12, (batch, length), generator=g)


def lm(cfg, seed=0):
    torch.manual_seed(seed)
    return CaduceusForMaskedLM(cfg).double().eval()


def test_causal_mamba_ignores_the_future():
    model = lm(tiny(bidirectional=False, rcps=False, objective="ar"))
    x = ids()
    y = x.clone()
    y[:, 15:] = torch.randint(7, 11, y[:, 15:].shape)
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert torch.allclose(a[:, :15], b[:, :15], atol=1e-12)
    assert not torch.allclose(a[:, 15:], b[:, 15:])


@pytest.mark.parametrize("rcps", [False, True])
def test_bimamba_sees_both_sides(rcps):
    model = lm(tiny(rcps=rcps))
    x = ids()
    y = x.clone()
    y[:, 20] = 7 if int(x[0, 20]) != 7 else 8
    with torch.no_grad():
        a, b = model(x).logits, model(y).logits
    assert not torch.allclose(a[:, :20], b[:, :20])  # the past sees a change in the future
    assert not torch.allclose(a[:, 21:], b[:, 21:])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("masked", [False, True])
def test_ps_logits_are_rc_equivariant(fused, masked):
    model = lm(tiny(fused_add_norm=fused, n_layer=3))
    x = ids(length=31)
    if masked:
        x[:, ::3] = MASK_ID  # the diffusion setting: [MASK] is its own complement
    with torch.no_grad():
        a, b = model(x).logits, model(rc_ids(x)).logits
    # logits(rc x)[l, v] == logits(x)[L-1-l, comp(v)]
    assert torch.allclose(b, a.flip(1)[..., COMP], atol=1e-10)


def test_ph_backbone_is_not_equivariant():
    model = lm(tiny(rcps=False))
    x = ids()
    with torch.no_grad():
        a, b = model(x).logits, model(rc_ids(x)).logits
    assert not torch.allclose(b, a.flip(1)[..., COMP], atol=1e-4)


def upstream_fused_ps_backbone(model: CaduceusModel, x: torch.Tensor) -> torch.Tensor:
    """The fused-add-norm PS forward written the way the research code calls its Triton kernel: the second
    half goes in as the 'forward' stream and the RC'd first half as the 'rc' stream, concatenated in that
    order. An independent path to check the half swap reproduced in the model."""
    bb = model.backbone

    def add_norm(h, r, norm):
        s = h if r is None else h + r
        return norm(s), s

    hidden, residual = bb.embeddings(x), None
    for layer in bb.layers:
        d = hidden.shape[-1] // 2
        r_hi = None if residual is None else residual[..., d:]
        r_lo = None if residual is None else residual[..., :d].flip(-2, -1)
        h_f, r_f = add_norm(hidden[..., d:], r_hi, layer.norm)
        h_r, r_r = add_norm(hidden[..., :d].flip(-2, -1), r_lo, layer.norm)
        hidden = torch.cat([h_f, h_r.flip(-2, -1)], -1)
        residual = torch.cat([r_f, r_r.flip(-2, -1)], -1)
        hidden = layer.mixer(hidden)
    d = hidden.shape[-1] // 2
    f, _ = add_norm(hidden[..., :d], residual[..., :d], bb.norm_f)
    r, _ = add_norm(hidden[..., d:].flip(-2, -1), residual[..., d:].flip(-2, -1), bb.norm_f)
    return torch.cat([f, r.flip(-2, -1)], -1)


def test_fused_add_norm_reproduces_the_research_code_half_swap():
    fused = lm(tiny(fused_add_norm=True, n_layer=3))
    x = ids()
    with torch.no_grad():
        ours = fused.caduceus(x).last_hidden_state
        theirs = upstream_fused_ps_backbone(fused.caduceus, x)
    assert torch.allclose(ours, theirs, atol=1e-12)
    # Same weights through the unfused path compute a different function (caduceus.md §3.4).
    unfused = lm(tiny(fused_add_norm=False, n_layer=3))
    sd = {k.replace(".norm.submodule.", ".norm.").replace("norm_f.submodule.", "norm_f."): v
          for k, v in unfused.state_dict().items()}
    fused.load_state_dict(sd)
    with torch.no_grad():
        assert not torch.allclose(fused(x).logits, unfused(x).logits, atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max", "first", "last"])
@pytest.mark.parametrize("rcps", [True, False])
def test_conjoined_classifier_is_rc_invariant_with_padding(pooling, rcps):
    torch.manual_seed(0)
    cfg = tiny(rcps=rcps, num_labels=3)
    model = CaduceusForSequenceClassification(cfg, pooling_strategy=pooling, conjoin_eval=not rcps).double().eval()
    lengths = [29, 17]
    x = ids(length=29)
    mask = torch.arange(29)[None] < torch.tensor(lengths)[:, None]
    x = torch.where(mask, x, torch.full_like(x, PAD_ID))
    with torch.no_grad():
        a = model(x, attention_mask=mask).logits
        b = model(rc_padded(x, mask), attention_mask=mask).logits
        # each padded row equals the same sequence run alone, unpadded
        alone = model(x[1:, :17]).logits
    assert torch.allclose(a, b, atol=1e-10)
    assert torch.allclose(a[1:], alone, atol=1e-10)


def test_padding_gives_unpadded_outputs_at_real_positions():
    model = lm(tiny(rcps=True))
    x = ids(batch=1, length=20)
    padded = torch.cat([x, torch.full((1, 7), PAD_ID)], 1)
    mask = torch.arange(27)[None] < 20
    with torch.no_grad():
        a = model(x).logits
        b = model(padded, attention_mask=mask).logits[:, :20]
    assert torch.allclose(a, b, atol=1e-10)


def test_masked_pool():
    h = torch.arange(12, dtype=torch.float64).view(1, 4, 3)
    m = torch.tensor([[True, True, True, False]])
    assert masked_pool(h, m, "mean").tolist() == [[3.0, 4.0, 5.0]]
    assert masked_pool(h, m, "max").tolist() == [[6.0, 7.0, 8.0]]
    assert masked_pool(h, m, "first").tolist() == [[0.0, 1.0, 2.0]]
    assert masked_pool(h, m, "last").tolist() == [[6.0, 7.0, 8.0]]


def test_recurrent_step_matches_full_forward():
    model = lm(tiny(bidirectional=False, rcps=False, objective="ar", n_layer=3))
    x = ids(length=23)
    with torch.no_grad():
        full = model(x).logits
        cache = model.allocate_inference_cache(x.shape[0])
        steps = torch.stack([model.step(x[:, t], cache) for t in range(x.shape[1])], 1)
    assert torch.allclose(full, steps, atol=1e-10)


@pytest.mark.parametrize("rcps,fused", [(True, True), (True, False), (False, False)])
def test_save_pretrained_round_trip(tmp_path, rcps, fused):
    model = lm(tiny(rcps=rcps, fused_add_norm=fused))
    model.save_pretrained(tmp_path)
    back = AutoModelForMaskedLM.from_pretrained(tmp_path).double().eval()
    assert isinstance(back, CaduceusForMaskedLM)
    x = ids()
    with torch.no_grad():
        assert torch.equal(model(x).logits, back(x).logits)
    assert (tmp_path / "model.safetensors").is_file()


def published_keys(n_layer: int) -> set[str]:
    """Key set of the released PS checkpoint (reference/caduceus.md §5.3), tied keys absent."""
    keys = {"caduceus.backbone.embeddings.word_embeddings.embedding.weight",
            "caduceus.backbone.embeddings.word_embeddings.complement_map", "caduceus.backbone.norm_f.weight",
            "lm_head.complement_map"}
    for i in range(n_layer):
        pre = f"caduceus.backbone.layers.{i}."
        keys.add(pre + "norm.weight")
        for direction in ("mamba_fwd", "mamba_rev"):
            for p in ("conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D"):
                keys.add(f"{pre}mixer.submodule.{direction}.{p}")
        keys.update({pre + "mixer.submodule.mamba_fwd.in_proj.weight", pre + "mixer.submodule.mamba_fwd.out_proj.weight"})
    return keys


def test_published_state_dict_with_missing_tied_keys_loads_shared(tmp_path):
    cfg = tiny(fused_add_norm=True, n_layer=2)
    src = lm(cfg, seed=3)
    sd = {k: v.float().contiguous() for k, v in src.state_dict().items() if k in published_keys(2)}
    assert set(sd) == published_keys(2)  # our names are the published ones
    save_file(sd, str(tmp_path / "model.safetensors"))
    conf = cfg.to_dict()
    conf["architectures"] = ["CaduceusForMaskedLM"]
    (tmp_path / "config.json").write_text(json.dumps(conf))
    loaded = CaduceusForMaskedLM.from_pretrained(tmp_path).double().eval()
    mixer = loaded.caduceus.backbone.layers[1].mixer.submodule
    assert mixer.mamba_rev.in_proj.weight is mixer.mamba_fwd.in_proj.weight
    assert mixer.mamba_rev.out_proj.weight is mixer.mamba_fwd.out_proj.weight
    assert loaded.lm_head.lm_head.weight is loaded.caduceus.backbone.embeddings.word_embeddings.embedding.weight
    x = ids()
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, src.float().double()(x).logits, atol=1e-6)


def test_released_model_size():
    cfg = CaduceusConfig(d_model=256, n_layer=16, rcps=True, fused_add_norm=True)
    model = CaduceusForMaskedLM(cfg)
    assert sum(p.numel() for p in model.parameters()) == 7_725_312  # "7.7M", caduceus.md §5.3
    assert cfg.complement_map["7"] == 10 and len(cfg.complement_map) == 16


def test_time_conditioning_keeps_ps_equivariance():
    model = lm(tiny(time_conditioning=True))
    x = ids()
    sigma = torch.tensor([0.3, 2.0], dtype=torch.float64)
    with torch.no_grad():
        a = model(x, timesteps=sigma).logits
        b = model(rc_ids(x), timesteps=sigma).logits
        c = model(x, timesteps=sigma * 2).logits
    assert torch.allclose(b, a.flip(1)[..., COMP], atol=1e-10)
    assert not torch.allclose(a, c)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="bidirectional_strategy"):
        CaduceusConfig(bidirectional_strategy="concat")
    with pytest.raises(ValueError, match="unidirectional"):
        CaduceusConfig(objective="ar", bidirectional=True)
    assert CaduceusConfig(vocab_size=12).vocab_size == 16  # padded to a multiple of 8


# ---------------------------------------------------------------------------------------------------
# The one-call CPU layer (ops.mamba_mixer_fn) against the reference-shaped per-Mamba path
# ---------------------------------------------------------------------------------------------------

PATH_CONFIGS = [
    dict(rcps=True, fused_add_norm=True),
    dict(rcps=True, fused_add_norm=False),
    dict(rcps=False),
    dict(rcps=False, bidirectional=False, objective="ar"),
    dict(rcps=True, bidirectional_weight_tie=False),
    dict(rcps=False, bidirectional_strategy="ew_multiply"),
    dict(rcps=True, ssm_cfg={"bias": True}),
]


def _logits_and_grads(model, x, mask):
    model.zero_grad(set_to_none=True)
    logits = model(x, attention_mask=mask).logits
    keep = torch.ones_like(logits) if mask is None else mask[..., None].to(logits.dtype).expand_as(logits)
    ((logits * keep).pow(2).sum() + (logits * keep * torch.linspace(-1, 1, logits.numel(),
                                                                     dtype=logits.dtype).view_as(logits)).sum()).backward()
    return (logits * keep).detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cfg", PATH_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_one_call_layer_equals_per_mamba_reference_path(cfg, masked, monkeypatch):
    """Same weights, same function: logits and every parameter gradient of the fused CPU path equal the
    per-Mamba path with flips and the sequential reference scan, to float64 round-off."""
    if ss.load_cpp_extension() is None:
        pytest.skip("the C++ kernels cannot be built here")
    model = lm(tiny(n_layer=2, **cfg), seed=4).train()
    x = ids(batch=3, length=29, seed=2)
    mask = None
    if masked:
        mask = torch.ones(3, 29, dtype=torch.bool)
        mask[1, 20:] = False
        x = torch.where(mask, x, torch.full_like(x, PAD_ID))
    monkeypatch.setenv(ss.SCAN_ENV_VAR, "cpp")
    fused, g_fused = _logits_and_grads(model, x, mask)
    monkeypatch.setenv(ss.SCAN_ENV_VAR, "ref")
    ref, g_ref = _logits_and_grads(model, x, mask)
    torch.testing.assert_close(fused, ref, rtol=1e-11, atol=1e-11)
    assert set(g_fused) == set(g_ref)
    for name in g_ref:
        torch.testing.assert_close(g_fused[name], g_ref[name], rtol=1e-9, atol=1e-11, msg=name)


def test_inference_path_keeps_no_autograd_state():
    """Under no_grad (likelihood, embed, predict, the sampler) the layer saves nothing and gives the same
    logits as the training path."""
    model = lm(tiny(n_layer=2), seed=1)
    x = ids()
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        a = model(x).logits
    assert not saved
    b = model(x).logits
    assert torch.equal(a, b.detach())


def test_recurrent_step_is_one_selective_state_update_per_layer(monkeypatch):
    """Mamba.step delegates the recurrence to ops.selective_state_update (one home for one scan step)."""
    calls = []
    real = mc.selective_state_update

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(mc, "selective_state_update", counting)
    model = lm(tiny(bidirectional=False, rcps=False, objective="ar", n_layer=3))
    x = ids(length=11)
    with torch.no_grad():
        full = model(x).logits
        cache = model.allocate_inference_cache(x.shape[0])
        steps = torch.stack([model.step(x[:, t], cache) for t in range(x.shape[1])], 1)
    assert len(calls) == 3 * 11
    assert torch.allclose(full, steps, atol=1e-10)


def test_cpu_autocast_takes_the_reference_path_and_trains():
    """bf16-mixed training on CPU (autocast) keeps the reference-shaped path, whose matmuls autocast."""
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(tiny(n_layer=2))
    x = ids()
    with torch.no_grad():
        full = model(x).logits
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x).logits
        logits.float().sum().backward()
    assert torch.allclose(logits.float(), full, atol=0.05, rtol=0.05)
    assert all(p.grad is not None for p in model.parameters())
