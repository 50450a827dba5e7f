"""`cellvi run`'s readers: .h5ad (in memory / backed above the threshold), 10x matrix folder and .zarr."""

import gzip

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from cellvi.cli._common import CliError, read_input


@pytest.fixture
def counts():
    X = sp.random(30, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 10)
    return ad.AnnData(
        X, obs=pd.DataFrame(index=[f"c{i}" for i in range(30)]), var=pd.DataFrame(index=[f"g{i}" for i in range(12)])
    )


def test_h5ad_is_opened_backed_at_the_threshold(counts, tmp_path, monkeypatch):
    path = tmp_path / "x.h5ad"
    counts.write_h5ad(path)
    assert not read_input(path).isbacked
    monkeypatch.setenv("CELLVI_BACKED_BYTES", str(path.stat().st_size))
    backed = read_input(path)
    assert backed.isbacked and backed.shape == (30, 12)


def test_zarr_and_10x_folder(counts, tmp_path):
    counts.write_zarr(tmp_path / "x.zarr")
    assert (read_input(tmp_path / "x.zarr").X != counts.X).nnz == 0
    folder = tmp_path / "filtered_feature_bc_matrix"
    folder.mkdir()
    with gzip.open(folder / "matrix.mtx.gz", "wb") as f:
        scipy.io.mmwrite(f, sp.csr_matrix(counts.X.T).astype(np.int64))  # 10x: genes x cells
    with gzip.open(folder / "features.tsv.gz", "wt") as f:
        f.writelines(f"ENSG{i}\t{g}\tGene Expression\n" for i, g in enumerate(counts.var_names))
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as f:
        f.writelines(f"{c}\n" for c in counts.obs_names)
    tenx = read_input(folder)
    assert tenx.shape == (30, 12) and (sp.csr_matrix(tenx.X) != counts.X).nnz == 0


def test_a_folder_that_is_not_10x(tmp_path):
    with pytest.raises(CliError, match="not a 10x matrix folder"):
        read_input(tmp_path)
