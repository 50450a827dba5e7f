"""Neural-network building blocks: fully connected layers with covariate injection, encoders, decoder."""

from .layers import CovariateInjection, FCLayers
from .encoder_decoder import Decoder, Encoder
from .linear_decoder import LinearDecoder

__all__ = ["CovariateInjection", "FCLayers", "Encoder", "Decoder", "LinearDecoder"]
