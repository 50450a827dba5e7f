"""The scVI variational autoencoder as a plain PyTorch module.

A minibatch is a dict of tensors (see :mod:`cellvi.data.loaders`):

* ``X`` (n_cells, n_genes) float32 raw counts
* ``batch`` (n_cells,) int64 batch code; ``labels`` (n_cells,) int64 label code
* ``cat_covs`` (n_cells, n_extra_categorical) int64 or absent; ``cont_covs`` (n_cells, n_continuous) or absent
* ``size_factor`` (n_cells,) float32 or absent: a given library size that replaces the observed one
* ``nonzero`` optional pair (rows, cols) of int64 coordinates of the non-zero entries of ``X``
* instead of ``X``: ``X_csr`` (row pointers, column indices, values) of the counts, and in training also
  ``X_csc`` (column pointers, row indices, values), the same entries by gene; the encoders then read
  the non-zeros only (see :class:`cellvi.nn.layers.SparseRows`) and ``nonzero`` locates ``X_csr``'s values
* ``log_factorial`` (n_cells,) float32 or absent: per-cell sum of ``lgamma(X + 1)``, a constant of the
  likelihood that the loaders compute once per minibatch, outside the gradient path

The module never sees AnnData. Generative model, per cell ``n`` and gene ``g``:
``z ~ N(0, I)``, ``l`` = log library (observed, or ``~ N(mu_batch, var_batch)``),
``rho = softmax(f(z, s))``, ``x_ng ~ ZINB/NB/Poisson(mean = exp(l) * rho_ng, theta_g, pi_ng)``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import nn

from .. import distributions as D
from ..distributions.gaussian import kl_normal
from ..nn import Decoder, Encoder
from ..nn.layers import SparseRows, select_rows
from ._outputs import VAEOutputs

DISPERSIONS = ("gene", "gene-batch", "gene-label", "gene-cell")
LIKELIHOODS = ("zinb", "nb", "poisson")
LATENT_DISTRIBUTIONS = ("normal", "ln")


NORM_PLACES = ("both", "encoder", "decoder", "none")


def norm_parts(name: str, value: bool | str) -> tuple[bool, bool]:
    """(in the encoders, in the decoder) for a normalisation option given as scvi-tools does ("both",
    "encoder", "decoder", "none") or as a bool (True: both)."""
    if isinstance(value, bool):
        return value, value
    if value not in NORM_PLACES:
        raise ValueError(f"{name} must be a bool or one of {list(NORM_PLACES)}, got {value!r}.")
    return value in ("both", "encoder"), value in ("both", "decoder")


class VAE(VAEOutputs, nn.Module):
    """scVI. See :class:`cellvi.model.SCVI` for the meaning of the hyper-parameters.

    ``library_log_means`` / ``library_log_vars``: (n_batch,) mean and variance of the log library size per
    batch, the prior used when ``use_observed_lib_size=False``. ``use_batch_norm`` / ``use_layer_norm``:
    a bool (both parts) or, as in scvi-tools, "both", "encoder", "decoder" or "none".
    """

    def __init__(
        self,
        n_input: int,
        n_batch: int = 1,
        n_labels: int = 1,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        n_continuous_cov: int = 0,
        n_cats_per_cov: Sequence[int] = (),
        dropout_rate: float = 0.1,
        dispersion: str = "gene",
        gene_likelihood: str = "zinb",
        latent_distribution: str = "normal",
        use_observed_lib_size: bool = True,
        encode_covariates: bool = False,
        deeply_inject_covariates: bool = True,
        library_log_means: Sequence[float] | None = None,
        library_log_vars: Sequence[float] | None = None,
        use_batch_norm: bool | str = True,
        use_layer_norm: bool | str = False,
    ) -> None:
        super().__init__()
        bn_enc, bn_dec = norm_parts("use_batch_norm", use_batch_norm)
        ln_enc, ln_dec = norm_parts("use_layer_norm", use_layer_norm)
        self.n_input, self.n_batch, self.n_labels, self.n_latent = n_input, n_batch, n_labels, n_latent
        self.dispersion = dispersion
        self.gene_likelihood = gene_likelihood
        self.latent_distribution = latent_distribution
        self.use_observed_lib_size = use_observed_lib_size
        self.encode_covariates = encode_covariates

        cats = [n_batch, *n_cats_per_cov]
        enc_cats = cats if encode_covariates else []
        enc_cont = n_continuous_cov if encode_covariates else 0
        self.z_encoder = Encoder(
            n_input,
            n_latent,
            enc_cats,
            enc_cont,
            n_layers,
            n_hidden,
            dropout_rate,
            latent_distribution,
            deeply_inject_covariates,
            use_batch_norm=bn_enc,
            use_layer_norm=ln_enc,
        )
        if not use_observed_lib_size:
            self.l_encoder = Encoder(
                n_input,
                1,
                enc_cats,
                enc_cont,
                1,
                n_hidden,
                dropout_rate,
                "normal",
                deeply_inject_covariates,
                use_batch_norm=bn_enc,
                use_layer_norm=ln_enc,
            )
            means = torch.as_tensor(library_log_means if library_log_means is not None else [0.0] * n_batch)
            lvars = torch.as_tensor(library_log_vars if library_log_vars is not None else [1.0] * n_batch)
            self.register_buffer("library_log_means", means.float().reshape(-1))
            self.register_buffer("library_log_vars", lvars.float().reshape(-1))
        self.decoder = Decoder(
            n_latent,
            n_input,
            cats,
            n_continuous_cov,
            n_layers,
            n_hidden,
            deeply_inject_covariates,
            bn_dec,
            ln_dec,
            need_r=dispersion == "gene-cell",
            need_dropout=gene_likelihood == "zinb",
        )
        n_rows = {"gene": 1, "gene-batch": n_batch, "gene-label": n_labels, "gene-cell": 0}[dispersion]
        self.px_r = nn.Parameter(torch.randn(n_rows, n_input)) if n_rows else None

    # ------------------------------------------------------------------ inference and generative model
    @staticmethod
    def _covariates(batch: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
        codes = batch["batch"].reshape(-1, 1)
        if batch.get("cat_covs") is not None:
            codes = torch.cat([codes, batch["cat_covs"]], dim=1)
        return codes, batch.get("cont_covs")

    def _encoder_covariates(self, batch: dict) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The covariates the encoders see: all of them with ``encode_covariates``, else none."""
        return self._covariates(batch) if self.encode_covariates else (None, None)

    def _log_counts(self, batch: dict) -> torch.Tensor | SparseRows:
        """The encoders' input ``log1p(counts)``, (n_cells, n_genes): dense from ``X``; from ``X_csr`` (row
        pointers, column indices, values) sparse CSR, which the first layer multiplies as it is, or with
        ``X_csc`` (training) :class:`SparseRows`, whose first layer also gives the weight its gradient."""
        if "X_csr" not in batch:
            return torch.log1p(batch["X"])  # not log(x + 1): measured non-deterministic across processes
        indptr, cols, values = batch["X_csr"]
        if "X_csc" in batch and torch.is_grad_enabled():  # without gradients, the CSR tensor's faster path
            colptr, rows, col_values = batch["X_csc"]
            return SparseRows(indptr, cols, torch.log1p(values), colptr, rows, torch.log1p(col_values))
        with warnings.catch_warnings():  # PyTorch's notice that sparse CSR is "beta", once per process
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                indptr, cols, torch.log1p(values), (len(indptr) - 1, self.n_input), check_invariants=False
            )  # the loaders build valid CSR

    @staticmethod
    def _total_counts(batch: dict) -> torch.Tensor:
        """Counts per cell, (n_cells,), from ``X`` or ``X_csr`` (integer counts: exact either way)."""
        if "X_csr" not in batch:
            return batch["X"].sum(1)
        indptr, _, values = batch["X_csr"]
        return torch.segment_reduce(values, "sum", offsets=indptr)  # empty rows sum to 0

    def inference(self, batch: dict, sample: bool = True) -> dict:
        """Posterior q(z, l | x). Returns qz_m, qz_v (n_cells, n_latent), z, and library (n_cells, 1) in
        log space (plus ql_m, ql_v when the library is latent). The counts may come dense (``X``) or
        sparse (``X_csr``, see :meth:`_log_counts`). A minified minibatch carries ``qz_m``, ``qz_v``
        and ``observed_lib_size`` (n_cells,) instead, which are used as they are."""
        if "qz_m" in batch:  # minified data: the posterior saved by minify_adata replaces the encoder
            qz_m, qz_v = batch["qz_m"], batch["qz_v"]
            z = qz_m + qz_v.sqrt() * torch.randn_like(qz_m) if sample else qz_m
            library = torch.log(batch["observed_lib_size"].clamp_min(1.0)).unsqueeze(1)
            return {"qz_m": qz_m, "qz_v": qz_v, "z": self.z_encoder.transform(z), "library": library}
        enc_codes, enc_cont = self._encoder_covariates(batch)
        x_in = self._log_counts(batch)
        qz_m, qz_v, z = self.z_encoder(x_in, enc_codes, enc_cont, sample=sample)
        out = {"qz_m": qz_m, "qz_v": qz_v, "z": z}
        if self.use_observed_lib_size:
            size = batch.get("size_factor")
            lib = self._total_counts(batch).clamp_min(1.0) if size is None else size  # no counts: library 1
            out["library"] = torch.log(lib).unsqueeze(1)
        else:
            ql_m, ql_v, library = self.l_encoder(x_in, enc_codes, enc_cont, sample=sample)
            out.update(ql_m=ql_m, ql_v=ql_v, library=library)
        return out

    def generative(self, z: torch.Tensor, library: torch.Tensor, batch: dict) -> dict:
        """Parameters of p(x | z, l), each (n_cells, n_genes) or broadcastable: ``scale_logits`` (the
        proportions are their softmax), ``library`` (n_cells, 1) log library, ``log_theta`` (log inverse
        dispersion) and ``dropout_logits``. :meth:`scale` and :meth:`rate` turn them into proportions and
        mean counts."""
        codes, cont = self._covariates(batch)
        scale_logits, r, dropout_logits = self.decoder(z, codes, cont)
        if self.dispersion == "gene-cell":
            log_theta = r
        elif self.dispersion == "gene":
            log_theta = self.px_r
        else:
            key = "batch" if self.dispersion == "gene-batch" else "labels"
            log_theta = select_rows(self.px_r, batch[key])
        return {
            "scale_logits": scale_logits,
            "library": library,
            "log_theta": log_theta,
            "dropout_logits": dropout_logits,
        }

    @staticmethod
    def scale(gen: dict) -> torch.Tensor:
        """Expression proportions (n_cells, n_genes), each row sums to 1."""
        return torch.softmax(gen["scale_logits"], dim=-1)

    @staticmethod
    def rate(gen: dict) -> torch.Tensor:
        """Mean counts (n_cells, n_genes): library x proportions."""
        return torch.exp(gen["library"]) * torch.softmax(gen["scale_logits"], dim=-1)

    def log_likelihood(
        self,
        x: torch.Tensor | None,
        gen: dict,
        nonzero: tuple | None = None,
        log_factorial: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """log p(x | z, l) summed over genes, (n_cells,). ``nonzero``: (rows, cols) of x's non-zeros, or
        (rows, cols, values) with ``x=None`` for counts that were never densified;
        ``log_factorial``: (n_cells,) per-cell sum of ``lgamma(x + 1)``; both optional, as the loaders give them.

        Two implementations of the same value and gradients (tested equal): eagerly, softmax then the
        likelihood of the mean (fewer element-wise kernels: faster without a compiler); under
        ``torch.compile``, the likelihood straight from the logits (the softmax's chain rule in closed
        form, which the compiler fuses into a few loops: faster compiled). Measured in bench/README.md."""
        logits, library = gen["scale_logits"], gen["library"]
        if not torch.compiler.is_compiling():
            rate, theta = self.rate(gen), torch.exp(gen["log_theta"])
            if self.gene_likelihood == "zinb":
                return D.log_zinb_sum(
                    x, rate, theta, gen["dropout_logits"], nonzero=nonzero, log_factorial=log_factorial
                )
            if self.gene_likelihood == "nb":
                return D.log_nb_sum(x, rate, theta, nonzero=nonzero, log_factorial=log_factorial)
            return D.log_poisson_sum(x, rate, log_factorial=log_factorial, nonzero=nonzero)
        log_theta, pi_logits = gen["log_theta"], gen["dropout_logits"]
        if self.gene_likelihood == "zinb":
            return D.log_zinb_sum_softmax(x, logits, library, log_theta, pi_logits, nonzero, log_factorial)
        if self.gene_likelihood == "nb":
            return D.log_nb_sum_softmax(x, logits, library, log_theta, nonzero, log_factorial)
        return D.log_poisson_sum_softmax(x, logits, library, log_factorial, nonzero)

    def reconstruction_loss(self, batch: dict, gen: dict) -> torch.Tensor:
        """-log p(x | z, l) per cell, (n_cells,), from the dense ``X`` or, when the minibatch never became
        dense, from the values of ``X_csr`` at ``nonzero``."""
        if "X" in batch:
            return -self.log_likelihood(batch["X"], gen, batch.get("nonzero"), batch.get("log_factorial"))
        rows, cols = batch["nonzero"]
        return -self.log_likelihood(None, gen, (rows, cols, batch["X_csr"][2]), batch.get("log_factorial"))

    def _kl_library(self, batch: dict, inf: dict) -> torch.Tensor:
        if self.use_observed_lib_size:
            return torch.zeros_like(inf["library"][:, 0])
        b = batch["batch"]
        return kl_normal(inf["ql_m"], inf["ql_v"], self.library_log_means[b, None], self.library_log_vars[b, None])

    def loss(self, batch: dict, kl_weight: float = 1.0) -> dict:
        """Negative ELBO terms. Returns ``loss`` (scalar to minimise, KL on z weighted by ``kl_weight``),
        and per cell (n_cells,): ``reconstruction_loss`` = -log p(x|z,l), ``kl_z``, ``kl_l``."""
        inf = self.inference(batch)
        gen = self.generative(inf["z"], inf["library"], batch)
        rec = self.reconstruction_loss(batch, gen)
        zeros = torch.zeros_like(inf["qz_m"])
        kl_z = kl_normal(inf["qz_m"], inf["qz_v"], zeros, torch.ones_like(zeros))
        kl_l = self._kl_library(batch, inf)
        loss = torch.mean(rec + kl_weight * kl_z + kl_l)
        return {"loss": loss, "reconstruction_loss": rec, "kl_z": kl_z, "kl_l": kl_l}
