"""Weight priors: validity of draws, closed-form means, log-space stability."""

import math

import pytest
import torch

from dpmodels.priors import (
    PRIORS,
    BetaStickBreaking,
    DirichletProcess,
    PitmanYor,
    WeightPrior,
    beta_expected_log_weights,
    beta_expected_weights,
    log_stick_breaking,
    make_prior,
    stick_breaking_weights,
)

ALL = [
    WeightPrior("dp", 1.0),
    WeightPrior("dp", 0.1),
    WeightPrior("pitman_yor", 2.0, 0.5),
    WeightPrior("finite", 3.0),
    make_prior("beta_sticks", concentration=2.0, a=0.5),
]


@pytest.mark.parametrize("prior", ALL, ids=lambda p: f"{p.kind}-{p.concentration}")
@pytest.mark.parametrize("K", [1, 2, 30, 100])
def test_draws_are_probability_vectors(prior, K):
    w = prior.sample_log_weights(K, (2000,)).exp()  # (S, K)
    assert w.shape == (2000, K)
    assert bool((w >= 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(2000), atol=1e-5, rtol=0)


@pytest.mark.parametrize("prior", ALL, ids=lambda p: f"{p.kind}-{p.concentration}")
def test_expected_weights_match_monte_carlo(prior):
    K, S = 12, 40_000
    w = prior.sample_log_weights(K, (S,)).double().exp()
    mc, se = w.mean(0), w.std(0) / math.sqrt(S)
    closed = prior.expected_weights(K).double()
    assert bool(((mc - closed).abs() <= 4 * se + 1e-6).all()), (mc, closed)


def test_dp_expected_weights_are_geometric():
    alpha, K = 2.0, 10
    closed = WeightPrior("dp", alpha).expected_weights(K).double()
    k = torch.arange(K - 1, dtype=torch.float64)
    geometric = (1 / (1 + alpha)) * (alpha / (1 + alpha)) ** k
    torch.testing.assert_close(closed[:-1], geometric)
    torch.testing.assert_close(closed.sum(), torch.tensor(1.0, dtype=torch.float64))


def test_log_space_is_stable_in_float32_at_truncation_100():
    # alpha = 0.1: E[pi_100] ~ 1e-103, far below float32's range; log weights must stay finite.
    a = torch.ones(99)
    b = torch.full((99,), 0.1)
    v = a / (a + b)  # E[v] = 1/1.1 each
    log_v, log1m_v = torch.log(v), torch.log1p(-v)
    log32 = log_stick_breaking(log_v.float(), log1m_v.float())
    log64 = log_stick_breaking(log_v.double(), log1m_v.double())
    assert bool(torch.isfinite(log32).all())
    torch.testing.assert_close(log32.double(), log64, rtol=1e-5, atol=1e-4)
    naive = torch.cumprod(torch.cat([torch.ones(1), 1 - v.float()]), 0)[-1]
    assert naive == 0 or math.log(naive) > -100  # the linear product underflows; log space does not
    # and the linear weights still sum to one
    torch.testing.assert_close(stick_breaking_weights(v.float()).sum(), torch.tensor(1.0))


def test_expected_log_weights_match_monte_carlo():
    a, b = (
        torch.tensor([2.0, 3.0, 1.5], dtype=torch.float64),
        torch.tensor([5.0, 1.0, 2.0], dtype=torch.float64),
    )
    S = 200_000
    v = torch.distributions.Beta(a, b).sample((S,))
    mc = log_stick_breaking(torch.log(v), torch.log1p(-v))
    torch.testing.assert_close(mc.mean(0), beta_expected_log_weights(a, b), atol=0.02, rtol=0)
    w = stick_breaking_weights(v)
    torch.testing.assert_close(w.mean(0), beta_expected_weights(a, b), atol=0.005, rtol=0)


def test_pitman_yor_stick_parameters():
    a, b = WeightPrior("pitman_yor", 1.0, 0.25).stick_params(4)
    torch.testing.assert_close(a, torch.full((3,), 0.75))
    torch.testing.assert_close(b, torch.tensor([1.25, 1.5, 1.75]))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"kind": "chinese_restaurant"}, "prior must be one of"),
        ({"concentration": 0.0}, "concentration must be > 0"),
        ({"concentration": -1.0}, "concentration must be > 0"),
        ({"kind": "pitman_yor", "discount": 1.0}, r"discount must lie in \[0, 1\)"),
        ({"kind": "pitman_yor", "discount": -0.1}, r"discount must lie in \[0, 1\)"),
        ({"kind": "dp", "discount": 0.5}, "only applies to prior='pitman_yor'"),
        ({"concentration_shape": 0.0}, "Gamma hyperprior"),
        ({"kind": "pitman_yo"}, "did you mean prior='pitman_yor'"),
        ({"kind": "beta_sticks", "a": -1.0}, "a must be > 0"),
        ({"kind": "dp", "a": 0.5}, "only applies to prior='beta_sticks'"),
        ({"kind": "finite", "discount": 0.2}, "set discount=0.0 or choose prior='pitman_yor'"),
        ({"kind": "dp", "stick": 1.0}, "unknown prior setting 'stick'"),
    ],
)
def test_bad_prior_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WeightPrior(**kwargs)


