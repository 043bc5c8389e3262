"""Encoders (MONAI 3D networks) and heads."""

from medssl.models.encoders import (
    ENCODER_NAMES,
    AlexNet3D,
    Encoder,
    EncoderSpec,
    build_encoder,
    encoder_spec,
    load_encoder,
    save_encoder,
)
from medssl.models.heads import DINOHead, ProjectionHead

__all__ = [
    "ENCODER_NAMES",
    "AlexNet3D",
    "DINOHead",
    "Encoder",
    "EncoderSpec",
    "ProjectionHead",
    "build_encoder",
    "encoder_spec",
    "load_encoder",
    "save_encoder",
]
