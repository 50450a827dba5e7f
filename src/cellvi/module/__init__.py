"""Generative models as pure PyTorch modules: inference -> generative -> loss. They never see AnnData."""

from .vae import VAE

__all__ = ["VAE"]
