"""Differential expression: the statistics on synthetic posterior samples with a known answer, the
model method's table, and known biology (interferon-stimulated genes after IFN-beta)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import norm
from sklearn.metrics import roc_auc_score
from tests.conftest import real_data_path

import cellvi
from cellvi.analysis import differential as de
from cellvi.errors import CellviError, InvalidParameterError, MissingKeyError


# ---------------------------------------------------------------------------------------- statistics
def _lognormal_pairs(rng, mu, sd, n):
    """Paired samples whose log2 fold change is exactly N(mu, 2 sd^2) per gene."""
    base = rng.uniform(-12, -8, size=len(mu))
    s1 = 2.0 ** (base + mu + sd * rng.standard_normal((n, len(mu))))
    s2 = 2.0 ** (base + sd * rng.standard_normal((n, len(mu))))
    return s1, s2


def test_change_test_matches_the_analytic_probabilities(rng):
    mu = np.array([0.0, 0.2, 1.0, -2.0, 3.0])
    sd, delta, n = 0.4, 0.25, 40_000
    s1, s2 = _lognormal_pairs(rng, mu, sd, n)
    res = de.change_test(s1, s2, delta=delta, pseudocount=1e-12)
    lfc_sd = sd * np.sqrt(2)
    up = 1 - norm.cdf((delta - mu) / lfc_sd)
    down = norm.cdf((-delta - mu) / lfc_sd)
    np.testing.assert_allclose(res["proba_de"], np.maximum(up, down), atol=0.01)
    np.testing.assert_allclose(res["proba_not_de"], 1 - res["proba_de"])
    np.testing.assert_allclose(res["lfc_mean"], mu, atol=0.02)
    np.testing.assert_allclose(res["lfc_median"], mu, atol=0.03)
    np.testing.assert_allclose(res["lfc_std"], lfc_sd, rtol=0.03)
    assert np.all(res["lfc_min"] < res["lfc_mean"]) and np.all(res["lfc_max"] > res["lfc_mean"])
    np.testing.assert_allclose(res["bayes_factor"], np.log(res["proba_de"] + 1e-8) - np.log(res["proba_not_de"] + 1e-8))
    two = de.change_test(s1, s2, delta=delta, pseudocount=1e-12, test_mode="two", gene_block=2)
    np.testing.assert_allclose(two["proba_de"], up + down, atol=0.01)
    np.testing.assert_allclose(two["lfc_mean"], res["lfc_mean"])  # blocks do not change the result


def test_pseudocount_shrinks_the_fold_change_of_barely_expressed_genes(rng):
    s1, s2 = _lognormal_pairs(rng, np.array([2.0, 2.0]), 0.1, 2000)
    s1[:, 1] *= 1e-6  # same fold change, far below the pseudocount
    s2[:, 1] *= 1e-6
    res = de.change_test(s1, s2, delta=0.25, pseudocount=1e-6)
    assert res["proba_de"][0] > 0.99 and res["proba_de"][1] < 0.01


def test_vanilla_test(rng):
    n = 20_000
    s2 = rng.gamma(5.0, 1.0, (n, 3))
    s1 = s2.copy()
    s1[:, 0] = rng.gamma(5.0, 1.0, n) * 3  # much higher
    s1[:, 1] = rng.gamma(5.0, 1.0, n)  # same distribution, independent
    s1[:, 2] = rng.gamma(5.0, 1.0, n) / 3  # much lower
    res = de.vanilla_test(s1, s2)
    assert res["proba_m1"][0] > 0.95 and abs(res["proba_m1"][1] - 0.5) < 0.02 and res["proba_m1"][2] < 0.05
    np.testing.assert_allclose(res["proba_m1"] + res["proba_m2"], 1)
    assert res["bayes_factor"][0] > 2 and abs(res["bayes_factor"][1]) < 0.1 and res["bayes_factor"][2] < -2
    np.testing.assert_allclose(res["scale1"], s1.mean(0))


def test_fdr_calls_take_the_largest_set_with_expected_fdr_below_target(rng):
    p = np.array([0.99, 0.98, 0.9, 0.5, 0.1])  # running mean of 1 - p: .01, .015, .043, .16, ...
    perm = rng.permutation(5)
    calls = de.fdr_calls(p[perm], 0.05)
    np.testing.assert_array_equal(calls, np.array([True, True, True, False, False])[perm])
    assert not de.fdr_calls(np.array([0.5, 0.4]), 0.05).any()


def test_estimate_pseudocount():
    scales1 = np.full((4, 5), 1e-3)
    scales2 = np.full((4, 5), 1e-3)
    scales1[:, 4] = [1e-6, 2e-6, 3e-6, 4e-6]  # silent gene in group 1: max 4e-6
    silent1 = np.array([False, False, False, False, True])
    silent2 = np.zeros(5, dtype=bool)
    assert de.estimate_pseudocount(scales1, scales2, silent1, silent2) == pytest.approx(4e-6 / 5)
    assert de.estimate_pseudocount(scales1, scales2, silent2, silent2) == pytest.approx(1e-10)


def test_estimate_delta_separates_de_genes(rng):
    lfc = np.concatenate([rng.normal(0, 0.05, 500), rng.normal(2, 0.2, 50), rng.normal(-2, 0.2, 50)])
    assert 0.8 < de.estimate_delta(lfc) < 1.6


@pytest.mark.parametrize("dense", [False, True])
def test_group_count_sums_and_raw_stats(rng, dense):
    X = sp.random(60, 7, density=0.4, random_state=1, format="csr") * 10
    X.data = np.round(X.data)
    X = X.toarray() if dense else X
    a = rng.random(60) < 0.3
    b = rng.random(60) < 0.5  # overlaps a: allowed
    sums = de.group_count_sums(X, [a, b], chunk_size=16)
    D = np.asarray(X.toarray() if sp.issparse(X) else X)
    lib = D.sum(1, keepdims=True)
    norm_ = np.divide(D * 1e4, lib, out=np.zeros_like(D), where=lib > 0)
    stats = de.raw_stats(sums, 0, None)
    np.testing.assert_allclose(stats["raw_mean1"], D[a].mean(0))
    np.testing.assert_allclose(stats["raw_mean2"], D[~a].mean(0))
    np.testing.assert_allclose(stats["non_zeros_proportion2"], (D[~a] != 0).mean(0))
    np.testing.assert_allclose(stats["raw_normalized_mean1"], norm_[a].mean(0))
    stats = de.raw_stats(sums, 0, 1)
    np.testing.assert_allclose(stats["raw_mean2"], D[b].mean(0))
    np.testing.assert_allclose(stats["raw_normalized_mean2"], norm_[b].mean(0))


def test_cell_passes_bound_the_number_of_samples(rng):
    big = np.arange(100, 1100)
    (cells,) = de.cell_passes(big, 300, rng)
    assert len(np.unique(cells)) == 300 and np.all(np.diff(cells) > 0) and np.isin(cells, big).all()
    small = np.array([5, 3, 9])
    passes = de.cell_passes(small, 7, rng)
    assert len(passes) == 3 and all(np.array_equal(p, [3, 5, 9]) for p in passes)
    rows = de.pick_rows(np.arange(9)[:, None], 7, rng)
    assert rows.shape == (7, 1) and len(np.unique(rows)) == 7
    with pytest.raises(ValueError):
        de.cell_passes(np.array([], dtype=int), 5, rng)


@pytest.mark.parametrize("test_mode", ["three", "two"])
def test_pair_tally_over_rounds_equals_the_test_on_all_pairs(rng, test_mode):
    mu = np.linspace(-3, 3, 40)
    s1, s2 = (x.astype(np.float32) for x in _lognormal_pairs(rng, mu, 0.5, 900))
    whole = de.change_test(s1, s2, 0.5, 1e-5, test_mode)
    tally = de.PairTally("change", len(mu), 0.5, 1e-5, test_mode)
    for part in (slice(0, 400), slice(400, 700), slice(700, 900)):  # rounds of unequal size
        tally.add(s1[part], s2[part])
    got = tally.result()
    assert tally.n == 900
    for key in ("proba_de", "proba_not_de", "scale1", "scale2", "lfc_mean", "lfc_std", "lfc_min", "lfc_max"):
        np.testing.assert_allclose(got[key], whole[key], rtol=2e-4, atol=2e-5, err_msg=key)
    first = de.change_test(s1[:400], s2[:400], 0.5, 1e-5, test_mode)  # the median is the first round's
    np.testing.assert_allclose(got["lfc_median"], first["lfc_median"], rtol=1e-5)
    vanilla = de.PairTally("vanilla", len(mu))
    vanilla.add(s1[:500], s2[:500])
    vanilla.add(s1[500:], s2[500:])
    ref = de.vanilla_test(s1, s2)
    for key in ("proba_m1", "bayes_factor", "scale1", "scale2"):
        np.testing.assert_allclose(vanilla.result()[key], ref[key], rtol=1e-5, atol=1e-7, err_msg=key)


def test_pair_tally_monte_carlo_error_and_convergence():
    tally = de.PairTally("vanilla", 3)
    s1 = np.zeros((400, 3), dtype=np.float32)
    s1[:, 0] = 1.0  # always greater: p = 1
    s1[:200, 1] = 1.0  # p = 0.5, an even-odds gene: never decides convergence
    s1[:40, 2] = 1.0  # p = 0.1
    tally.add(s1, np.full_like(s1, 0.5))
    np.testing.assert_allclose(tally.proba(), [1.0, 0.5, 0.1])
    np.testing.assert_allclose(tally.mc_error(), np.sqrt(np.array([0.0, 0.25, 0.09]) / 400))
    assert tally.converged(0.016) and not tally.converged(0.014)  # gene 2's error is 0.015
    np.testing.assert_allclose(de.median_rows(s1[:7]), np.median(s1[:7], axis=0))


def test_atom_pools_mix_the_rest_in_proportion_to_group_size(rng):
    from cellvi.model._de import Comparison
    from cellvi.model._de_pools import AtomPools

    codes = np.repeat([0, 1, 2], [100, 300, 600])
    pools = AtomPools([codes == k for k in range(3)], rng)
    assert pools.sizes.tolist() == [100, 300, 600, 0]
    r = 5000  # fake a round: each atom's rows hold its atom number
    pools.pool = np.repeat(np.arange(3, dtype=np.float32), r)[:, None]
    pools.rows_of = {a: a * r + rng.permutation(r) for a in range(3)}
    s1, s2 = pools.pairs(Comparison("g0", "Rest", 0, None, True), r)
    assert (s1 == 0).all()
    share = np.bincount(s2[:, 0].astype(int), minlength=3) / r
    np.testing.assert_allclose(share, [0, 1 / 3, 2 / 3], atol=0.02)
    both = AtomPools([codes < 2, codes > 0], rng)  # overlapping idx1 / idx2: atoms by membership
    assert both.sizes.tolist() == [0, 100, 600, 300]


# ---------------------------------------------------------------------------------------- the model
@pytest.fixture(scope="module")
def trained():
    cellvi.settings.seed = 0
    cellvi.settings.progress_bar = False
    adata = cellvi.data.simulate(
        n_cells=600,
        n_genes=300,
        n_batches=2,
        n_cell_types=3,
        seed=3,
        de_lfc=2.0,
        de_fraction=0.2,
        dispersion=5.0,
        mean_log_sd=1.0,  # no gene dominates the library: proportions shift little
    )
    cellvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = cellvi.model.SCVI(adata, n_latent=5)
    model.train(max_epochs=60, batch_size=128, train_size=1.0)
    return model


CHANGE_COLUMNS = [
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "scale1",
    "scale2",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_min",
    "lfc_max",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
    "is_de_fdr_0.05",
    "comparison",
    "group1",
    "group2",
]


def test_change_mode_table_and_known_de_genes(trained):
    adata = trained.adata
    res = trained.differential_expression(
        groupby="cell_type", group1="type0", group2="type1", mode="change", n_samples=1000
    )
    assert set(CHANGE_COLUMNS) <= set(res.columns)
    assert len(res) == adata.n_vars and set(res.index) == set(adata.var_names)
    assert np.all(np.diff(res["proba_de"].to_numpy()) <= 0)  # sorted
    assert (res["comparison"] == "type0 vs type1").all()
    true_lfc = (adata.var["de_lfc_type0"] - adata.var["de_lfc_type1"]).loc[res.index]
    assert roc_auc_score(true_lfc.abs() > 0.5, res["proba_de"]) > 0.95
    assert np.corrcoef(true_lfc, res["lfc_mean"])[0, 1] > 0.9
    called = res["is_de_fdr_0.05"]
    assert called.sum() > 20 and (true_lfc[called].abs() > 0.5).mean() > 0.9  # few false discoveries
    a = adata.obs["cell_type"].to_numpy() == "type0"
    X = adata.X.toarray()
    np.testing.assert_allclose(res["raw_mean1"], X[a].mean(0)[adata.var_names.get_indexer(res.index)], rtol=1e-6)


def test_one_vs_all_vanilla_and_idx(trained):
    adata = trained.adata
    res = trained.differential_expression(groupby="cell_type", n_samples=200)
    assert len(res) == 3 * adata.n_vars
    assert sorted(res["comparison"].unique()) == ["type0 vs Rest", "type1 vs Rest", "type2 vs Rest"]
    assert {"proba_m1", "proba_m2", "bayes_factor", "scale1", "scale2", "raw_mean1"} <= set(res.columns)
    mask = (adata.obs["cell_type"] == "type2").to_numpy()
    by_idx = trained.differential_expression(idx1=mask, n_samples=200)
    assert len(by_idx) == adata.n_vars and "comparison" not in by_idx.columns
    ref = res[res["group1"] == "type2"]
    np.testing.assert_allclose(by_idx["raw_mean2"], ref.loc[by_idx.index, "raw_mean2"])
    by_pos = trained.differential_expression(
        idx1=np.flatnonzero(mask), idx2="cell_type == 'type0'", mode="change", n_samples=200
    )
    n0 = (adata.obs["cell_type"] == "type0").to_numpy()
    np.testing.assert_allclose(
        by_pos["raw_mean2"], adata.X.toarray()[n0].mean(0)[adata.var_names.get_indexer(by_pos.index)], rtol=1e-6
    )
    each_vs_type0 = trained.differential_expression(groupby="cell_type", group2="type0", n_samples=200)
    assert sorted(each_vs_type0["comparison"].unique()) == ["type1 vs type0", "type2 vs type0"]
    corrected = trained.differential_expression(
        groupby="cell_type", group1=["type1"], batch_correction=True, n_samples=200
    )
    assert len(corrected) == adata.n_vars and np.isfinite(corrected["bayes_factor"]).all()


def test_errors(trained):
    with pytest.raises(MissingKeyError):
        trained.differential_expression(groupby="cell_type", group1="no_such_type")
    with pytest.raises(MissingKeyError):
        trained.differential_expression(groupby="no_such_column")
    with pytest.raises(InvalidParameterError):
        trained.differential_expression(groupby="cell_type", mode="bayes")
    with pytest.raises(InvalidParameterError):
        trained.differential_expression(idx1=np.zeros(trained.adata.n_obs, dtype=bool))
    with pytest.raises(CellviError):
        trained.differential_expression()
    with pytest.raises(InvalidParameterError):
        trained.differential_expression(groupby="cell_type", mc_error=0)


def _top(table, k):
    t = table.assign(_a=table["lfc_mean"].abs()).sort_values(["proba_de", "_a"], ascending=False)
    return set(t.index[:k])


def test_shared_rounds_give_the_reference_answer_within_monte_carlo_error(trained):
    from cellvi.model import _de

    groups = ["type0", "type2"]  # each vs the rest (type1 is only ever in the rest)
    request = _de.DERequest(groupby="cell_type", group1=groups, mode="change", n_samples=2000)
    cellvi.settings.seed = 0
    ref = _de.differential_expression_per_comparison(trained, None, request)
    cellvi.settings.seed = 1
    ref_again = _de.differential_expression_per_comparison(trained, None, request)
    cellvi.settings.seed = 2
    fast = trained.differential_expression(groupby="cell_type", group1=groups, mode="change", n_samples=4000)
    assert set(fast.columns) >= set(ref.columns) | {"mc_error", "n_pairs"}
    for g in groups:
        a, b, c = (t[t["group1"] == g] for t in (ref, ref_again, fast))
        c = c.loc[a.index]
        assert 1000 <= c["n_pairs"].iloc[0] < 4000  # stopped early: converged at the default mc_error
        # per gene, the difference is what two independent Monte-Carlo estimates allow
        se = np.sqrt(c["mc_error"] ** 2 + a["proba_de"] * (1 - a["proba_de"]) / 2000)
        assert (np.abs(c["proba_de"] - a["proba_de"]) <= 4 * se + 1e-3).mean() > 0.99
        assert np.corrcoef(a["lfc_mean"], c["lfc_mean"])[0, 1] > 0.99
        floor = len(_top(a, 30) & _top(b, 30))  # the reference's agreement with itself
        assert len(_top(a, 30) & _top(c, 30)) >= floor - 3
        assert abs(int(a["is_de_fdr_0.05"].sum()) - int(c["is_de_fdr_0.05"].sum())) <= max(
            3, 0.1 * a["is_de_fdr_0.05"].sum()
        )
    exact = trained.differential_expression(
        groupby="cell_type", group1="type1", group2="type0", mode="change", n_samples=700, mc_error=None
    )
    assert (exact["n_pairs"] == 700).all()


def test_shared_rounds_keep_memory_to_a_round(trained, monkeypatch):
    from cellvi.model import _de
    from cellvi.model._de_pools import AtomPools

    n_genes = trained.adata.n_vars
    monkeypatch.setattr(_de, "ROUND_BYTES", 4 * n_genes * (3 + _de.WORK_ARRAYS) * 64)  # 3 groups x 64 rows
    sizes, draw = [], AtomPools.draw

    def spy(self, *args):
        draw(self, *args)
        sizes.append(self.pool.shape)

    monkeypatch.setattr(AtomPools, "draw", spy)
    res = trained.differential_expression(groupby="cell_type", n_samples=300, mc_error=None)
    assert (res["n_pairs"] == 300).all()
    assert max(s[0] for s in sizes) <= 3 * 64 and len(sizes) == 5  # 64, 64, 64, 64, 44 pairs
    mask1 = trained.adata.obs["cell_type"].isin(["type0", "type1"]).to_numpy()
    mask2 = trained.adata.obs["cell_type"].isin(["type1", "type2"]).to_numpy()  # overlaps idx1
    over = trained.differential_expression(idx1=mask1, idx2=mask2, mode="change", n_samples=300)
    assert len(over) == n_genes and np.isfinite(over["proba_de"]).all()


# ---------------------------------------------------------------------------------------- known biology
def test_ifnb_stimulation_ranks_interferon_stimulated_genes_first():
    import anndata as ad
    import scanpy as sc

    adata = ad.read_h5ad(real_data_path("pbmc_ifnb_stimulation.h5ad"))
    sc.pp.filter_genes(adata, min_cells=100)  # genes seen in >= 5% of cells: a smaller, faster model
    cellvi.model.SCVI.setup_anndata(adata)
    model = cellvi.model.SCVI(adata)
    model.train(max_epochs=30, batch_size=256, train_size=1.0)
    res = model.differential_expression(
        groupby="condition", group1="stim", group2="ctrl", mode="change", n_samples=2000
    )
    up = res[res["lfc_mean"] > 0].sort_values(["proba_de", "lfc_mean"], ascending=False)
    rank = {g: i for i, g in enumerate(up.index)}
    isgs = ["ISG15", "IFI6", "IFIT1", "IFIT3", "MX1"]
    ranks = [rank.get(g, len(res)) for g in isgs]
    # ~2,600 genes: every canonical ISG in the top 5%, and typically in the top 30
    assert max(ranks) < 0.05 * adata.n_vars, dict(zip(isgs, ranks))
    assert np.median(ranks) < 30, dict(zip(isgs, ranks))
    assert (res.loc[isgs, "lfc_mean"] > 1).all()  # each at least two-fold up


# ---------------------------------------------------------------------------------------- importance weights
def test_importance_weights_are_normalised_and_reduce_to_uniform(rng):
    log_w = rng.normal(0, 3, size=50) - 800.0  # far from 0: must not underflow
    w = de.importance_weights(log_w)
    assert (w >= 0).all() and np.isclose(w.sum(), 1.0)
    assert (np.argsort(w) == np.argsort(log_w)).all()  # monotone in the log weight
    np.testing.assert_allclose(de.importance_weights(np.full(7, -3.2)), np.full(7, 1 / 7))
    t = de.importance_weights(log_w, truncation=True)
    assert np.isclose(t.sum(), 1.0) and t.min() > w.min() and t.max() < w.max()  # lower spread
    with pytest.raises(ValueError):
        de.importance_weights(np.array([0.0, np.inf]))


def test_inlier_mask_flags_a_far_cell(rng):
    latent = rng.standard_normal((200, 4))
    latent[17] = 25.0
    keep = de.inlier_mask(latent)
    assert not keep[17] and 0.85 < keep.mean() < 0.95  # about the envelope's 10% contamination


@torch.no_grad()
def test_importance_log_weights_follow_their_formula(trained, monkeypatch):
    """The batched, chunked log weights equal the formula evaluated one (sample, anchor) pair at a
    time: log p(z) + logsumexp_a [log p(x_a | z) - log p(x_a)] - logsumexp_a log q(z | x_a)."""
    from cellvi.distributions.gaussian import log_normal_density
    from cellvi.module import importance as imp

    module = trained.module
    types = trained.adata.obs["cell_type"].to_numpy()
    anchors = imp.anchors(module, trained._batches(None, np.flatnonzero(types == "type0")[:9]), n_mc_samples=5)
    (batch,) = trained._batches(None, np.r_[0:4, 300:304])  # cells of several types and batches
    monkeypatch.setattr(imp, "CHUNK_ELEMENTS", 3 * 9 * module.n_input)  # chunks of 3 samples: 3 passes
    torch.manual_seed(5)
    out = torch.empty((8, module.n_input))
    log_w = imp.scales_and_log_weights(module, batch, anchors, out)
    torch.manual_seed(5)
    inf = module.inference(batch, sample=True)
    gen = module.generative(inf["z"], inf["library"], batch)
    for i in range(8):
        z = inf["z"][i : i + 1]
        terms, log_q = [], []
        for a in range(9):
            one = {
                k: (v[i : i + 1] if v is not None and v.dim() == 2 and v.shape[0] == 8 else v) for k, v in gen.items()
            }
            one["library"] = anchors.log_library[a : a + 1]
            terms.append(module.log_likelihood(anchors.x[a : a + 1], one)[0] - anchors.log_px[a])
            log_q.append(log_normal_density(z[0], anchors.qz_m[a], anchors.qz_v[a]))
        expected = (
            log_normal_density(z[0], torch.zeros_like(z[0]), torch.ones_like(z[0]))
            + torch.logsumexp(torch.stack(terms), 0)
            - torch.logsumexp(torch.stack(log_q), 0)
        )
        assert float(log_w[i]) == pytest.approx(float(expected), rel=1e-4, abs=1e-2)
    np.testing.assert_allclose(out.numpy(), torch.softmax(gen["scale_logits"], -1).numpy(), rtol=1e-5)


@pytest.mark.filterwarnings("ignore:weights='importance'")  # degenerate weights: measured, and warned
def test_importance_weighted_de_keeps_the_columns_and_finds_the_de_genes(trained):
    adata = trained.adata
    kw = {"importance_weighting_kwargs": {"max_cells": 64, "n_mc_samples": 20}}
    args = {"groupby": "cell_type", "group1": "type0", "group2": "type1", "mode": "change", "n_samples": 500}
    uniform = trained.differential_expression(**args)
    res = trained.differential_expression(**args, weights="importance", **kw)
    assert list(res.columns) == list(uniform.columns) and len(res) == adata.n_vars
    true_lfc = (adata.var["de_lfc_type0"] - adata.var["de_lfc_type1"]).loc[res.index]
    assert roc_auc_score(true_lfc.abs() > 0.5, res["proba_de"]) > 0.95
    ova = trained.differential_expression(groupby="cell_type", n_samples=200, weights="importance", **kw)
    plain = trained.differential_expression(groupby="cell_type", n_samples=200)
    assert list(ova.columns) == list(plain.columns) and len(ova) == 3 * adata.n_vars
    filtered = trained.differential_expression(groupby="cell_type", n_samples=200, filter_outlier_cells=True)
    assert list(filtered.columns) == list(plain.columns) and np.isfinite(filtered["bayes_factor"]).all()
    for bad in (
        {"weights": "bogus"},
        {"weights": "importance", "batch_correction": True},
        {"weights": "importance", "importance_weighting_kwargs": {"no_such": 1}},
        {"importance_weighting_kwargs": {"max_cells": 5}},  # needs weights="importance"
    ):
        with pytest.raises(InvalidParameterError):
            trained.differential_expression(groupby="cell_type", **bad)
