"""Generative models as pure PyTorch modules: inference -> generative -> loss. They never see AnnData."""

from .scanvae import SCANVAE
from .ldvae import LDVAE
from .vae import VAE

__all__ = ["LDVAE", "SCANVAE", "VAE"]
