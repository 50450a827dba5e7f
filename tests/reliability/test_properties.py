"""Property-based tests (hypothesis) of the count likelihoods and of the data registry."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.stats as st
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as s
from hypothesis.extra import numpy as hnp

from cellvi import distributions as D
from cellvi.data import Registry
from cellvi.errors import RegistryMismatchError

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

counts = s.integers(0, 10_000)
means = s.floats(1e-2, 1e4)
thetas = s.floats(1e-2, 1e4)
logits = s.floats(-30, 30)


def t(*values):
    return [torch.tensor(v, dtype=torch.float64) for v in values]


# ---------------------------------------------------------------------------------------------- likelihoods
@SETTINGS
@given(x=counts, mu=means, theta=thetas, pi=logits)
def test_log_probabilities_are_finite_and_at_most_zero(x, mu, theta, pi):
    x, mu, theta, pi = t(x, mu, theta, pi)
    for value in (D.log_nb(x, mu, theta), D.log_zinb(x, mu, theta, pi), D.log_poisson(x, mu)):
        assert torch.isfinite(value) and value <= 1e-9


@SETTINGS
@given(x=counts, mu=means, theta=thetas, pi=logits)
def test_log_probabilities_match_scipy(x, mu, theta, pi):
    nb = st.nbinom.logpmf(x, theta, theta / (theta + mu))
    tol = dict(rtol=1e-6, atol=1e-5 * (1 + x))  # eps=1e-8 inside the logs shifts values by ~x * 1e-8 / mu
    np.testing.assert_allclose(D.log_nb(*t(x, mu, theta)).item(), nb, **tol)
    np.testing.assert_allclose(D.log_poisson(*t(x, mu)).item(), st.poisson.logpmf(x, mu), **tol)
    log_pi, log_not_pi = -np.logaddexp(0, -pi), -np.logaddexp(0, pi)
    zinb = np.logaddexp(log_pi, log_not_pi + nb) if x == 0 else log_not_pi + nb
    np.testing.assert_allclose(D.log_zinb(*t(x, mu, theta, pi)).item(), zinb, **tol)


@SETTINGS
@given(x=counts, mu=s.floats(1e-2, 1e3), theta=s.floats(1e-2, 1e2))
def test_zinb_tends_to_nb_as_dropout_logits_tend_to_minus_infinity(x, mu, theta):
    x, mu, theta = t(x, mu, theta)
    nb = D.log_nb(x, mu, theta)
    gaps = [
        abs(D.log_zinb(x, mu, theta, torch.tensor(p, dtype=torch.float64)) - nb).item()
        for p in (-1.0, -10.0, -100.0, -1e3)
    ]
    assert all(a >= b - 1e-12 for a, b in zip(gaps, gaps[1:]))  # monotone approach, up to rounding
    log_nb0 = (theta * torch.log(theta / (theta + mu))).item()  # the limit needs pi_logits << log NB(0)
    far = torch.tensor(log_nb0 - 60.0, dtype=torch.float64)
    assert abs(D.log_zinb(x, mu, theta, far) - nb).item() < 1e-12 * (1 + abs(nb.item()))


@s.composite
def count_problems(draw):
    """A (cells x genes) count matrix with many zeros and NB/ZINB parameters, theta per gene or per entry."""
    n, g = draw(s.integers(1, 6)), draw(s.integers(1, 9))
    x = draw(hnp.arrays(np.float64, (n, g), elements=s.sampled_from([0.0, 0.0, 0.0, 1.0, 2.0, 7.0, 150.0])))
    mu = draw(hnp.arrays(np.float64, (n, g), elements=s.floats(1e-3, 1e3)))
    theta = draw(hnp.arrays(np.float64, (draw(s.sampled_from([1, n])), g), elements=s.floats(1e-2, 1e3)))
    pi = draw(hnp.arrays(np.float64, (n, g), elements=s.floats(-20, 20)))
    return x, mu, theta, pi


@SETTINGS
@given(problem=count_problems())
def test_per_cell_sparse_sums_equal_dense_sums_with_their_gradients(problem):
    x = torch.tensor(problem[0])
    pairs = [
        (lambda m, th, p: D.log_nb_sum(x, m, th), lambda m, th, p: D.log_nb(x, m, th).sum(-1)),
        (lambda m, th, p: D.log_zinb_sum(x, m, th, p), lambda m, th, p: D.log_zinb(x, m, th, p).sum(-1)),
        (lambda m, th, p: D.log_poisson_sum(x, m), lambda m, th, p: D.log_poisson(x, m).sum(-1)),
    ]
    for sparse_fn, dense_fn in pairs:
        results = []
        for fn in (sparse_fn, dense_fn):
            params = [torch.tensor(a, requires_grad=True) for a in problem[1:]]
            value = fn(*params)
            value.sum().backward()
            results.append((value.detach(), [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]))
        (v_sparse, g_sparse), (v_dense, g_dense) = results
        torch.testing.assert_close(v_sparse, v_dense, rtol=1e-9, atol=1e-8)
        for a, b in zip(g_sparse, g_dense):  # up to the eps=1e-8 inside the logs (~eps / theta)
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


@SETTINGS
@given(
    x=s.integers(0, 100_000),
    mu=s.floats(1e-6, 1e6),
    theta=s.floats(1e-4, 1e6),
    pi=s.floats(-50, 50),
)
def test_float32_values_and_gradients_stay_finite(x, mu, theta, pi):
    """The model trains in float32: extreme but valid parameters must not give inf or NaN."""
    X = torch.tensor([[float(x), 0.0]], dtype=torch.float32)
    params = [torch.full((1, 2), v, dtype=torch.float32, requires_grad=True) for v in (mu, theta, pi)]
    total = D.log_zinb_sum(X, *params) + D.log_nb_sum(X, *params[:2]) + D.log_poisson_sum(X, params[0])
    assert torch.isfinite(total).all()
    total.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in params)


# ---------------------------------------------------------------------------------------------- registry
# no "\x00": pandas' categorical dtype truncates strings there (a pandas limitation, not ours to test)
names = s.text(s.characters(exclude_characters="\x00"), min_size=0, max_size=6)


@s.composite
def annotated(draw):
    """An AnnData with random category columns (strings, possibly empty or non-ASCII) and gene names."""
    n = draw(s.integers(1, 30))
    genes = draw(s.lists(s.text(min_size=1, max_size=8), min_size=1, max_size=6, unique=True))
    batch = draw(s.lists(names, min_size=n, max_size=n))
    labels = draw(s.lists(names, min_size=n, max_size=n))
    cov = draw(s.lists(s.integers(-3, 3), min_size=n, max_size=n))
    categorical = draw(s.booleans())
    X = np.ones((n, len(genes)), dtype=np.float32)
    obs = pd.DataFrame({"batch": batch, "labels": labels, "cov": cov}, index=[f"c{i}" for i in range(n)])
    if categorical:
        obs["batch"] = obs["batch"].astype("category")
    a = ad.AnnData(X, obs=obs)
    a.var_names = genes
    return a


def _register(a):
    return Registry.from_anndata(a, batch_key="batch", labels_key="labels", categorical_covariate_keys=["cov"])


@SETTINGS
@given(a=annotated())
def test_registry_round_trips_through_json(a):
    reg = _register(a)
    again = Registry.from_json(reg.to_json())
    assert again == reg
    reg.attach(a)
    assert Registry.of(a) == reg
    assert again.cell_data(a).batch.tolist() == reg.cell_data(a).batch.tolist()


@SETTINGS
@given(a=annotated())
def test_category_encoding_is_invertible(a):
    reg = _register(a)
    data = reg.cell_data(a)
    for name, codes, key in [
        ("batch", data.batch, "batch"),
        ("labels", data.labels, "labels"),
        ("cov", data.cat_covs[:, 0], "cov"),
    ]:
        decoded = np.asarray(reg.categories[name], dtype=object)[codes]
        assert decoded.tolist() == a.obs[key].astype(str).tolist()
        assert len(set(reg.categories[name])) == len(reg.categories[name])  # each category once


@SETTINGS
@given(a=annotated(), new=names, which=s.sampled_from(["batch", "labels"]), cell=s.integers(0, 29))
def test_unknown_categories_are_rejected(a, new, which, cell):
    reg = _register(a)
    assume(new not in reg.categories[which])
    b = a.copy()
    col = b.obs[which].astype(str).to_numpy(dtype=object)
    col[cell % b.n_obs] = new
    b.obs[which] = col
    with pytest.raises(RegistryMismatchError, match="load_query_data"):
        reg.cell_data(b)
