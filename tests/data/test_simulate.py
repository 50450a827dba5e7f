import importlib
import json
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from cellvi.data.simulate import simulate

REPO = Path(__file__).resolve().parents[2]


def _data_dir() -> Path:
    return Path(os.environ.get("CELLVI_DATA_DIR", REPO.parent / "shared" / "data"))


def _lib(X):
    return np.asarray(X.sum(axis=1)).ravel()


@pytest.fixture(scope="module")
def default():
    return simulate(n_cells=3000, n_genes=2000, seed=0)


def test_shape_dtype_integer(default):
    a = default
    assert a.shape == (3000, 2000)
    assert sp.issparse(a.X) and a.X.format == "csr" and a.X.dtype == np.float32
    assert np.all(a.X.data == np.round(a.X.data)) and np.all(a.X.data > 0)
    assert list(a.obs["batch"].cat.categories) == ["batch0", "batch1", "batch2"]
    assert list(a.obs["cell_type"].cat.categories) == [f"type{k}" for k in range(5)]
    for k in range(5):
        assert f"de_lfc_type{k}" in a.var
    sim = a.uns["simulation"]
    assert sim["seed"] == 0 and sim["n_genes"] == 2000
    json.dumps(sim)  # JSON-able parameters


def test_sparsity_and_library(default):
    X = default.X
    zeros = 1 - X.nnz / np.prod(X.shape)
    assert 0.85 < zeros < 0.91
    assert 1500 < np.median(_lib(X)) < 4000


def test_deterministic_and_seed_dependent(default):
    again = simulate(n_cells=3000, n_genes=2000, seed=0)
    assert (again.X != default.X).nnz == 0
    assert again.obs.equals(default.obs) and again.var.equals(default.var)
    other = simulate(n_cells=3000, n_genes=2000, seed=1)
    assert (other.X != default.X).nnz > 0


def test_chunked_write_equals_memory(tmp_path, monkeypatch):
    simmod = importlib.import_module("cellvi.data.simulate")  # the module, not the function
    monkeypatch.setattr(simmod, "_BLOCK_ENTRIES", 300 * 40)  # 40-cell internal blocks
    kw = dict(n_cells=700, n_genes=300, n_batches=2, seed=3)
    mem = simulate(**kw)
    for chunk in (1, 50, 130, 10_000):
        out = tmp_path / f"sim{chunk}.h5ad"
        assert simulate(**kw, path=out, chunk_size=chunk) == out
        disk = ad.read_h5ad(out)
        assert disk.shape == mem.shape and disk.X.dtype == np.float32
        assert (sp.csr_matrix(disk.X) != mem.X).nnz == 0
        assert disk.obs.equals(mem.obs)
        assert np.array_equal(disk.var["de_lfc_type0"], mem.var["de_lfc_type0"])
        assert disk.uns["simulation"]["seed"] == 3


def test_de_ground_truth_visible(default):
    a = default
    norm = sp.diags(1.0 / _lib(a.X)) @ a.X
    for k in range(5):
        lfc = a.var[f"de_lfc_type{k}"].to_numpy()
        in_type = (a.obs["cell_type"] == f"type{k}").to_numpy()
        mean_in = np.asarray(norm[in_type].mean(axis=0)).ravel()
        mean_out = np.asarray(norm[~in_type].mean(axis=0)).ravel()
        ratio = np.log2((mean_in + 1e-6) / (mean_out + 1e-6))
        up, down = lfc > 0.5, lfc < -0.5
        assert up.sum() > 20 and down.sum() > 20
        assert ratio[up].mean() > 0.5 and ratio[down].mean() < -0.3
        assert np.corrcoef(ratio[lfc != 0], lfc[lfc != 0])[0, 1] > 0.5
    assert set(a.var["de_type"][a.var["is_de"]].str.split(",").explode()) <= {f"type{k}" for k in range(5)}


def test_batch_effect_visible():
    a = simulate(n_cells=2000, n_genes=500, n_batches=2, n_cell_types=1, batch_effect=0.5)
    norm = sp.diags(1.0 / _lib(a.X)) @ a.X
    b0 = (a.obs["batch"] == "batch0").to_numpy()
    m0, m1 = (np.asarray(norm[m].mean(axis=0)).ravel() for m in (b0, ~b0))
    true = np.log(a.var["batch_factor_batch0"] / a.var["batch_factor_batch1"]).to_numpy()
    ok = (m0 > 1e-4) & (m1 > 1e-4)
    assert np.corrcoef(np.log(m0[ok] / m1[ok]), true[ok])[0, 1] > 0.7


