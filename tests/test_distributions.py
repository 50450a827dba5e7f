import numpy as np
import pytest
import scipy.stats as st
import torch

from cellvi import distributions as D


def _nb_inputs(seed=0, shape=(6, 7)):
    g = np.random.default_rng(seed)
    x = g.negative_binomial(2, 0.3, size=shape).astype(np.float64)
    x[g.random(shape) < 0.5] = 0
    mu = g.uniform(0.1, 20, size=shape)
    theta = g.uniform(0.2, 10, size=shape)
    pi = g.normal(size=shape)
    return x, mu, theta, pi


def test_nb_matches_scipy():
    x, mu, theta, _ = _nb_inputs()
    ours = D.log_nb(*map(torch.tensor, (x, mu, theta))).numpy()
    ref = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_poisson_matches_scipy():
    x, mu, _, _ = _nb_inputs()
    np.testing.assert_allclose(
        D.log_poisson(torch.tensor(x), torch.tensor(mu)).numpy(), st.poisson.logpmf(x, mu), rtol=1e-6
    )


def test_zinb_matches_mixture():
    x, mu, theta, pi = _nb_inputs()
    p_drop = 1 / (1 + np.exp(-pi))
    nb = st.nbinom.pmf(x, theta, theta / (theta + mu))
    ref = np.log(np.where(x == 0, p_drop + (1 - p_drop) * nb, (1 - p_drop) * nb))
    ours = D.log_zinb(*map(torch.tensor, (x, mu, theta, pi))).numpy()
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_zinb_stable_for_extreme_logits():
    x = torch.tensor([[0.0, 3.0]])
    out = D.log_zinb(x, torch.tensor([[5.0, 5.0]]), torch.tensor([[2.0, 2.0]]), torch.tensor([[-60.0, 60.0]]))
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("theta_shape", ["full", "per_gene"])
def test_sparse_sums_equal_dense_sums(theta_shape):
    x, mu, theta, pi = map(torch.tensor, _nb_inputs(1))
    if theta_shape == "per_gene":
        theta = theta[:1]
    torch.testing.assert_close(D.log_nb_sum(x, mu, theta), D.log_nb(x, mu, theta).sum(-1))
    torch.testing.assert_close(D.log_zinb_sum(x, mu, theta, pi), D.log_zinb(x, mu, theta, pi).sum(-1))
    torch.testing.assert_close(D.log_poisson_sum(x, mu), D.log_poisson(x, mu).sum(-1))


def test_gradients_match_finite_differences():
    x, mu, theta, pi = _nb_inputs(2, shape=(3, 4))
    x = torch.tensor(x)
    params = [torch.tensor(a, requires_grad=True) for a in (mu, theta, pi)]
    assert torch.autograd.gradcheck(lambda m, t, p: D.log_zinb_sum(x, m, t, p), params)
    assert torch.autograd.gradcheck(lambda m, t: D.log_nb_sum(x, m, t), params[:2])
    assert torch.autograd.gradcheck(lambda m: D.log_poisson_sum(x, m), params[:1])


def test_sparse_sum_gradients_equal_dense_gradients():
    x, mu, theta, pi = _nb_inputs(3)
    x = torch.tensor(x)
    grads = []
    for fn in (D.log_zinb_sum, lambda *a: D.log_zinb(*a).sum(-1)):
        params = [torch.tensor(a, requires_grad=True) for a in (mu, theta, pi)]
        fn(x, *params).sum().backward()
        grads.append([p.grad for p in params])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_samplers_have_the_right_mean():
    torch.manual_seed(0)
    mu = torch.full((20000,), 4.0)
    theta = torch.full((20000,), 2.0)
    nb = D.sample_nb(mu, theta)
    assert abs(nb.mean().item() - 4.0) < 0.1
    assert abs(nb.var().item() - (4 + 16 / 2)) < 0.6
    zinb = D.sample_zinb(mu, theta, torch.zeros(20000))
    assert abs(zinb.mean().item() - 2.0) < 0.1


def _softmax_inputs(seed, shape=(6, 7), theta_rows=1, dtype=torch.float64):
    """x, logits, log library (n, 1), log theta (theta_rows, genes), pi logits; large counts included."""
    x, _, _, pi = _nb_inputs(seed, shape)
    x[0, :3] = [40, 400, 5000]  # counts far in the tail
    g = np.random.default_rng(seed + 100)
    logits = g.normal(scale=2.0, size=shape)
    log_library = np.log(x.sum(1, keepdims=True) + 1)
    log_theta = g.normal(size=(theta_rows, shape[1]))
    return [torch.tensor(a, dtype=dtype) for a in (x, logits, log_library, log_theta, pi)]


def _by_rate(x, logits, log_library, log_theta, pi, likelihood):
    rate = torch.exp(log_library) * torch.softmax(logits, -1)
    theta = torch.exp(log_theta)
    if likelihood == "zinb":
        return D.log_zinb(x, rate, theta, pi).sum(-1)
    if likelihood == "nb":
        return D.log_nb(x, rate, theta).sum(-1)
    return D.log_poisson(x, rate).sum(-1)


