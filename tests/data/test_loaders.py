import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln

from cellvi.data import CellData, MinibatchLoader, minibatch_slices, prefetch


def test_trailing_single_cell_is_merged():
    sizes = [s.stop - s.start for s in minibatch_slices(257, 128)]
    assert sizes == [128, 129]
    assert [s.stop - s.start for s in minibatch_slices(1, 128)] == [1]
    assert sum(s.stop - s.start for s in minibatch_slices(1000, 7)) == 1000


def test_loader_visits_every_cell_once_and_shuffles_reproducibly():
    X = sp.csr_matrix(np.arange(50 * 3, dtype=np.float32).reshape(50, 3))
    data = CellData(X, np.zeros(50, dtype=np.int64), np.zeros(50, dtype=np.int64))
    loader = MinibatchLoader(data, np.arange(10, 50), batch_size=8, shuffle=True, seed=3)
    seen = np.concatenate([b["X"][:, 0].numpy() / 3 for b in loader]).astype(int)
    assert sorted(seen) == list(range(10, 50))
    again = np.concatenate([b["X"][:, 0].numpy() / 3 for b in loader]).astype(int)
    np.testing.assert_array_equal(seen, again)
    loader.set_epoch(1)
    other = np.concatenate([b["X"][:, 0].numpy() / 3 for b in loader]).astype(int)
    assert not np.array_equal(seen, other)


def test_prefetch_preserves_order_and_errors():
    assert list(prefetch(iter(range(20)))) == list(range(20))

    def broken():
        yield 1
        raise RuntimeError("boom")

    try:
        list(prefetch(broken()))
    except RuntimeError as exc:
        assert "boom" in str(exc)
    else:
        raise AssertionError("the error was swallowed")


def test_densify_skips_explicitly_stored_zeros():
    from cellvi.data.matrix import densify

    block = sp.csr_matrix((np.array([3.0, 0.0, 2.0]), np.array([0, 1, 2]), np.array([0, 2, 3])), shape=(2, 4))
    dense, rows, cols, values = densify(block)
    np.testing.assert_array_equal(dense, block.toarray())
    assert list(zip(rows, cols)) == [(0, 0), (1, 2)] and list(values) == [3.0, 2.0]
    dense2, rows2, cols2, values2 = densify(block.toarray())
    assert list(zip(rows2, cols2)) == [(0, 0), (1, 2)] and list(values2) == [3.0, 2.0]


def test_gather_rows_matches_scipy_for_any_index_dtype():
    from cellvi.data.matrix import gather_rows, row_log_factorial

    X = sp.random(50, 30, density=0.2, format="lil", random_state=0, dtype=np.float32)
    X[5] = 0  # a row with no counts
    X = X.tocsr()
    X.data = np.floor(X.data * 20)  # counts; some become explicitly stored zeros
    X.data[:3] = 0.0
    picks = [np.array([7, 3, 5, 3, 49, 0]), np.arange(3, 9)]  # any rows; consecutive rows (sliced)
    for big in (None, 5000.0):  # counts within the log-factorial table, then one beyond it
        if big is not None:
            X.data[3] = big
        wide = sp.csr_matrix((X.data, X.indices, X.indptr.astype(np.int64)), shape=X.shape)
        for M, rows in [(M, rows) for M in (X, wide) for rows in picks]:
            dense, r, c, values = gather_rows(M, rows)
            np.testing.assert_array_equal(dense, X[rows].toarray())
            assert np.all(dense[r, c] != 0) and len(r) == np.count_nonzero(dense)
            np.testing.assert_array_equal(values, dense[r, c])
            expected = gammaln(dense.astype(np.float64) + 1).sum(1)
            np.testing.assert_allclose(row_log_factorial(values, r, len(rows)), expected, rtol=1e-6)


def _expected_batch(X_dense, rows, extra):
    """What one minibatch of ``rows`` must hold, from the dense counts."""
    sub = X_dense[rows]
    nz_rows, nz_cols = np.nonzero(sub)
    log_fact = np.array([gammaln(r[r > 0] + 1).sum() for r in sub], dtype=np.float32)
    return sub, nz_rows, nz_cols, log_fact, {k: v[rows] for k, v in extra.items()}


