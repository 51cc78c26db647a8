"""CLIPSeg's text-conditioned decoder (transformers' ``CLIPSegDecoder``) with an optional ST-Mamba temporal stage.

CLIPSeg (Lüddecke & Ecker, CVPR 2022, arXiv 2112.10003) decodes the hidden states of three encoder layers: each is
reduced to ``reduce_dim`` and added to the running tokens (deepest first), the conditional embedding modulates the
tokens once by FiLM (``gamma(c) * x + beta(c)``), a small transformer layer follows each addition, and transposed
convolutions turn the patch grid into one logit per pixel. The weights and layers are transformers' own; this module
runs the same computation as ``CLIPSegDecoder.forward`` (checked by a test) so that ST-Mamba layers (Vivim,
arXiv 2401.14168) can mix the patch tokens of all frames of a clip before the upsampling.
"""

from __future__ import annotations

import copy
import importlib
import math
import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Sequence

import torch
import torch.nn as nn

from vivim_monai.networks.blocks.st_mamba import STMambaLayer, STMambaStage
from vivim_monai.networks.weights import load_state, read_state_file

if TYPE_CHECKING:
    from transformers import CLIPSegConfig

__all__ = ["PromptedDecoder", "clipseg_decoder_config", "load_clipseg_decoder_state", "require_transformers"]

_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def require_transformers(module: str = "transformers") -> ModuleType:
    """``module`` of the transformers package, imported when a prompted network is built (so that importing
    ``vivim_monai.networks`` never needs it, e.g. in MONAI Label's environment); a clear error when it is missing."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(
            f"the text-prompted networks are built on the 'transformers' package ({module} cannot be imported: "
            f"{err}); install the project's requirements (pip install -r requirements.txt)"
        ) from err


def clipseg_decoder_config(
    token_width: int,
    conditional_dim: int,
    patch_size: int = 16,
    extract_layers: Sequence[int] = (3, 6, 9),
    reduce_dim: int = 64,
    heads: int = 4,
    intermediate_size: int = 2048,
    refined: bool = True,
) -> "CLIPSegConfig":
    """A ``CLIPSegConfig`` for a decoder over encoder tokens of ``token_width`` channels on a ``patch_size`` grid and
    conditional embeddings of ``conditional_dim``; the defaults are CLIPSeg ``rd64-refined``'s."""
    return require_transformers().CLIPSegConfig(
        # the decoder reads only the encoder's token width and patch size from vision_config
        vision_config={"hidden_size": token_width, "patch_size": patch_size, "num_attention_heads": 1},
        projection_dim=conditional_dim,
        extract_layers=list(extract_layers),
        reduce_dim=reduce_dim,
        decoder_num_attention_heads=heads,
        decoder_intermediate_size=intermediate_size,
        conditional_layer=0,
        use_complex_transposed_convolution=refined,
    )


def load_clipseg_decoder_state(folder: str | os.PathLike) -> tuple[CLIPSegConfig, dict[str, torch.Tensor]]:
    """The decoder's config and weights from a local CLIPSeg folder in its published Hugging Face format
    (``config.json`` and ``model.safetensors`` or ``pytorch_model.bin``, e.g. ``CIDAS/clipseg-rd64-refined``);
    nothing is downloaded."""
    folder = Path(folder)
    weights = [folder / name for name in _WEIGHT_FILES if (folder / name).is_file()]
    missing = [name for name in ("config.json",) if not (folder / name).is_file()]
    if not weights:
        missing.append(" or ".join(_WEIGHT_FILES))
    if missing:
        raise FileNotFoundError(f"{folder}: not a CLIPSeg model folder, missing {', '.join(missing)}")
    config = require_transformers().CLIPSegConfig.from_pretrained(folder, local_files_only=True)
    state = read_state_file(weights[0])
    decoder = {k[len("decoder.") :]: v for k, v in state.items() if k.startswith("decoder.")}
    if not decoder:
        raise ValueError(f"{weights[0]}: no 'decoder.*' weights (not a CLIPSegForImageSegmentation checkpoint)")
    return config, decoder


