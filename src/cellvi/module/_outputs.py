"""What a trained scVI module gives the models' outputs: the latent, the library size, denoised
expression, the likelihood's parameters, posterior-predictive draws, the ELBO's terms and the marginal
likelihood, each for one minibatch (mixed into :class:`cellvi.module.VAE`, whose ``inference`` /
``generative`` / ``loss`` they call)."""

from __future__ import annotations

import numpy as np
import torch

from .. import distributions as D
from ..distributions.gaussian import log_normal_density


class VAEOutputs:
    """Per-minibatch outputs of :class:`cellvi.module.VAE`; every method runs without gradients."""

    @torch.no_grad()
    def latent(self, batch: dict, give_mean: bool = True, mc_samples: int = 200) -> torch.Tensor:
        """Posterior mean (or one sample) of z, (n_cells, n_latent). For "ln" the mean is estimated by
        Monte Carlo (softmax of ``mc_samples`` samples) because softmax(mean) is not the mean."""
        inf = self.inference(batch, sample=not give_mean)
        if give_mean and self.latent_distribution == "ln":
            eps = torch.randn((mc_samples, *inf["qz_m"].shape), device=inf["qz_m"].device)
            return torch.softmax(inf["qz_m"] + inf["qz_v"].sqrt() * eps, dim=-1).mean(0)
        return inf["z"] if not give_mean else inf["qz_m"]

    @torch.no_grad()
    def library_size(self, batch: dict, give_mean: bool = True) -> torch.Tensor:
        """Library size l (counts), (n_cells, 1): the observed total (or size factor) when observed; when
        latent, the mean exp(m + v / 2) of the log-normal q(l | x), or a sample of it."""
        inf = self.inference(batch, sample=not give_mean)
        if not give_mean or "ql_m" not in inf:  # observed library: no q(l | x), the total itself
            return torch.exp(inf["library"])
        return torch.exp(inf["ql_m"] + inf["ql_v"] / 2)

    @torch.no_grad()
    def latent_distribution_parameters(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of the Gaussian q(z | x) (before any softmax), each (n_cells, n_latent)."""
        inf = self.inference(batch, sample=False)
        return inf["qz_m"], inf["qz_v"]

    @torch.no_grad()
    def expression(
        self,
        batch: dict,
        batch_code: int | None = None,
        latent_library: bool = False,
        sample_z: bool = False,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Expected expression (n_cells, n_genes): proportions (scale) or, with ``latent_library``, mean
        counts. ``batch_code`` decodes every cell as if it came from that batch (batch correction).
        ``out``: a float32 (n_cells, n_genes) tensor on this device to write the result into (and
        return), so that a caller filling a large result makes no intermediate copy."""
        inf = self.inference(batch, sample=sample_z)
        if batch_code is not None:
            batch = {**batch, "batch": torch.full_like(batch["batch"], batch_code)}
        codes, cont = self._covariates(batch)
        logits = self.decoder.scale_logits(inf["z"], codes, cont)
        if out is None:
            gen = {"scale_logits": logits, "library": inf["library"]}
            return self.rate(gen) if latent_library else self.scale(gen)
        torch.softmax(logits, dim=-1, out=out)
        return out.mul_(torch.exp(inf["library"])) if latent_library else out

    @torch.no_grad()
    def likelihood_parameters(self, batch: dict, sample_z: bool = False) -> dict:
        """mean, dispersions (theta) and dropout (zero-inflation probabilities, as scvi-tools returns them),
        each (n_cells, n_genes) where they apply."""
        inf = self.inference(batch, sample=sample_z)
        gen = self.generative(inf["z"], inf["library"], batch)
        mean = self.rate(gen)
        out = {"mean": mean, "dispersions": torch.exp(gen["log_theta"]).expand_as(mean)}
        if gen["dropout_logits"] is not None:
            out["dropout"] = torch.sigmoid(gen["dropout_logits"])
        return out

    @torch.no_grad()
    def sample_counts(
        self, batch: dict, batch_code: int | None = None, library_size: float | None = None, denoised: bool = False
    ) -> torch.Tensor:
        """One draw of counts from the posterior predictive, (n_cells, n_genes). ``batch_code``: decode every
        cell as that batch; ``library_size``: this library (counts) for every cell instead of its own;
        ``denoised``: only the Gamma rate of the Gamma-Poisson (no counting noise, no zero inflation; the
        mean itself for Poisson), scvi-tools' "denoised samples"."""
        inf = self.inference(batch, sample=True)
        if batch_code is not None:
            batch = {**batch, "batch": torch.full_like(batch["batch"], batch_code)}
        library = inf["library"] if library_size is None else torch.full_like(inf["library"], np.log(library_size))
        gen = self.generative(inf["z"], library, batch)
        rate, theta = self.rate(gen), torch.exp(gen["log_theta"])
        if denoised:
            return rate if self.gene_likelihood == "poisson" else D.sample_gamma_rate(rate, theta)
        if self.gene_likelihood == "zinb":
            return D.sample_zinb(rate, theta, gen["dropout_logits"])
        if self.gene_likelihood == "nb":
            return D.sample_nb(rate, theta)
        return D.sample_poisson(rate)

    @torch.no_grad()
    def elbo_terms(self, batch: dict) -> dict:
        """Per-cell reconstruction loss and KL terms at one posterior sample (the ELBO is -(rec + kl))."""
        out = self.loss(batch, kl_weight=1.0)
        return {k: out[k] for k in ("reconstruction_loss", "kl_z", "kl_l")}

    @torch.no_grad()
    def marginal_ll(self, batch: dict, n_mc_samples: int) -> torch.Tensor:
        """Importance-sampling estimate of log p(x) per cell, (n_cells,), with q(z, l | x) as proposal."""
        inf = self.inference(batch, sample=False)
        log_w = []
        for _ in range(n_mc_samples):
            u = inf["qz_m"] + inf["qz_v"].sqrt() * torch.randn_like(inf["qz_m"])
            z = self.z_encoder.transform(u)
            lw = log_normal_density(u, torch.zeros_like(u), torch.ones_like(u))
            lw = lw - log_normal_density(u, inf["qz_m"], inf["qz_v"])
            library = inf["library"]
            if not self.use_observed_lib_size:
                library = inf["ql_m"] + inf["ql_v"].sqrt() * torch.randn_like(inf["ql_m"])
                b = batch["batch"]
                lw = lw + log_normal_density(library, self.library_log_means[b, None], self.library_log_vars[b, None])
                lw = lw - log_normal_density(library, inf["ql_m"], inf["ql_v"])
            gen = self.generative(z, library, batch)
            log_w.append(lw - self.reconstruction_loss(batch, gen))
        return torch.logsumexp(torch.stack(log_w), dim=0) - np.log(n_mc_samples)
