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
