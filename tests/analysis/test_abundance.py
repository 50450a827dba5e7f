"""Differential abundance: the mixture density and scvi-tools' call on a model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributions as dist

import cellvi
from cellvi.analysis.abundance import mixture_log_density
from cellvi.errors import MissingKeyError
from cellvi.model import SCVI


@pytest.mark.parametrize("dof", [None, 3.0])
def test_mixture_log_density_equals_torch_mixture(dof):
    rng = np.random.default_rng(0)
    m, v, u = rng.normal(size=(7, 3)), rng.uniform(0.05, 2.0, size=(7, 3)), rng.normal(size=(1000, 3)) * 2
    comp = dist.Normal(torch.tensor(m), torch.tensor(v).sqrt())
    if dof is not None:
        comp = dist.StudentT(dof, torch.tensor(m), torch.tensor(v).sqrt())
    mix = dist.MixtureSameFamily(
        dist.Categorical(logits=torch.zeros(7, dtype=torch.float64)), dist.Independent(comp, 1)
    )
    np.testing.assert_allclose(
        mixture_log_density(u, m, v, dof, chunk=300), mix.log_prob(torch.tensor(u)).numpy(), rtol=1e-10
    )


def test_differential_abundance_finds_the_sample_rich_in_a_cell_type():
    a = cellvi.data.simulate(n_cells=600, n_genes=60, n_batches=1, n_cell_types=2, seed=2, de_fraction=0.3)
    types = a.obs["cell_type"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    # sample A holds 80% of type0's cells and 20% of type1's; sample B the rest
    in_a = np.where(types == types[0], rng.random(a.n_obs) < 0.8, rng.random(a.n_obs) < 0.2)
    a.obs["sample"] = np.where(in_a, "A", "B")
    SCVI.setup_anndata(a)
    model = SCVI(a, n_hidden=32, n_latent=4)
    model.train(max_epochs=60)
    da = model.differential_abundance(sample_key="sample", num_cells_posterior=200)
    assert list(da.columns) == ["A", "B"] and da.shape == (a.n_obs, 2)
    assert a.obsm["da_log_probs"] is da
    lfc = (da["A"] - da["B"]).to_numpy()
    first, other = lfc[types == types[0]], lfc[types != types[0]]
    assert np.median(first) > 0 > np.median(other)
    assert np.mean(first > np.median(other)) > 0.9
    again = model.differential_abundance(sample_key="sample", num_cells_posterior=200)
    np.testing.assert_array_equal(again.to_numpy(), da.to_numpy())  # the subsample is seeded
    with pytest.raises(MissingKeyError, match="sample_key"):
        model.differential_abundance(sample_key="donor")