@pytest.mark.parametrize("K", [0, -3, 2.5])
def test_bad_truncation(K):
    with pytest.raises(ValueError, match="truncation must be an integer >= 1"):
        WeightPrior().stick_params(K)


def test_registry_builds_each_prior_from_its_name():
    for name, cls in PRIORS.items():
        prior = make_prior(name)
        assert type(prior) is cls and prior.kind == name
        assert WeightPrior(name) == prior  # the old constructor returns the registered class
    assert isinstance(WeightPrior("pitman_yor", 1.0, 0.25), PitmanYor)
    assert make_prior("pitman_yor", discount=0.25) == PitmanYor(1.0, 0.25)


def test_repr_is_deterministic_and_keeps_the_original_format():
    # checkpoint fingerprints and data-parallel setting checks compare repr(prior)
    assert repr(DirichletProcess(2.0)) == (
        "WeightPrior(kind='dp', concentration=2.0, discount=0.0, learn_concentration=False, "
        "concentration_shape=1.0, concentration_rate=1.0)"
    )
    assert repr(make_prior("beta_sticks", a=0.5)).endswith("concentration_rate=1.0, a=0.5)")
    assert make_prior("beta_sticks", a=0.5).settings()["a"] == 0.5


def test_beta_sticks_with_a_equal_one_is_the_dirichlet_process():
    dp, two = DirichletProcess(1.7), BetaStickBreaking(1.7, a=1.0)
    for x, y in zip(dp.stick_params(6), two.stick_params(6), strict=True):
        torch.testing.assert_close(x, y)
    counts = torch.tensor([[5.0, 0.0, 3.0, 1.0]], dtype=torch.float64)
    alpha = torch.tensor([1.7], dtype=torch.float64)
    for key, value in dp.update(counts, alpha).items():
        torch.testing.assert_close(value, two.update(counts, alpha)[key])


def test_beta_sticks_parameters_and_conjugate_update():
    prior = make_prior("beta_sticks", concentration=2.0, a=0.5)
    a, b = prior.stick_params(4)
    torch.testing.assert_close(a, torch.full((3,), 0.5))
    torch.testing.assert_close(b, torch.full((3,), 2.0))
    counts = torch.tensor([[4.0, 1.0, 0.0, 2.0]], dtype=torch.float64)
    post = prior.update(counts, torch.tensor([2.0], dtype=torch.float64))
    torch.testing.assert_close(post["stick_a"], torch.tensor([[4.5, 1.5, 0.5]], dtype=torch.float64))
    torch.testing.assert_close(post["stick_b"], torch.tensor([[5.0, 4.0, 4.0]], dtype=torch.float64))
    assert "conc_shape" not in post  # a fixed concentration has no q(alpha)
    assert not make_prior("beta_sticks", learn_concentration=True).closed_form
    assert make_prior("dp", learn_concentration=True).closed_form