def _by_logits(x, logits, log_library, log_theta, pi, likelihood):
    if likelihood == "zinb":
        return D.log_zinb_sum_softmax(x, logits, log_library, log_theta, pi)
    if likelihood == "nb":
        return D.log_nb_sum_softmax(x, logits, log_library, log_theta)
    return D.log_poisson_sum_softmax(x, logits, log_library)


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
@pytest.mark.parametrize("theta_rows", [1, 6])
def test_softmax_likelihoods_equal_the_entrywise_ones(likelihood, theta_rows):
    """Values and gradients (logits, library, log theta, pi) equal autograd through softmax and the
    entry-wise log-probabilities, for per-gene and per-cell dispersion."""
    results = []
    for fn in (_by_logits, _by_rate):
        inputs = _softmax_inputs(7, theta_rows=theta_rows)
        for t in inputs[1:]:
            t.requires_grad_(True)
        value = fn(*inputs, likelihood)
        (value * torch.linspace(-1, 2, len(value), dtype=value.dtype)).sum().backward()
        results.append([value.detach()] + [t.grad for t in inputs[1:]])
    for a, b in zip(*results):
        if a is None or b is None:
            assert a is None or not a.abs().any()
            continue
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_softmax_likelihood_gradients_match_finite_differences():
    x, logits, log_library, log_theta, pi = _softmax_inputs(8, shape=(3, 4))
    x[0, :3] = 0  # keep the gradcheck in the well-conditioned range
    params = [t.requires_grad_(True) for t in (logits, log_library, log_theta, pi)]
    assert torch.autograd.gradcheck(lambda a, lib, t, p: D.log_zinb_sum_softmax(x, a, lib, t, p), params)
    assert torch.autograd.gradcheck(lambda a, lib, t: D.log_nb_sum_softmax(x, a, lib, t), params[:3])


def test_softmax_likelihood_is_finite_for_extreme_inputs():
    x = torch.tensor([[0.0, 3.0, 0.0, 1.0]])
    logits = torch.tensor([[-80.0, 80.0, 0.0, -80.0]], requires_grad=True)  # a mean that underflows to 0
    pi = torch.tensor([[-60.0, 60.0, 60.0, -60.0]], requires_grad=True)
    log_theta = torch.tensor([[-10.0, 10.0, 0.0, 5.0]], requires_grad=True)
    value = D.log_zinb_sum_softmax(x, logits, torch.tensor([[8.0]]), log_theta, pi)
    value.sum().backward()
    assert torch.isfinite(value).all()
    assert all(torch.isfinite(t.grad).all() for t in (logits, pi, log_theta))


def test_precomputed_nonzero_coordinates_give_the_same_result():
    x, mu, theta, pi = map(torch.tensor, _nb_inputs(5))
    rows, cols = torch.nonzero(x, as_tuple=True)
    torch.testing.assert_close(D.log_zinb_sum(x, mu, theta, pi, nonzero=(rows, cols)), D.log_zinb_sum(x, mu, theta, pi))


def test_vectorisable_lgamma_digamma_match_torch():
    from cellvi.distributions.special import lgamma_digamma

    z = torch.cat([torch.logspace(-6, 9, 20000), torch.arange(1, 2000) + torch.tensor(0.37)])
    lgamma, digamma = lgamma_digamma(z)
    for ours, ref in ((lgamma, torch.lgamma(z.double())), (digamma, torch.digamma(z.double()))):
        error = (ours.double() - ref).abs() / ref.abs().clamp_min(1.0)
        assert error.max() < 1e-5  # float32 rounding; torch's float32 lgamma is within ~1e-7 of this ref


@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
def test_given_log_factorial_equals_the_computed_one(likelihood):
    """The loaders' per-cell lgamma(x + 1) sums, passed in, give the same values as computing them here."""
    x, logits, log_library, log_theta, pi = _softmax_inputs(9)
    log_factorial = torch.lgamma(x + 1).sum(1)
    rate, theta = torch.exp(log_library) * torch.softmax(logits, -1), torch.exp(log_theta)
    if likelihood == "poisson":
        pairs = [
            (
                D.log_poisson_sum_softmax(x, logits, log_library, log_factorial=log_factorial),
                D.log_poisson_sum_softmax(x, logits, log_library),
            ),
            (D.log_poisson_sum(x, rate, log_factorial=log_factorial), D.log_poisson_sum(x, rate)),
        ]
    else:
        extra = (pi,) if likelihood == "zinb" else ()
        by_logits = D.log_zinb_sum_softmax if likelihood == "zinb" else D.log_nb_sum_softmax
        by_rate = D.log_zinb_sum if likelihood == "zinb" else D.log_nb_sum
        pairs = [
            (
                by_logits(x, logits, log_library, log_theta, *extra, log_factorial=log_factorial),
                by_logits(x, logits, log_library, log_theta, *extra),
            ),
            (by_rate(x, rate, theta, *extra, log_factorial=log_factorial), by_rate(x, rate, theta, *extra)),
        ]
    for given, computed in pairs:
        torch.testing.assert_close(given, computed, rtol=1e-9, atol=1e-9)
    zeros = torch.zeros_like(log_factorial)  # a given value is used, not recomputed
    if likelihood == "poisson":
        ignored = D.log_poisson_sum_softmax(x, logits, log_library, log_factorial=zeros)
    else:
        ignored = by_logits(x, logits, log_library, log_theta, *extra, log_factorial=zeros)
    torch.testing.assert_close(ignored - log_factorial, pairs[0][1], rtol=1e-9, atol=1e-9)


def test_denoised_gamma_samples_have_the_nb_mean_and_gamma_variance():
    torch.manual_seed(0)
    mu = torch.tensor([[0.5, 3.0, 40.0]]).expand(200_000, 3)
    theta = torch.tensor([2.0, 0.5, 10.0])
    draws = D.sample_gamma_rate(mu, theta)
    assert torch.allclose(draws.mean(0), mu[0], rtol=0.02)
    assert torch.allclose(draws.var(0), mu[0] ** 2 / theta, rtol=0.05)  # no Poisson term: denoised