def test_minibatches_gathered_together_equal_one_at_a_time():
    import torch

    from cellvi.data import loaders

    rng = np.random.default_rng(0)
    X = sp.random(300, 40, density=0.15, format="lil", random_state=1, dtype=np.float32)
    X[7] = 0  # a cell without counts
    X = X.tocsr()
    X.data = np.floor(X.data * 6)  # counts, with some explicitly stored zeros
    dense = X.toarray()
    extra = dict(
        batch=rng.integers(0, 3, 300).astype(np.int32),
        cat_covs=rng.integers(0, 4, (300, 2)).astype(np.int32),
        cont_covs=rng.normal(size=(300, 2)).astype(np.float32),
        size_factor=rng.random(300).astype(np.float32),
    )
    for matrix in (X, dense):
        data = CellData(
            matrix, extra["batch"], np.zeros(300, np.int32), extra["cat_covs"], extra["cont_covs"], extra["size_factor"]
        )
        for sparse_counts in (False, True):
            loader = MinibatchLoader(
                data, np.arange(5, 300), batch_size=16, shuffle=True, seed=2, sparse_counts=sparse_counts
            )
            old = loaders.GROUP_ENTRIES
            try:
                loaders.GROUP_ENTRIES = 16 * 40 * 5  # groups of 5 minibatches
                grouped = list(loader)
                loaders.GROUP_ENTRIES = 0  # one at a time
                single = list(loader)
            finally:
                loaders.GROUP_ENTRIES = old
            assert len(grouped) == len(single) == len(loader)
            for g, s in zip(grouped, single):
                assert g.keys() == s.keys()
                for key in g:
                    for a, b in zip(*((v if isinstance(v, tuple) else (v,)) for v in (g[key], s[key]))):
                        assert a.dtype == b.dtype and torch.equal(a, b), key
            # and each minibatch is right, not only the same both ways
            order = np.arange(5, 300)[np.random.default_rng([2, 0]).permutation(295)]
            for b, part in zip(grouped, minibatch_slices(295, 16)):
                rows = np.sort(order[part])
                sub, nz_rows, nz_cols, log_fact, covs = _expected_batch(dense, rows, extra)
                if sparse_counts:
                    indptr, cols, values = (t.numpy() for t in b["X_csr"])
                    got = sp.csr_matrix((values, cols, indptr), shape=sub.shape).toarray()
                    np.testing.assert_array_equal(got, sub)
                else:
                    np.testing.assert_array_equal(b["X"].numpy(), sub)
                    np.testing.assert_array_equal(b["nonzero"][0].numpy(), nz_rows)
                    np.testing.assert_array_equal(b["nonzero"][1].numpy(), nz_cols)
                    np.testing.assert_allclose(b["log_factorial"].numpy(), log_fact, rtol=1e-5)
                for key, value in covs.items():
                    np.testing.assert_array_equal(b[key].numpy(), value)


def test_per_cell_log_factorial_table_equals_the_minibatch_sums_bit_for_bit():
    """In-memory counts take their log-factorial sums from a table made once per loader; it must give
    exactly what summing each minibatch's non-zeros gives (CSR in chunks, dense, counts beyond the
    lookup table, a cell without counts), in every layout the loader hands out."""
    import torch

    from cellvi.data.matrix import cell_log_factorial

    rng = np.random.default_rng(4)
    X = sp.random(200, 60, density=0.3, format="lil", random_state=2, dtype=np.float32)
    X[11] = 0
    X = X.tocsr()
    X.data = np.floor(X.data * 40) + rng.choice([0.0, 5000.0], size=X.nnz, p=[0.97, 0.03])
    every = np.arange(200)
    np.testing.assert_array_equal(cell_log_factorial(X, every, chunk_entries=50), cell_log_factorial(X, every))
    expected = gammaln(X.toarray().astype(np.float64) + 1).sum(1)
    np.testing.assert_allclose(cell_log_factorial(X, every), expected, rtol=1e-6)
    assert cell_log_factorial(X, every)[11] == 0.0
    some = cell_log_factorial(X, np.array([150, 3, 40]))  # only the cells asked for are summed
    np.testing.assert_array_equal(some[[3, 40, 150]], cell_log_factorial(X, every)[[3, 40, 150]])
    assert np.count_nonzero(some) == 3
    for matrix in (X, X.toarray()):
        data = CellData(matrix, np.zeros(200, np.int32), np.zeros(200, np.int32))
        for layout in ({}, {"sparse_counts": True}, {"csr_transfer": True}):
            table = MinibatchLoader(data, np.arange(3, 200), batch_size=32, shuffle=True, seed=1, **layout)
            summed = MinibatchLoader(data, np.arange(3, 200), batch_size=32, shuffle=True, seed=1, **layout)
            summed._log_factorial_tried = True  # no table: the per-minibatch sums, as for on-disk rows
            for a, b in zip(table, summed, strict=True):
                assert a["log_factorial"].dtype == torch.float32
                assert torch.equal(a["log_factorial"], b["log_factorial"]), layout
            assert table._log_factorial is not None and summed._log_factorial is None
