"""Generative models as pure PyTorch modules: inference -> generative -> loss. They never see AnnData."""

from .ldvae import LDVAE
from .scanvae import SCANVAE
from .vae import VAE

__all__ = ["LDVAE", "SCANVAE", "VAE"]