class PromptedDecoder(nn.Module):
    """Encoder tokens of one frame batch + one conditional embedding per frame -> one logit map per frame.

    Args:
        config: the decoder's ``CLIPSegConfig`` (:func:`clipseg_decoder_config` or a CLIPSeg folder's).
        temporal_depth: ST-Mamba layers on the ``reduce_dim`` patch tokens of each clip (0: frame by frame, exactly
            CLIPSeg's decoder).
        scan_backend: selective-scan backend of the ST-Mamba layers (``None``: the fastest available).
        token_widths: channels of each extract layer's tokens, shallowest first, when they differ (a CNN's stages);
            default: the config's ``vision_config.hidden_size`` for all, as a ViT.
    """

    def __init__(
        self,
        config: CLIPSegConfig,
        temporal_depth: int = 0,
        scan_backend: str | None = None,
        token_widths: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        config = copy.deepcopy(config)
        # a decoder built on its own has no attention implementation chosen (transformers warns); PyTorch's SDPA
        config.vision_config._attn_implementation = config.vision_config._attn_implementation or "sdpa"
        self.config = config
        self.decoder = require_transformers("transformers.models.clipseg.modeling_clipseg").CLIPSegDecoder(config)
        # transformers' post_init leaves FiLM and the upsampling convolutions at N(0, 1), harmless under CLIPSeg's
        # trained weights but logits in the hundreds for a decoder trained from scratch: PyTorch's default instead
        for module in (self.decoder.film_mul, self.decoder.film_add, *self.decoder.transposed_convolution.modules()):
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
                module.reset_parameters()
        if token_widths is not None:
            if len(token_widths) != len(config.extract_layers):
                raise ValueError(f"{len(token_widths)} token widths for {len(config.extract_layers)} extract layers")
            # reduces run deepest first, as the activations
            self.decoder.reduces = nn.ModuleList(nn.Linear(w, config.reduce_dim) for w in reversed(token_widths))
        self.temporal = STMambaStage(
            STMambaLayer(config.reduce_dim, scan_backend=scan_backend) for _ in range(temporal_depth)
        )

    @property
    def extract_layers(self) -> list[int]:
        return list(self.config.extract_layers)

    def load_weights(self, state: dict[str, torch.Tensor], source: str | os.PathLike | None = None) -> None:
        """CLIPSeg decoder weights (keys without the ``decoder.`` prefix), strictly; the temporal layers keep theirs."""
        load_state(self.decoder, state, source)

    def forward(
        self, activations: Sequence[torch.Tensor], conditional: torch.Tensor, num_frames: int, class_token: bool
    ) -> torch.Tensor:
        """``activations``: tokens ``(N, [1 +] h*w, width)`` of the extract layers, shallowest first, ``N = B*T``
        frames in (batch, time) order; ``conditional``: ``(N, projection_dim)``; ``class_token``: whether token 0 is
        a class token (dropped before the upsampling). Returns logits ``(N, 1, h*s, w*s)``, ``s`` the patch size."""
        decoder = self.decoder
        output = None
        for index, (activation, layer, reduce) in enumerate(zip(activations[::-1], decoder.layers, decoder.reduces)):
            output = reduce(activation) if output is None else reduce(activation) + output
            if index == decoder.conditional_layer:
                output = decoder.film_mul(conditional)[:, None] * output + decoder.film_add(conditional)[:, None]
            output = layer(output, attention_mask=None)
            output = output[0] if isinstance(output, tuple) else output
        patches = output[:, 1:] if class_token else output
        frames, length, width = patches.shape
        side = math.isqrt(length)
        if side * side != length:
            raise ValueError(f"the decoder needs a square patch grid, got {length} tokens")
        grid = patches.transpose(1, 2).reshape(frames, width, side, side)
        return decoder.transposed_convolution(self.temporal(grid, num_frames))
