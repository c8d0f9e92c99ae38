"""The orpo / simpo / cpo / kto losses and eval metrics (rl.pref_losses) equal the papers' formulas, written out
here in plain floats on hand-built log-probs; log1mexp is finite at both ends."""

import math

import pytest
import torch

from tuneforge.config.schema import CpoConfig, KtoConfig, OrpoConfig, SimpoConfig
from tuneforge.rl import pref_losses as pl

# two pairs: summed response log-probs and token counts
CHOSEN, REJECTED, N_CHOSEN, N_REJECTED = [-2.0, -6.0], [-3.0, -4.0], [4, 3], [2, 5]
LOGPS = tuple(torch.tensor(v, dtype=torch.float64) for v in (CHOSEN, REJECTED, N_CHOSEN, N_REJECTED))


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


def nll() -> float:  # mean over every chosen token of the batch
    return -sum(CHOSEN) / sum(N_CHOSEN)


def test_orpo_is_nll_plus_the_odds_ratio_term():
    beta, ratios = 0.25, []
    for c, r, nc, nr in zip(CHOSEN, REJECTED, N_CHOSEN, N_REJECTED, strict=True):
        pw, pl_ = math.exp(c / nc), math.exp(r / nr)
        ratios.append(math.log((pw / (1 - pw)) / (pl_ / (1 - pl_))))
    want = nll() + beta * sum(-logsig(x) for x in ratios) / 2
    loss, log_odds = pl.orpo_loss(LOGPS, beta)
    assert float(loss) == pytest.approx(want, rel=1e-12)
    assert log_odds.tolist() == pytest.approx(ratios, rel=1e-12)
    assert pl.pair_metrics("orpo", LOGPS, OrpoConfig(beta=beta))["log_odds_ratio"] == pytest.approx(sum(ratios) / 2)


def test_simpo_is_length_normalised_with_a_margin():
    beta, gamma = 2.0, 0.5
    want = sum(-logsig(beta * (c / nc - r / nr) - gamma)
               for c, r, nc, nr in zip(CHOSEN, REJECTED, N_CHOSEN, N_REJECTED, strict=True)) / 2
    assert float(pl.simpo_loss(LOGPS, beta, gamma)) == pytest.approx(want, rel=1e-12)
    metrics = pl.pair_metrics("simpo", LOGPS, SimpoConfig(beta=beta, gamma=gamma))
    assert metrics["loss"] == pytest.approx(want)
    # rewards beta * mean log-prob: pair 1 -0.5 vs -1.5 (chosen wins), pair 2 -2.0 vs -0.8 (rejected wins)
    assert metrics["reward_accuracy"] == 0.5
    assert metrics["reward_margin"] == pytest.approx(beta * ((-0.5 + 1.5) + (-2.0 + 0.8)) / 2)
    assert metrics["logp_accuracy"] == 0.5 and metrics["pairs"] == 2


def test_cpo_is_summed_sigmoid_plus_alpha_nll():
    beta, alpha = 0.1, 0.7
    want = sum(-logsig(beta * (c - r)) for c, r in zip(CHOSEN, REJECTED, strict=True)) / 2 + alpha * nll()
    assert float(pl.cpo_loss(LOGPS, beta, alpha)) == pytest.approx(want, rel=1e-12)
    metrics = pl.pair_metrics("cpo", LOGPS, CpoConfig(beta=beta, cpo_alpha=alpha))
    assert metrics["chosen_reward"] == pytest.approx(beta * -4.0) and metrics["chosen_nll"] == pytest.approx(nll())
    assert metrics["reward_accuracy"] == 0.5  # summed: -2 > -3, -6 < -4


def test_kto_value_function_and_kl():
    block = KtoConfig(beta=0.5, desirable_weight=1.0, undesirable_weight=1.5)
    policy = torch.tensor([-3.0, -5.0, -4.0, -6.0], dtype=torch.float64)
    reference = torch.tensor([-4.0, -4.5, -4.0, -5.0], dtype=torch.float64)
    labels = torch.tensor([True, False, True, False])
    kl_policy = torch.tensor([-7.0, -8.0, -6.0, -9.0], dtype=torch.float64)
    kl_reference = torch.tensor([-7.5, -8.0, -6.5, -9.0], dtype=torch.float64)
    z = max(0.0, ((-7 + 7.5) + 0 + (-6 + 6.5) + 0) / 4)  # 0.25
    sig = (lambda x: 1 / (1 + math.exp(-x)))  # noqa: E731
    r = [p - q for p, q in zip(policy.tolist(), reference.tolist(), strict=True)]  # 1, -0.5, 0, -1
    want = [1 - sig(0.5 * (r[0] - z)), 1.5 * (1 - sig(0.5 * (z - r[1]))), 1 - sig(0.5 * (r[2] - z)),
            1.5 * (1 - sig(0.5 * (z - r[3])))]
    kl = pl.kto_kl(kl_policy, kl_reference)
    assert float(kl) == pytest.approx(z)
    assert float(pl.kto_loss(policy - reference, labels, kl, block)) == pytest.approx(sum(want) / 4, rel=1e-12)
    assert float(pl.kto_kl(kl_reference, kl_policy)) == 0.0  # a negative estimate is clamped

    prompts = ["a", "a", "b", "b"]  # rows 0/1 and 2/3 answer the same prompt
    m = pl.kto_metrics(policy, reference, kl_policy, kl_reference, labels, prompts, block)
    assert m["accuracy_over"] == "same_prompt" and m["compared"] == 2 and m["reward_accuracy"] == 1.0
    assert m["reward_margin"] == pytest.approx(0.5 * ((1 + 0) / 2 - (-0.5 - 1) / 2)) and m["kl"] == pytest.approx(z)
    assert m["logp_accuracy"] == 1.0  # -3 > -5, -4 > -6
    m = pl.kto_metrics(policy, reference, kl_policy, kl_reference, labels, ["a", "b", "c", "d"], block)
    assert m["accuracy_over"] == "all" and m["compared"] == 4 and m["reward_accuracy"] == 1.0
    same = pl.kto_metrics(policy, policy, kl_policy, kl_policy, labels, prompts, block)  # the base: r = 0
    assert same["loss"] == pytest.approx((0.5 + 1.5 * 0.5 + 0.5 + 1.5 * 0.5) / 4) and same["reward_accuracy"] == 0.0


@pytest.mark.parametrize("x", [-1e-9, -1e-3, -0.5, -math.log(2), -3.0, -40.0])
def test_log1mexp(x):
    got = float(pl.log1mexp(torch.tensor(x, dtype=torch.float64)))
    assert math.isfinite(got) and got == pytest.approx(math.log(-math.expm1(x)), rel=1e-9)
