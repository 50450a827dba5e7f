"""Generative models as pure PyTorch modules: inference -> generative -> loss. They never see AnnData."""

from .scanvae import SCANVAE
from .vae import VAE

__all__ = ["SCANVAE", "VAE"]
