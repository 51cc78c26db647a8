"""Optimiser parameter groups: a pretrained frame encoder learns at its own (lower) rate.

Fine-tuning an ImageNet encoder with the learning rate of freshly initialised temporal layers and decoder erases
what it brought; the usual remedy (e.g. ULMFiT's discriminative rates, Howard & Ruder 2018) is a smaller rate for
the pretrained part. MONAI's ``generate_param_groups`` builds the groups.
"""

from __future__ import annotations

import torch.nn as nn
from monai.optimizers import generate_param_groups

__all__ = ["frame_encoder", "parameter_groups"]


def frame_encoder(network: nn.Module) -> nn.Module | None:
    """The encoder of ``network`` (``Vivim.encoder``; ``FrameWise(FlexibleUNet).network.encoder``), unwrapping
    DataParallel/DDP; None for networks without one (e.g. the per-frame UNet)."""
    if isinstance(network, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        network = network.module
    for owner in (network, getattr(network, "network", None)):
        encoder = getattr(owner, "encoder", None)
        if isinstance(encoder, nn.Module):
            return encoder
    return None


def parameter_groups(network: nn.Module, encoder_learning_rate: float | None = None) -> list:
    """Optimiser ``params``: the encoder's parameters at ``encoder_learning_rate``, the rest at the optimiser's rate.

    Without an encoder, or with ``encoder_learning_rate=None``, one group of every parameter. Frozen parameters
    (``requires_grad=False``, e.g. MediViSTA's encoder) are left out.
    """
    encoder = frame_encoder(network)
    if encoder is None or encoder_learning_rate is None:
        return [{"params": [p for p in network.parameters() if p.requires_grad]}]
    return generate_param_groups(network, [lambda _: encoder], ["select"], [float(encoder_learning_rate)])
