"""Neural-network building blocks: fully connected layers with covariate injection, encoders, decoder."""

from .encoder_decoder import Decoder, Encoder
from .layers import CovariateInjection, FCLayers
from .linear_decoder import LinearDecoder

__all__ = ["CovariateInjection", "FCLayers", "Encoder", "Decoder", "LinearDecoder"]
