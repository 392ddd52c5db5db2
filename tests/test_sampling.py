"""Tests for dna_mdlm.diffusion.sampling, dna_mdlm.generate and `dna-mdlm sample`: tiny real models (d_model 16, 2 layers)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from Bio import SeqIO
from conftest import SHARED_DATA  # the one definition (tests/conftest.py)

from dna_mdlm.cli import main
from dna_mdlm.diffusion.mdlm import MDLM
from dna_mdlm.diffusion.sampling import (
    ORDERS,
    SamplingStats,
    _Denoiser,
    allowed_ids,
    denoise_window,
    dilated_rank,
    make_unmasker,
    sample_categorical,
    shape_distribution,
    window_starts,
)
from dna_mdlm.errors import InputError
from dna_mdlm.generate import generate, sample
from dna_mdlm.models import CaduceusForMaskedLM
from dna_mdlm.models.configuration_caduceus import CaduceusConfig
from dna_mdlm.tokenizer import BOS_ID, MASK_ID, encode_dna

WINDOW = 32


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models on a shared 2-core machine: one thread avoids OpenMP spin contention (10-100x faster).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mdlm_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, rcps=True))
    model.config.train_window = WINDOW
    path = tmp_path_factory.mktemp("mdlm")
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def mdlm_model(mdlm_dir):
    return CaduceusForMaskedLM.from_pretrained(str(mdlm_dir)).eval()


@pytest.fixture(scope="module")
def ar_dir(tmp_path_factory):
    torch.manual_seed(1)
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=16, n_layer=2, bidirectional=False, rcps=False, objective="ar"))
    path = tmp_path_factory.mktemp("ar")
    model.save_pretrained(path)
    return path


def only_acgt(seqs):
    return all(set(s) <= set("ACGT") for s in seqs)


# --- distributions --------------------------------------------------------------------------------


def test_categorical_draw_is_float64():
    # 1e-50 underflows to 0 in float32: only a float64 draw can still pick that base.
    probs = torch.tensor([[0.0, 1e-50, 0.0, 0.0]] * 64, dtype=torch.float64)
    assert (sample_categorical(probs, torch.Generator().manual_seed(0)) == 1).all()
    # And the draw is exactly the float64 exponential race on the generator's stream.
    probs = torch.rand(8, 5, generator=torch.Generator().manual_seed(3))
    got = sample_categorical(probs, torch.Generator().manual_seed(7))
    u = torch.rand(probs.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, (probs.double() / -torch.log(u)).argmax(-1))


def test_categorical_frequencies_match_probabilities():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64).expand(20000, 4)
    freq = torch.bincount(sample_categorical(probs, torch.Generator().manual_seed(0)), minlength=4) / 20000
    assert torch.allclose(freq, probs[0].float(), atol=0.015)


def test_temperature_and_top_p_reshape_the_distribution():
    logp = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05], dtype=torch.float64))
    assert torch.equal(shape_distribution(logp, temperature=0), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    assert torch.allclose(shape_distribution(logp, top_p=0.7), torch.tensor([0.625, 0.375, 0, 0], dtype=torch.float64))
    assert torch.equal(shape_distribution(logp, top_p=1e-9), torch.tensor([1.0, 0, 0, 0], dtype=torch.float64))
    hot = shape_distribution(logp, temperature=2.0)
    assert hot[0] < 0.5 and hot[3] > 0.05 and abs(float(hot.sum()) - 1) < 1e-12
    assert shape_distribution(logp).dtype == torch.float64


# --- MDLM sampling --------------------------------------------------------------------------------


def test_alphabet_lengths_and_seed(mdlm_dir):
    seqs = sample(mdlm_dir, 3, 24, steps=8, seed=5)
    assert len(seqs) == 3 and all(len(s) == 24 for s in seqs) and only_acgt(seqs)
    assert sample(mdlm_dir, 3, 24, steps=8, seed=5) == seqs
    assert sample(mdlm_dir, 3, 24, steps=8, seed=6) != seqs
    with_n = sample(mdlm_dir, 3, 24, steps=8, seed=5, allow_n=True)
    assert set("".join(with_n)) <= set("ACGTN") and "N" in "".join(with_n)  # untrained: N is ~1/5 likely


def test_fixed_positions_never_change(mdlm_dir):
    pre, suf = "ACGTACGG", "TTGCA"
    seqs = sample(mdlm_dir, 2, 30, steps=8, prefix=pre, suffix=suf, seed=1)
    assert all(s.startswith(pre) and s.endswith(suf) and len(s) == 30 for s in seqs) and only_acgt(seqs)
    template = "ACGTNNNNNNNNNNACGTNNNNNNGGCC"
    seqs = sample(mdlm_dir, 2, None, steps=8, template=template, seed=1)
    for s in seqs:
        assert len(s) == len(template) and only_acgt(s)
        assert all(a == b for a, b in zip(s, template) if b != "N")


def test_infill_gap_longer_than_window(mdlm_dir):
    left, right = "ACGTTGCAACGT", "GGATCCGGATCC"
    length = len(left) + 70 + len(right)  # gap of 70 > window 32
    result = generate(mdlm_dir, 2, length, steps=6, prefix=left, suffix=right, seed=2)
    assert all(s.startswith(left) and s.endswith(right) and len(s) == length for s in result.sequences)
    assert result.stats.windows[-1] == (length - WINDOW, length)  # right flank is in view for the last window


def test_cache_sampler_identical_with_fewer_calls(mdlm_dir):
    # Many steps per base: most steps change nothing in a given row, so the cache is reused a lot.
    plain = generate(mdlm_dir, 3, 20, steps=48, sampler="ddpm", seed=11)
    cached = generate(mdlm_dir, 3, 20, steps=48, sampler="ddpm_cache", seed=11)
    assert cached.sequences == plain.sequences
    assert cached.stats.network_calls < plain.stats.network_calls
    assert cached.stats.row_evaluations < plain.stats.row_evaluations / 2


class RecordingDenoiser(torch.nn.Module):
    """The real model, also keeping every input it is given (to inspect the semi-AR windows)."""

    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.inputs = model, model.config, []

    def forward(self, input_ids, **kwargs):
        self.inputs.append(input_ids.clone())
        return self.model(input_ids, **kwargs)


def test_semi_ar_reaches_length_and_keeps_overlap(mdlm_model):
    recorder = RecordingDenoiser(mdlm_model)
    length, overlap = 90, 12
    result = generate(MDLM(recorder), 2, length, steps=4, sampler="ddpm", overlap=overlap, seed=3)
    seqs = result.sequences
    assert all(len(s) == length for s in seqs) and only_acgt(seqs)
    starts = window_starts(length, WINDOW, overlap)
    assert result.stats.windows == [(s, s + WINDOW) for s in starts]
    assert all(b - a <= WINDOW - overlap for a, b in zip(starts, starts[1:]))  # each window keeps >= overlap context
    final = torch.as_tensor(np.stack([encode_dna(s) for s in seqs]))
    # Within a window the number of masks only falls from call to call; it jumps up when a new window starts.
    masks = [int((z == MASK_ID).sum()) for z in recorder.inputs]
    firsts = [z for i, z in enumerate(recorder.inputs) if i == 0 or masks[i] > masks[i - 1]]
    assert len(firsts) == len(starts)
    for start, z in zip(starts[1:], firsts[1:]):
        context = z[:, :overlap]
        assert (context != MASK_ID).all()
        assert torch.equal(context, final[:, start:start + overlap])  # the context is what was emitted before


def test_temperature_zero_and_tiny_top_p_give_argmax(mdlm_model):
    # One step from the all-mask prior unmasks (almost) everything from a single network call.
    with torch.no_grad():
        logits = mdlm_model(torch.full((1, 24), MASK_ID)).logits[0][:, allowed_ids()]
    argmax = "".join("ACGT"[i] for i in logits.argmax(-1).tolist())
    assert sample(mdlm_model, 2, 24, steps=1, temperature=0, seed=0) == [argmax, argmax]
    assert sample(mdlm_model, 2, 24, steps=1, top_p=1e-6, seed=9) == [argmax, argmax]
    assert sample(mdlm_model, 2, 24, steps=1, seed=0) != [argmax, argmax]


# --- orders ---------------------------------------------------------------------------------------


class InputBlind(torch.nn.Module):
    """A denoiser that ignores its input: fixed logits per position (some peaked, some flat), so every order
    ranks positions differently, but the distribution a base is drawn from never depends on the chain."""

    def __init__(self, width: int, seed: int = 0):
        super().__init__()
        self.config = CaduceusConfig(d_model=8, n_layer=1, train_window=width)
        g = torch.Generator().manual_seed(seed)
        sharp = torch.linspace(0.0, 3.0, width)[:, None]  # position i: logits scaled from flat to peaked
        self.table = torch.randn(width, 16, generator=g) * sharp
        self.calls = 0

    def forward(self, input_ids, timesteps=None, attention_mask=None):
        self.calls += 1
        return type("Out", (), {"logits": self.table[: input_ids.shape[1]].expand(input_ids.shape[0], -1, -1)})()

    def base_probs(self) -> torch.Tensor:
        return torch.softmax(self.table[:, allowed_ids()].double(), -1)


def run_window(model, z, steps, order, sampler="ddpm", seed=0, gamma=0.5, temperature=1.0):
    stats = SamplingStats()
    mdlm = MDLM(model) if not isinstance(model, MDLM) else model
    den = _Denoiser(mdlm, allowed_ids(), temperature, 1.0, stats)
    out = denoise_window(den, z, steps, sampler, torch.Generator().manual_seed(seed), None, make_unmasker(order, gamma))
    return out, stats


@pytest.mark.parametrize("order", ORDERS)
def test_each_order_fills_exactly_the_masked_positions(mdlm_model, order):
    template = "ACGTNNNNNNNNNNACGTNNNNNNGGCC" * 3 + "NNNNNNNNNNNNNNNN"  # 100 bp: semi-AR over windows of 32
    result = generate(mdlm_model, 3, None, steps=6, template=template, order=order, seed=4,
                      **({"gamma": 0.3} if order == "entropy-bound" else {}))
    for s in result.sequences:
        assert len(s) == len(template) and only_acgt(s)
        assert all(a == b for a, b in zip(s, template) if b != "N")  # fixed bases untouched
    assert result.settings["order"] == order
    windows = len(result.stats.windows)
    assert windows == len(window_starts(len(template), WINDOW, WINDOW // 2)) and result.stats.network_calls <= 6 * windows


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("steps", [1, 3, 8, 48])
def test_calls_never_exceed_the_steps(mdlm_model, order, steps):
    z = torch.full((3, WINDOW), MASK_ID)
    z[:, :5] = torch.tensor(encode_dna("ACGTA"))
    for sampler in ("ddpm", "ddpm_cache"):
        out, stats = run_window(RecordingDenoiser(mdlm_model), z, steps, order, sampler)
        assert stats.network_calls <= steps and not (out == MASK_ID).any()
        assert torch.equal(out[:, :5], z[:, :5]) and ((out[:, 5:] >= 7) & (out[:, 5:] <= 10)).all()
    if steps == 1:
        assert stats.network_calls == 1


@pytest.mark.parametrize("order", ["dilated", "confidence", "margin"])
def test_ranked_orders_follow_the_schedule(mdlm_model, order):
    # Masks left before each call: floor(N0 * m(t_k) / m(1)), with m(t) = t for the log-linear schedule.
    recorder = RecordingDenoiser(mdlm_model)
    steps, n0 = 5, WINDOW
    run_window(recorder, torch.full((2, WINDOW), MASK_ID), steps, order)
    seen = [int((z[0] == MASK_ID).sum()) for z in recorder.inputs]
    times = torch.linspace(1.0, 1e-5, steps + 1, dtype=torch.float64)
    assert seen == [int(np.floor(n0 * float(t))) for t in times[:steps]]


def test_entropy_bound_adapts_the_number_of_calls(mdlm_model):
    z = torch.full((2, WINDOW), MASK_ID)
    _, loose = run_window(mdlm_model, z, 16, "entropy-bound", gamma=1e6)
    assert loose.network_calls == 1  # everything fits under the bound: one call fills the window
    recorder = RecordingDenoiser(mdlm_model)
    _, tight = run_window(recorder, z, 16, "entropy-bound", gamma=1e-9)
    times = torch.linspace(1.0, 1e-5, 17, dtype=torch.float64)
    seen = [int((z[0] == MASK_ID).sum()) for z in recorder.inputs]
    # Never slower than the schedule (k >= the schedule's count, and at least one position per call).
    assert all(n <= int(np.floor(WINDOW * float(t))) for n, t in zip(seen, times)) and tight.network_calls <= 16
    _, mid = run_window(mdlm_model, z, 16, "entropy-bound", gamma=3.0)
    assert loose.network_calls < mid.network_calls <= tight.network_calls


@pytest.mark.parametrize("order", ORDERS)
def test_orders_are_deterministic_and_cache_exact(mdlm_dir, order):
    kw = {"gamma": 0.3} if order == "entropy-bound" else {}
    plain = generate(mdlm_dir, 3, 40, steps=24, sampler="ddpm", order=order, seed=7, **kw)
    cached = generate(mdlm_dir, 3, 40, steps=24, sampler="ddpm_cache", order=order, seed=7, **kw)
    assert cached.sequences == plain.sequences
    assert cached.stats.row_evaluations <= plain.stats.row_evaluations
    assert sample(mdlm_dir, 3, 40, steps=24, order=order, seed=7, **kw) == plain.sequences
    assert sample(mdlm_dir, 3, 40, steps=24, order=order, seed=8, **kw) != plain.sequences


def test_orders_differ_from_each_other(mdlm_dir):
    seqs = {o: sample(mdlm_dir, 2, 32, steps=4, order=o, seed=3) for o in ORDERS}
    assert len({tuple(v) for v in seqs.values()}) == len(ORDERS)


def test_dilated_order_is_coarse_to_fine():
    assert dilated_rank(8).argsort().tolist() == [0, 4, 2, 6, 1, 5, 3, 7]
    order = dilated_rank(64).argsort()
    for j in range(7):  # every prefix of 2^j positions is evenly spaced with stride 64 / 2^j
        assert sorted(order[: 2 ** j].tolist()) == list(range(0, 64, 64 // 2 ** j))
    odd = dilated_rank(37)
    assert sorted(odd.tolist()) == list(range(37)) and odd[0] == 0


def _chi_square(samples: torch.Tensor, probs: torch.Tensor) -> float:
    """Pearson chi-square of per-position base counts (N, W ids) against probs (W, 4); 3 W degrees of freedom."""
    counts = torch.stack([(samples == b).sum(0) for b in range(7, 11)], dim=1).double()
    expected = probs * samples.shape[0]
    return float(((counts - expected) ** 2 / expected).sum())


@pytest.mark.parametrize("order", ORDERS)
def test_input_blind_model_gives_every_order_the_random_distribution(order):
    # With a denoiser that ignores its input, every position's base is a draw from its fixed distribution,
    # whatever the order: an order may only change which positions are filled together, never the bases.
    # Statistic: per-position chi-square (48 degrees of freedom: mean 48, sd 9.8); under the null the
    # threshold 110 has p < 1e-6, and a fixed seed makes the test deterministic. The same statistic on
    # temperature-0.7 samples (a real distortion) is far above it: the test has power.
    width, n = 16, 4000
    model = InputBlind(width)
    z = torch.full((n, width), MASK_ID)
    out, stats = run_window(model, z, 4, order, seed=11)
    assert stats.network_calls <= 4 and not (out == MASK_ID).any()
    chi = _chi_square(out, model.base_probs())
    assert chi < 110, chi
    ref, _ = run_window(model, z, 4, "random", seed=12)
    counts = lambda x: torch.stack([(x == b).sum(0) for b in range(7, 11)], 1).double()  # noqa: E731
    pooled = (counts(out) + counts(ref)) / (2 * n)
    two_sample = float((((counts(out) - counts(ref)) ** 2) / (2 * n * pooled).clamp_min(1e-12)).sum())
    assert two_sample < 110, two_sample  # and the same as the random order's samples
    cold, _ = run_window(model, z, 4, order, seed=11, temperature=0.7)
    assert _chi_square(cold, model.base_probs()) > 1000


# --- AR -------------------------------------------------------------------------------------------


def test_ar_stepping_equals_full_forward(ar_dir):
    model = CaduceusForMaskedLM.from_pretrained(str(ar_dir)).eval()
    ids = torch.cat([torch.full((2, 1), BOS_ID), torch.randint(7, 11, (2, 19), generator=torch.Generator().manual_seed(0))], 1)
    with torch.no_grad():
        full = model(ids).logits
    cache = model.allocate_inference_cache(2)
    stepped = torch.stack([model.step(ids[:, i], cache) for i in range(ids.shape[1])], dim=1)
    assert torch.allclose(stepped, full, atol=1e-4, rtol=1e-4)


def test_ar_sampling_prefix_and_unsupported_constraints(ar_dir):
    result = generate(ar_dir, 3, 40, prefix="ACGTAC", seed=4)
    assert all(len(s) == 40 and s.startswith("ACGTAC") for s in result.sequences) and only_acgt(result.sequences)
    assert result.stats.network_calls == 40  # one recurrent step per base
    assert sample(ar_dir, 3, 40, prefix="ACGTAC", seed=4) == result.sequences
    with pytest.raises(InputError, match="only --prefix"):
        sample(ar_dir, 1, 20, suffix="ACGT")


def test_markov_model_samples(tmp_path):
    fasta = SHARED_DATA / "genomes" / "human_GRCh37_chr20_40000001-41000000.fa"
    if not fasta.is_file():
        pytest.skip(f"shared data not found at {fasta} (set DNA_MDLM_SHARED_DATA)")
    from dna_mdlm.baselines.markov import MarkovLM

    real = "".join(line.strip() for line in fasta.read_text().splitlines()[1:400]).upper().replace("N", "")
    model = MarkovLM.fit([real], k=3)
    model.save_pretrained(tmp_path / "markov")
    seqs = sample(tmp_path / "markov", 4, 50, prefix="ACG", seed=0)
    assert all(len(s) == 50 and s.startswith("ACG") for s in seqs) and only_acgt(seqs)
    with pytest.raises(InputError, match="only --prefix"):
        sample(tmp_path / "markov", 1, None, template="ACNNNA")


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"length": 0}, "--length"),
    ({"length": None, "template": "ACGTNNXNN"}, "--template: invalid character 'X' at position 6"),
    ({"length": 8, "prefix": "ACGTACGTAC"}, "--prefix is 10 bp, longer than --length 8"),
    ({"length": 10, "steps": 0}, "--steps"),
    ({"length": 10, "top_p": 0.0}, "--top-p"),
    ({"length": 10, "temperature": -1.0}, "--temperature"),
    ({"length": 12, "template": "ACGTNNNN"}, "does not match"),
])
def test_bad_arguments_raise_one_line_errors(mdlm_dir, kwargs, message):
    with pytest.raises(InputError) as exc:
        generate(mdlm_dir, 2, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("kwargs, message", [
    ({"order": "lefttoright"}, "--order 'lefttoright': expected one of random, dilated"),
    ({"order": "entropy-bound", "gamma": 0.0}, "--gamma 0.0: expected a positive"),
    ({"order": "entropy-bound", "gamma": -1.0}, "--gamma -1.0"),
    ({"order": "entropy-bound", "gamma": float("nan")}, "--gamma nan"),
    ({"order": "confidence", "gamma": 1.0}, "--gamma applies to --order entropy-bound only"),
    ({"steps": -3, "order": "dilated"}, "--steps"),
])
def test_bad_order_arguments(mdlm_dir, kwargs, message):
    with pytest.raises(InputError) as exc:
        generate(mdlm_dir, 2, 10, **kwargs)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_orders_are_for_mdlm_models_only(ar_dir):
    with pytest.raises(InputError, match="orders are for MDLM models"):
        generate(ar_dir, 1, 10, order="confidence")
    assert len(generate(ar_dir, 1, 10, order="random").sequences[0]) == 10


def test_cli_order_choices_are_the_library_orders():
    from dna_mdlm.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb").choices["sample"]
    assert tuple(next(a for a in sub._actions if a.dest == "order").choices) == ORDERS


def test_missing_model_directory(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        sample(tmp_path / "nope", 1, 10)


# --- CLI ------------------------------------------------------------------------------------------


def test_cli_writes_fasta_and_sidecar(mdlm_dir, tmp_path):
    out = tmp_path / "samples.fa"
    rc = main(["sample", "--model", str(mdlm_dir), "--num-samples", "3", "--length", "40", "--steps", "6",
               "--prefix", "ACGT", "--seed", "2", "--out", str(out)])
    assert rc == 0
    records = list(SeqIO.parse(out, "fasta"))
    assert len(records) == 3 and all(len(r.seq) == 40 and str(r.seq).startswith("ACGT") for r in records)
    assert "sampler=ddpm_cache" in records[0].description
    sidecar = json.loads((tmp_path / "samples.fa.json").read_text())
    assert sidecar["steps"] == 6 and sidecar["kind"] == "mdlm" and sidecar["stats"]["network_calls"] > 0
    assert [str(r.seq) for r in records] == sample(mdlm_dir, 3, 40, steps=6, prefix="ACGT", seed=2)


def test_cli_order_and_calls_in_the_sidecar(mdlm_dir, tmp_path, capsys):
    out = tmp_path / "eb.fa"
    assert main(["sample", "--model", str(mdlm_dir), "--num-samples", "2", "--length", "40", "--steps", "6",
                 "--order", "entropy-bound", "--gamma", "0.25", "--seed", "2", "--out", str(out)]) == 0
    records = list(SeqIO.parse(out, "fasta"))
    assert "order=entropy-bound" in records[0].description and "gamma=0.25" in records[0].description
    sidecar = json.loads((tmp_path / "eb.fa.json").read_text())
    assert sidecar["order"] == "entropy-bound" and sidecar["gamma"] == 0.25 and sidecar["steps"] == 6
    calls = sidecar["stats"]["network_calls"]
    assert 0 < calls <= 6 * len(sidecar["stats"]["windows"])
    assert f"{calls} network calls" in capsys.readouterr().err
    assert [str(r.seq) for r in records] == sample(mdlm_dir, 2, 40, steps=6, order="entropy-bound", gamma=0.25, seed=2)


@pytest.mark.parametrize("extra", [
    ["--length", "0"],
    ["--length", "10", "--prefix", "ACGTACGTACGT"],
    ["--template", "ACGTNN-NN"],
    ["--length", "10", "--steps", "0", "--order", "margin"],
    ["--length", "10", "--order", "entropy-bound", "--gamma", "0"],
    ["--length", "10", "--order", "entropy-bound", "--gamma", "-0.5"],
    ["--length", "10", "--order", "sideways"],
    ["--length", "10", "--gamma", "1"],
])
def test_cli_bad_input_exits_2_and_writes_nothing(mdlm_dir, tmp_path, capsys, extra):
    out = tmp_path / "bad.fa"
    try:
        rc = main(["sample", "--model", str(mdlm_dir), "--num-samples", "2", "--out", str(out), *extra])
    except SystemExit as exc:  # argparse's own checks (an unknown --order)
        rc = exc.code
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dna-mdlm sample: error:") and "\n" not in err
    assert list(tmp_path.iterdir()) == []


def test_cli_missing_model_exits_2(tmp_path, capsys):
    out = tmp_path / "x.fa"
    assert main(["sample", "--model", str(tmp_path / "none"), "--num-samples", "1", "--length", "5", "--out", str(out)]) == 2
    assert "no such directory" in capsys.readouterr().err and not out.exists()
