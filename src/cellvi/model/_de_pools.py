"""Posterior samples for differential expression drawn once per round for every cell group at once,
then shared by all comparisons (see :func:`cellvi.model._de.differential_expression`).

The cells are split into *atoms*: the sets of cells that belong to exactly the same compared groups
(for ``groupby``, each group, plus the cells in none). Any group and its rest is a union of atoms,
and a random cell of a union is a random atom, chosen in proportion to its number of cells, then a
random cell of it. So each round encodes and decodes ``r`` cells per atom, in one pass, and every
comparison draws its ``r`` pairs from those rows: one-vs-all over K groups decodes K rows where
the per-comparison path decodes 2K, and no array ever has more than a round's rows.
"""

from __future__ import annotations

import warnings

import numpy as np

from ._de import Comparison, scale_samples

DEGENERATE_ESS = 0.05  # warn when an atom's importance weights have an effective sample size below 5%


class AtomPools:
    """The atoms of ``masks`` and, per round, ``r`` posterior samples of normalized expression of
    random cells of each atom (each cell once until the atom is used up, then again with a fresh
    sample; each row one cell, rows in random order).

    masks: K boolean (n_cells,) arrays from :func:`cellvi.model._de.plan_comparisons`; disjoint,
    or at most two (idx1/idx2, which may overlap).
    """

    def __init__(
        self,
        masks: list[np.ndarray],
        rng: np.random.Generator,
        keep: np.ndarray | None = None,
        importance: dict | None = None,
    ):
        stack = np.vstack(masks)
        k = len(masks)
        if (stack.sum(0) <= 1).all():
            code = np.where(stack.any(0), stack.argmax(0), k)
            member = [np.arange(k + 1) == j for j in range(k)]  # member[j][a]: atom a is in group j
        else:  # overlapping idx1/idx2: atoms 0..3 are the bit patterns (in 1, in 2)
            if k > 2:
                raise ValueError("overlapping groups are supported for idx1/idx2 only")
            code = sum(stack[j].astype(np.int64) << j for j in range(k))
            member = [((np.arange(1 << k) >> j) & 1).astype(bool) for j in range(k)]
        if keep is not None:  # cells left out (filter_outlier_cells) belong to no atom
            code = np.where(keep, code, len(member[0]))
        self.sizes = np.bincount(code, minlength=len(member[0]) + 1)[: len(member[0])].astype(np.int64)
        self.member = np.vstack(member)  # (K, n_atoms) bool
        self.order = [rng.permutation(np.flatnonzero(code == a)) for a in range(len(self.sizes))]
        self.rng = rng
        self.rows = 0  # per atom, samples drawn so far
        self.pool = None
        self.rows_of: dict[int, np.ndarray] = {}
        # weights="importance": scvi-tools' keyword names (max_cells, truncation, n_mc_samples)
        self.importance = importance
        self.anchors: dict[int, object] = {}  # per atom, its module.importance.Anchors
        self.weights: dict[int, np.ndarray] = {}  # per atom, this round's normalised weights of rows_of
        self.warned = False

    def atoms_of(self, comp: Comparison, side: int) -> np.ndarray:
        """Boolean (n_atoms,): the atoms of side 1 or 2 of ``comp`` (side 2 of a None group: the rest)."""
        if side == 1:
            return self.member[comp.k1]
        return ~self.member[comp.k1] if comp.k2 is None else self.member[comp.k2]

    def draw(self, model, adata, atoms: np.ndarray, r: int, codes: list, batch_size) -> None:
        """The next round: ``r`` samples of each atom of the boolean mask ``atoms`` (others: none),
        encoded and decoded in as few sorted passes over the data as the atom sizes allow (one
        unless an atom has fewer than ``r`` cells). ``self.rows_of[a]``: atom a's pool rows, in
        the random order of its cells."""
        wanted = [a for a in np.flatnonzero(atoms) if self.sizes[a] > 0]
        shape = (len(wanted) * r, model.module.n_input)
        if self.pool is None or self.pool.shape != shape:  # the same buffer round after round
            self.pool = np.empty(shape, dtype=np.float32)
        if self.importance is not None:
            return self._draw_weighted(model, adata, wanted, r, batch_size)
        passes = []  # per pass: [(atom, cells, positions in the atom's round)]; no cell twice in a pass
        for a in wanted:
            pos = self.rows + np.arange(r)
            cells, lap = self.order[a][pos % self.sizes[a]], pos // self.sizes[a]
            for i, j in enumerate(np.unique(lap)):
                if i >= len(passes):
                    passes.append([])
                sel = np.flatnonzero(lap == j)
                passes[i].append((a, cells[sel], sel))
        self.rows_of = {a: np.empty(r, dtype=np.int64) for a in wanted}
        start = 0
        for parts in passes:
            cells = np.concatenate([c for _, c, _ in parts])
            sort = np.argsort(cells, kind="stable")
            stop = start + len(cells)
            scale_samples(model, adata, cells[sort], codes, batch_size, out=self.pool[start:stop])
            row = np.empty(len(cells), dtype=np.int64)
            row[sort] = np.arange(start, stop)  # pool row of each entry of `cells`
            at = 0
            for a, c, sel in parts:
                self.rows_of[a][sel] = row[at : at + len(c)]
                at += len(c)
            start = stop
        self.rows += r

    def _draw_weighted(self, model, adata, wanted: list, r: int, batch_size) -> None:
        """:meth:`draw` for ``weights="importance"``: each atom's ``r`` samples in passes of its own
        (a sample's weight depends on its atom's anchors), and their normalised weights. The samples
        come from the anchors only (at most ``max_cells`` random cells of the atom): the encoder's
        mixture over the anchors is then exactly the proposal the weights correct. (Samples of other
        cells, as scvi-tools draws for groups over ``max_cells``, can lie where no anchor's q(z | x)
        reaches, get an overwhelming weight, and collapse the weights onto one sample: measured.)"""
        import torch

        from ..analysis.differential import importance_weights
        from ..module import importance as imp

        opts = self.importance
        for j, a in enumerate(wanted):
            if a not in self.anchors:
                cells = np.sort(self.order[a][: opts["max_cells"]])
                self.anchors[a] = imp.anchors(
                    model.module, model._batches(adata, cells, batch_size), opts["n_mc_samples"]
                )
            pos = self.rows + np.arange(r)
            n_anchor = min(opts["max_cells"], int(self.sizes[a]))
            cells, lap = self.order[a][pos % n_anchor], pos // n_anchor
            log_w = np.empty(r)
            start = j * r
            for k in np.unique(lap):
                part = np.sort(cells[lap == k])
                at = start
                with torch.no_grad():
                    for batch in model._batches(adata, part, batch_size):
                        n = len(batch["batch"])
                        out = torch.from_numpy(self.pool[at : at + n])
                        lw = imp.scales_and_log_weights(model.module, batch, self.anchors[a], out)
                        log_w[at - j * r : at - j * r + n] = lw.cpu().numpy()
                        at += n
                start = at
            self.rows_of[a] = np.arange(j * r, (j + 1) * r)
            self.weights[a] = importance_weights(log_w, opts["truncation"])
            ess = 1.0 / float(np.sum(self.weights[a] ** 2))  # Kish's effective sample size
            if ess < DEGENERATE_ESS * r and not self.warned:
                self.warned = True
                warnings.warn(
                    f"weights='importance': the importance weights are degenerate (effective sample size "
                    f"{ess:.1f} of {r} samples), so few posterior samples decide the result; prefer "
                    "weights='uniform' (see docs/differential_expression.md).",
                    stacklevel=4,
                )
        self.rows += r

    def pairs(self, comp: Comparison, r: int) -> tuple[np.ndarray, np.ndarray]:
        """``r`` rows of side 1 and ``r`` of side 2 of ``comp`` from this round's pool, paired at
        random: each side a multinomial mix of its atoms by size; side 1 takes an atom's rows from
        the start, side 2 from the end (distinct rows unless an atom in both sides is short)."""
        idx = []
        for side in (1, 2):
            atoms = np.flatnonzero(self.atoms_of(comp, side) & (self.sizes > 0))
            counts = self.rng.multinomial(r, self.sizes[atoms] / self.sizes[atoms].sum())
            if self.importance is not None:  # each atom's rows resampled by importance weight
                rows = [self.rng.choice(self.rows_of[a], c, p=self.weights[a]) for a, c in zip(atoms, counts) if c]
            else:
                rows = [
                    self.rows_of[a][:c] if side == 1 else self.rows_of[a][r - c :] for a, c in zip(atoms, counts) if c
                ]
            idx.append(self.rng.permutation(np.concatenate(rows)))
        return self.pool[idx[0]], self.pool[idx[1]]