def test_trajectory():
    a = simulate(n_cells=3000, n_genes=400, trajectory=True, seed=2, de_fraction=0.3)
    t = a.obs["pseudotime"].to_numpy()
    assert t.min() >= 0 and t.max() <= 1 and t.max() - t.min() > 0.9
    assert set(a.obs["branch"].cat.categories) == {"root", "branch1", "branch2"}
    assert (a.obs["cell_type"].astype(str) == a.obs["branch"].astype(str)).all()
    root = (a.obs["branch"] == "root").to_numpy()
    assert t[root].max() < t[~root].min()
    # A strongly dynamic gene: expression tracks its anchors (early root vs branch-1 end).
    start, end = a.var["traj_lfc_start"].to_numpy(), a.var["traj_lfc_end_branch1"].to_numpy()
    norm = sp.diags(1.0 / _lib(a.X)) @ a.X
    early = t < 0.1
    late = (a.obs["branch"] == "branch1").to_numpy() & (t > 0.9)
    dyn = a.var["is_de"].to_numpy() & (a.var["true_mean"].to_numpy() > 1e-4)
    obs_lfc = np.log2(
        (np.asarray(norm[late].mean(0)).ravel() + 1e-6) / (np.asarray(norm[early].mean(0)).ravel() + 1e-6)
    )
    assert np.corrcoef(obs_lfc[dyn], (end - start)[dyn])[0, 1] > 0.7


def test_template_fit():
    f = _data_dir() / "mouse_10x_10k.h5ad"
    if not f.exists():
        pytest.skip(f"template data not found at {f} (set CELLVI_DATA_DIR)")
    tmpl = ad.read_h5ad(f)[:3000].copy()
    a = simulate(n_cells=2000, n_genes=1500, template=tmpl, seed=0)
    assert a.shape == (2000, 1500)
    src = a.var["template_gene"].to_numpy()
    tX = sp.csr_matrix(tmpl.X)
    t_mean = np.asarray(tX.mean(axis=0)).ravel()
    t_mean = dict(zip(tmpl.var_names, t_mean))
    s_mean = np.asarray(a.X.mean(axis=0)).ravel()
    tm = np.array([t_mean[g] for g in src])
    ok = (tm > 0) & (s_mean > 0)
    assert np.corrcoef(np.log(s_mean[ok]), np.log(tm[ok]))[0, 1] > 0.8
    # Library sizes scale with n_genes / template genes; sparsity close to the template's.
    ratio = np.median(_lib(a.X)) / np.median(_lib(tX))
    assert 1.0 < ratio < 2.2
    t_zero = 1 - tX.nnz / np.prod(tX.shape)
    assert abs((1 - a.X.nnz / np.prod(a.shape)) - t_zero) < 0.03
    assert "template" in a.uns["simulation"]


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_cells=0),
        dict(n_genes=-1),
        dict(n_batches=0),
        dict(n_cell_types=1.5),
        dict(seed=-1),
        dict(chunk_size=0),
        dict(de_fraction=1.5),
        dict(batch_effect=-0.1),
        dict(dispersion=0.0),
        dict(library_median=-5),
        dict(path="out.csv"),
        dict(template=3),
    ],
)
def test_bad_arguments(kw):
    with pytest.raises(ValueError):
        simulate(**{"n_cells": 10, "n_genes": 10, **kw})


def test_tiny():
    a = simulate(n_cells=1, n_genes=1, n_batches=1, n_cell_types=1)
    assert a.shape == (1, 1)


def test_template_path_and_recycling(tmp_path):
    rng = np.random.default_rng(0)
    counts = rng.negative_binomial(2, 2 / (2 + rng.lognormal(0, 1.5, 40)), size=(300, 40))
    f = tmp_path / "tmpl.h5ad"
    ad.AnnData(sp.csr_matrix(counts.astype(np.float32))).write_h5ad(f)
    a = simulate(n_cells=500, n_genes=100, template=str(f), n_batches=1, seed=1)
    assert a.shape == (500, 100)
    assert a.var["template_gene"].value_counts().max() == 3  # each gene used 2-3 times
    assert a.uns["simulation"]["template"] == str(f)
    with pytest.raises(ValueError, match="raw"):
        simulate(n_cells=10, n_genes=10, template=ad.AnnData(np.full((5, 4), 0.5, np.float32)))
