"""scANVI (Xu et al. 2021): scVI with a semi-supervised cell-type layer (the M1+M2 model of Kingma et al. 2014).

Generative model, per cell, with ``C`` classes (the unlabeled category is not one of them):
``y ~ Cat(prior)``, ``z2 ~ N(0, I)``, ``z1 ~ N(mu(z2, y), sigma2(z2, y))``, then ``x`` given ``z1`` (and the
library) exactly as in scVI. Inference: ``q(z1 | x)`` is scVI's encoder, ``q(y | z1)`` a classifier and
``q(z2 | z1, y)`` a small encoder. For a labelled cell ``y`` is observed; for an unlabelled one the bound
is averaged over ``y`` under ``q(y | z1)`` by enumerating every class (C passes of the small networks).
Labelled cells also train the classifier directly with a cross-entropy weighted by ``classification_ratio``.

Label codes in a minibatch: ``0..C-1`` are classes, ``C`` means "unlabelled".
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from ..distributions.gaussian import kl_normal, log_normal_density
from ..nn import Encoder
from .classifier import Classifier
from .vae import VAE, norm_parts

CALIBRATION_BINS = 15


class SCANVAE(VAE):
    """scANVI's module. ``n_labels`` is the number of classes ``C``; the other arguments are :class:`VAE`'s.

    y_prior: (C,) prior class probabilities (default uniform). linear_classifier: logistic regression on
    z1 instead of an MLP. classifier_parameters: ``n_hidden``, ``n_layers``, ``dropout_rate`` of the MLP.

    Only ``latent_distribution="normal"``: the hierarchy z2 -> z1 is Gaussian.
    """

    def __init__(
        self,
        n_input: int,
        n_labels: int,
        y_prior: Sequence[float] | None = None,
        linear_classifier: bool = False,
        classifier_parameters: dict | None = None,
        **vae_kwargs,
    ) -> None:
        # px_r gets a row for the unlabeled code too, so "gene-label" dispersion can index every cell
        super().__init__(n_input, n_labels=n_labels + 1, **vae_kwargs)
        self.n_labels = n_labels
        n_hidden, n_layers = vae_kwargs.get("n_hidden", 128), vae_kwargs.get("n_layers", 1)
        dropout = vae_kwargs.get("dropout_rate", 0.1)
        bn_enc, bn_dec = norm_parts("use_batch_norm", vae_kwargs.get("use_batch_norm", True))
        ln_enc, ln_dec = norm_parts("use_layer_norm", vae_kwargs.get("use_layer_norm", False))
        norm = {"use_batch_norm": bn_enc, "use_layer_norm": ln_enc}  # as scvi-tools: the encoder's setting
        cls_params = {"n_hidden": n_hidden, "n_layers": n_layers, "dropout_rate": dropout}
        if linear_classifier:
            cls_params.update(n_hidden=0, n_layers=0)
        cls_params.update(classifier_parameters or {})
        self.classifier = Classifier(self.n_latent, n_labels, **cls_params, **norm)
        # q(z2 | z1, y) and p(z1 | z2, y): both Gaussian heads over an MLP with y injected as a category
        self.encoder_z2_z1 = Encoder(self.n_latent, self.n_latent, [n_labels], 0, n_layers, n_hidden, dropout, **norm)
        self.decoder_z1_z2 = Encoder(
            self.n_latent,
            self.n_latent,
            [n_labels],
            0,
            n_layers,
            n_hidden,
            0.0,
            use_batch_norm=bn_dec,
            use_layer_norm=ln_dec,
        )
        prior = torch.full((n_labels,), 1.0 / n_labels) if y_prior is None else torch.as_tensor(y_prior).float()
        self.register_buffer("log_y_prior", torch.log(prior / prior.sum()))

    # ------------------------------------------------------------------ classification
    def classify(self, batch: dict, sample: bool = False) -> torch.Tensor:
        """Class logits from the posterior mean of z1 (or one sample of it), (n_cells, C)."""
        inf = self.inference(batch, sample=sample)
        if sample:
            return self.classifier(inf["z"])
        return self._logits(inf)

    def _logits(self, inf: dict) -> torch.Tensor:
        return self.classifier(self.z_encoder.transform(inf["qz_m"]))

    def classification_loss(
        self, logits: torch.Tensor, labels: torch.Tensor, class_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Cross-entropy over the labelled cells (0 when there are none). logits: (n_cells, C); labels:
        (n_cells,) codes; class_weights: (C,) per-class weights (to balance classes), or None."""
        # as F.cross_entropy(logits[labelled], labels[labelled], weight=class_weights), written without
        # selecting rows: a selection's size depends on the data, which breaks the compiled step in pieces
        labelled = labels < self.n_labels
        codes = labels.clamp(max=self.n_labels - 1)
        weights = labelled.to(logits.dtype)
        if class_weights is not None:
            weights = weights * class_weights[codes]
        per_cell = F.cross_entropy(logits, codes, reduction="none")
        total = weights.sum()  # 0 without labelled cells: then divide 0 by 1 (a tiny divisor overflows the gradient)
        return (weights * per_cell).sum() / torch.where(total > 0, total, torch.ones_like(total))

    # ------------------------------------------------------------------ the bound
    def _z_terms(self, inf: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per cell (n_cells,): the z1 part ``log q(z1|x) - E_y log p(z1|z2,y)`` and the KL part
        ``E_y KL(q(z2|z1,y) || N(0,I)) + KL(q(y|z1) || p(y))`` (for labelled cells y is the observed one
        and the y term is ``-log p(y)``)."""
        z1 = inf["z"]
        n, c = z1.shape[0], self.n_labels
        ys = torch.arange(c, device=z1.device).repeat_interleave(n).reshape(-1, 1)  # (C*n, 1), class-major
        z1s = z1.repeat(c, 1)
        q2_m, q2_v, z2 = self.encoder_z2_z1(z1s, ys)
        p1_m, p1_v, _ = self.decoder_z1_z2(z2, ys, sample=False)
        neg_log_p_z1 = -log_normal_density(z1s, p1_m, p1_v).reshape(c, n).t()  # (n, C)
        kl_z2 = kl_normal(q2_m, q2_v, torch.zeros_like(q2_m), torch.ones_like(q2_v)).reshape(c, n).t()

        logits = self.classifier(z1)
        log_probs = F.log_softmax(logits, dim=-1)
        labelled = labels < c
        observed = F.one_hot(labels.clamp(max=c - 1), c).to(z1.dtype)
        weights = torch.where(labelled[:, None], observed, log_probs.exp())
        kl_y = (log_probs.exp() * (log_probs - self.log_y_prior)).sum(-1)
        kl_y = torch.where(labelled, -self.log_y_prior[labels.clamp(max=c - 1)], kl_y)

        log_q_z1 = log_normal_density(z1, inf["qz_m"], inf["qz_v"])
        z1_part = log_q_z1 + (weights * neg_log_p_z1).sum(-1)
        kl_part = (weights * kl_z2).sum(-1) + kl_y
        return z1_part, kl_part

    def loss(
        self,
        batch: dict,
        kl_weight: float = 1.0,
        classification_ratio: float = 50.0,
        class_weights: torch.Tensor | None = None,
        labels_in_bound: bool = True,
    ) -> dict:
        """Negative bound plus ``classification_ratio`` x the classification loss.

        Returns ``loss`` (scalar), per cell (n_cells,) ``reconstruction_loss`` (-log p(x|z1,l)), ``kl_z``
        (all latent terms: z1, z2 and y) and ``kl_l``, the scalar ``classification_loss`` and the counts
        ``classification_correct`` / ``classification_n`` of labelled cells classified right / in all,
        and ``calibration_bins`` (3, 15): per confidence bin the labelled cells' count, summed confidence
        and number correct (the trainer turns them into the epoch's expected calibration error).
        As in scvi-tools, the z1 terms are not scaled by the KL warm-up (only the z2 and y KLs are): a
        model initialised from a trained scVI is trained for few epochs, so a warm-up would leave the
        hierarchical prior almost untrained.
        """
        inf = self.inference(batch)
        gen = self.generative(inf["z"], inf["library"], batch)
        rec = self.reconstruction_loss(batch, gen)
        labels = batch["labels"].reshape(-1)
        # labels_in_bound=False: y is averaged under q(y|z1) in the bound for every cell, labelled or not, as
        # scvi-tools 1.4.2 does; the labels then reach the model through the classification loss only
        bound_labels = labels if labels_in_bound else torch.full_like(labels, self.n_labels)
        z1_part, kl_part = self._z_terms(inf, bound_labels)
        kl_l = self._kl_library(batch, inf)
        loss = torch.mean(rec + z1_part + kl_weight * kl_part + kl_l)
        logits = self._logits(inf)
        ce = self.classification_loss(logits, labels, class_weights)
        labelled = labels < self.n_labels
        probs = torch.softmax(logits.detach(), dim=-1)
        conf, pred = probs.max(-1)
        correct = (pred == labels) & labelled
        # per confidence bin (15 equal-width, as torchmetrics' ECE): labelled cells, their confidence, correct
        # (one-hot sums, not bincount of the labelled cells: no size that depends on the data, see above)
        bins = torch.clamp((conf * CALIBRATION_BINS).long(), max=CALIBRATION_BINS - 1)
        in_bin = F.one_hot(bins, CALIBRATION_BINS).to(conf.dtype) * labelled[:, None]  # (n_cells, bins)
        calib = torch.stack([in_bin.sum(0), conf @ in_bin, correct.to(conf.dtype) @ in_bin])
        if classification_ratio:
            loss = loss + classification_ratio * ce
        return {
            "loss": loss,
            "reconstruction_loss": rec,
            "kl_z": z1_part + kl_part,
            "kl_l": kl_l,
            "classification_loss": ce.detach(),
            "classification_correct": correct.sum(),
            "classification_n": labelled.sum(),
            "calibration_bins": calib,
        }

    @torch.no_grad()
    def marginal_ll(self, batch: dict, n_mc_samples: int) -> torch.Tensor:
        raise NotImplementedError(
            "The marginal likelihood under scANVI's hierarchical prior is not implemented; use get_elbo()."
        )
