"""The MDLM objective: schedules, stratified times, masking, SUBS and the NELBO on hand-computable cases."""

import math

import pytest
import torch

from dna_mdlm.diffusion.mdlm import MDLM, NEG_INF, mask_tokens, stratified_times, subs_log_probs
from dna_mdlm.diffusion.schedules import Cosine, Linear, LogLinear, get_schedule
from dna_mdlm.models import CaduceusConfig, CaduceusForMaskedLM
from dna_mdlm.tokenizer import MASK_ID, N_ID, PAD_ID


class UniformACGT(torch.nn.Module):
    """A denoiser that always predicts 1/4 for each base (and nothing else)."""

    config = CaduceusConfig(d_model=8, n_layer=1)

    def forward(self, z, timesteps=None, attention_mask=None):
        logits = torch.full(z.shape + (16,), -1e4)
        logits[..., 7:11] = 0.0
        return type("Out", (), {"logits": logits})()


def dna(batch, length, seed=0):
    return torch.randint(7, 11, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_uniform_model_scores_exactly_ln4_when_everything_is_masked():
    m = MDLM(UniformACGT())
    x = dna(4, 50)
    loss, n = m.loss(x, t=torch.ones(4))  # alpha(1) = 0: every token masked, weight 1/t = 1
    assert n == 200
    assert loss.item() == pytest.approx(math.log(4), abs=1e-6)


def test_uniform_model_nelbo_is_ln4_in_expectation_at_any_time():
    m = MDLM(UniformACGT())
    x = dna(64, 256)
    g = torch.Generator().manual_seed(1)
    for t in (0.05, 0.3, 0.9):
        vals = [m.loss(x, t=torch.full((64,), t), generator=g)[0].item() for _ in range(10)]
        # E[1/t * 1{masked} * ln 4] = ln 4; the MC error here is ~1% at t = 0.05
        assert sum(vals) / len(vals) == pytest.approx(math.log(4), rel=0.03)


def test_carried_over_positions_have_zero_loss_and_n_is_never_scored():
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1)).eval()
    m = MDLM(model)
    x = dna(3, 40)
    x[:, :5] = N_ID
    x[:, -3:] = PAD_ID
    with torch.no_grad():
        tok, score = m.token_nelbo(x, torch.full((3,), 0.5), generator=torch.Generator().manual_seed(0))
    assert not score[:, :5].any() and not score[:, -3:].any()
    assert (tok[~score] == 0).all()
    z = mask_tokens(x, torch.full((3,), 0.5), torch.Generator().manual_seed(0))
    assert (tok[(z != MASK_ID)] == 0).all()  # carry-over: unmasked tokens cost nothing
    assert (tok[(z == MASK_ID) & score] > 0).all()


def test_subs_removes_mask_mass_and_copies_unmasked_tokens():
    z = torch.tensor([[7, MASK_ID, 10]])
    logp = subs_log_probs(torch.randn(1, 3, 16), z)
    assert torch.allclose(logp[0, 1].exp().sum(), torch.tensor(1.0))
    assert logp[0, 1, MASK_ID] < -1e5
    assert logp[0, 0, 7] == 0 and logp[0, 2, 10] == 0
    assert (logp[0, 0, torch.arange(16) != 7] == NEG_INF).all()


def test_all_n_batch_is_finite_zero_with_gradients():
    model = CaduceusForMaskedLM(CaduceusConfig(d_model=8, n_layer=1))
    x = torch.full((2, 16), N_ID)
    loss, n = MDLM(model).loss(x)
    assert n == 0 and loss.item() == 0.0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_stratified_times_cover_eps_to_one_across_the_global_batch():
    eps = 1e-3
    g = torch.Generator().manual_seed(0)
    t = stratified_times(64, eps, generator=g)
    assert t.min() >= eps and t.max() <= 1.0
    u = (t - eps) / (1 - eps)
    assert sorted((u * 64).floor().long().tolist()) == list(range(64))  # one time per stratum
    # Four ranks, each taking its slice of a global batch of 32 with the same shared uniform.
    parts = [stratified_times(8, eps, generator=torch.Generator().manual_seed(5), offset=8 * r, total=32) for r in range(4)]
    full = stratified_times(32, eps, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(torch.cat(parts), full)


@pytest.mark.parametrize("schedule", [Cosine(), Linear(), LogLinear()])
def test_schedule_weight_is_minus_alpha_prime_over_one_minus_alpha(schedule):
    t = torch.linspace(0.01, 0.99, 17, dtype=torch.float64, requires_grad=True)
    alpha = schedule.alpha(t)
    (dalpha,) = torch.autograd.grad(alpha.sum(), t)
    assert torch.allclose(schedule.weight(t.detach()), -dalpha / (1 - alpha.detach()), rtol=1e-6)
    assert torch.allclose(schedule.dalpha(t.detach()), dalpha, rtol=1e-6)


def test_loglinear_weight_is_one_over_t_and_unknown_schedule_errors():
    t = torch.tensor([0.1, 0.5, 1.0])
    assert torch.allclose(LogLinear().weight(t), 1 / t)
    assert torch.allclose(LogLinear().mask_prob(t), t)
    with pytest.raises(ValueError, match="unknown noise schedule"):
        get_schedule("square")


def test_nats_per_window_sums_and_time_samples():
    m = MDLM(UniformACGT())
    x = dna(5, 64)
    sums = m.nats_per_window(x, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert sums.shape == (5, 3) and sums.dtype == torch.float64
    assert (sums > 0).all()
