"""BiomedCLIPSeg(-D): BiomedCLIP's frozen image and text encoders under CLIPSeg's decoder, from local files only.

Poudel et al., "Exploring Transfer Learning in Medical Image Segmentation using Vision-Language Models" (MIDL 2024,
arXiv 2308.07706): the hidden states of image layers 3, 6 and 9 (CLIPSeg's ``extract_layers``: the outputs of blocks
4, 7 and 10) of BiomedCLIP's ViT-B/16 (Zhang et al., arXiv 2303.00915) enter CLIPSeg's decoder (reduce_dim 64,
FiLM on the projected text embedding of PubMedBERT, 3 transformer layers, transposed-convolution upsampling); the
"-D" variant starts that decoder from CLIPSeg ``rd64-refined`` (Lüddecke & Ecker, arXiv 2112.10003). Both encoders
stay frozen; 224 x 224 input normalised with CLIP's mean and standard deviation (the bundle's transforms do that).

Loading is offline: BiomedCLIP from a local folder in its published open_clip format (``open_clip_config.json``,
``open_clip_pytorch_model.bin`` or ``open_clip_model.safetensors``, the BERT tokenizer's ``vocab.txt``), whose timm
ViT and Hugging Face BERT key names are mapped onto transformers' ``ViTModel`` and ``BertModel``; CLIPSeg from a
local Hugging Face folder. Neither ``open_clip`` nor ``timm`` is imported (their ``torchvision`` breaks the CPU torch
of this project). The open_clip config names the BERT model on the Hub; its shape is read from the weights instead
(heads: width / 64, as BERT-base and ViT-B; ``text_heads`` / ``vision_heads`` override).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn as nn

from vivim_monai.networks.blocks.prompted_decoder import (
    PromptedDecoder,
    clipseg_decoder_config,
    load_clipseg_decoder_state,
    require_transformers,
)
from vivim_monai.networks.nets.prompted import PromptedSegmenter
from vivim_monai.networks.weights import load_state, read_state_file

if TYPE_CHECKING:
    from transformers import BertConfig, ViTConfig

__all__ = ["BiomedCLIPSeg", "BiomedCLIPText", "load_open_clip_folder", "timm_vit_to_transformers"]

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors")
TOKENIZER_FILES = ("vocab.txt", "tokenizer.json")
# keys of an open_clip checkpoint that segmentation does not use: the image-text contrastive head and temperature,
# BERT's pooler (BiomedCLIP pools the CLS token of the last hidden state) and an old BERT buffer
UNUSED_OPEN_CLIP_KEYS = re.compile(r"^(visual\.head\.|logit_scale$|text\.transformer\.pooler\.|.*position_ids$)")
_VISION, _TEXT = "visual.trunk.", "text.transformer."


def load_open_clip_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor], Path]:
    """``(open_clip config, state dict, weight file)`` of a local open_clip model folder (nothing is downloaded)."""
    folder = Path(folder)
    weights = [folder / name for name in OPEN_CLIP_WEIGHTS if (folder / name).is_file()]
    missing = [] if (folder / OPEN_CLIP_CONFIG).is_file() else [OPEN_CLIP_CONFIG]
    if not weights:
        missing.append(" or ".join(OPEN_CLIP_WEIGHTS))
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        missing.append(" or ".join(TOKENIZER_FILES) + " (the BERT tokenizer)")
    if missing:
        raise FileNotFoundError(f"{folder}: not an open_clip BiomedCLIP folder, missing {', '.join(missing)}")
    with open(folder / OPEN_CLIP_CONFIG) as handle:
        config = json.load(handle)
    return config, read_state_file(weights[0]), weights[0]


def _layer_count(state: dict[str, torch.Tensor], pattern: str) -> int:
    indices = {int(m.group(1)) for key in state if (m := re.match(pattern, key))}
    return max(indices) + 1 if indices else 0


def timm_vit_to_transformers(
    state: dict[str, torch.Tensor], heads: int | None = None, prefix: str = _VISION
) -> tuple["ViTConfig", dict[str, torch.Tensor]]:
    """A timm ``VisionTransformer`` state dict (class token, pre-norm blocks with fused qkv, final norm) as the
    config and state dict of transformers' ``ViTModel`` (no pooler)."""
    patch = state[prefix + "patch_embed.proj.weight"]
    width, patch_size = patch.shape[0], patch.shape[-1]
    positions = state[prefix + "pos_embed"].shape[1] - 1
    grid = int(round(positions**0.5))
    depth = _layer_count(state, re.escape(prefix) + r"blocks\.(\d+)\.")
    config = require_transformers().ViTConfig(
        hidden_size=width,
        num_hidden_layers=depth,
        num_attention_heads=heads or width // 64,
        intermediate_size=state[prefix + "blocks.0.mlp.fc1.weight"].shape[0],
        image_size=grid * patch_size,
        patch_size=patch_size,
        num_channels=patch.shape[1],
        layer_norm_eps=1e-6,
        qkv_bias=prefix + "blocks.0.attn.qkv.bias" in state,
        hidden_act="gelu",
    )
    consumed: set[str] = set()

    def take(key: str) -> torch.Tensor:
        consumed.add(prefix + key)
        return state[prefix + key]

    out = {
        "embeddings.cls_token": take("cls_token"),
        "embeddings.position_embeddings": take("pos_embed"),
        "embeddings.patch_embeddings.projection.weight": take("patch_embed.proj.weight"),
        "embeddings.patch_embeddings.projection.bias": take("patch_embed.proj.bias"),
        "layernorm.weight": take("norm.weight"),
        "layernorm.bias": take("norm.bias"),
    }
    renames = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for block in range(depth):
        source, target = f"blocks.{block}.", f"layers.{block}."
        for name, new in renames.items():
            for kind in ("weight", "bias"):
                out[f"{target}{new}.{kind}"] = take(f"{source}{name}.{kind}")
        for kind in ("weight", "bias"):
            if f"{prefix}{source}attn.qkv.{kind}" in state:
                for part, tensor in zip(("q", "k", "v"), take(f"{source}attn.qkv.{kind}").chunk(3)):
                    out[f"{target}attention.{part}_proj.{kind}"] = tensor
    leftover = sorted(k for k in state if k.startswith(prefix) and k not in consumed)
    if leftover:
        raise ValueError(f"timm ViT weights this mapping does not use (another ViT design?): {leftover[:5]}")
    return config, out


def bert_config_from_state(state: dict[str, torch.Tensor], heads: int | None = None) -> "BertConfig":
    """The shape of a BERT from its weights (keys without the ``text.transformer.`` prefix)."""
    width = state["embeddings.word_embeddings.weight"].shape[1]
    return require_transformers().BertConfig(
        vocab_size=state["embeddings.word_embeddings.weight"].shape[0],
        hidden_size=width,
        num_hidden_layers=_layer_count(state, r"encoder\.layer\.(\d+)\."),
        num_attention_heads=heads or width // 64,
        intermediate_size=state["encoder.layer.0.intermediate.dense.weight"].shape[0],
        max_position_embeddings=state["embeddings.position_embeddings.weight"].shape[0],
        type_vocab_size=state["embeddings.token_type_embeddings.weight"].shape[0],
    )


def _forget_embeddings(module: nn.Module, *_: Any) -> None:
    """Drop a text tower's stored prompt embeddings (its weights, device or dtype changed)."""
    getattr(module, "_embeddings", {}).clear()


class BiomedCLIPText(nn.Module):
    """BiomedCLIP's text tower: BERT, the open_clip pooler (CLS of the last hidden state, or masked mean) and the
    projection (``mlp``: Linear-GELU-Linear, or ``linear``) into the joint embedding; frozen."""

    def __init__(self, folder: str | os.PathLike, config: dict[str, Any], state: dict[str, torch.Tensor], heads=None):
        super().__init__()
        text_cfg = config.get("model_cfg", {}).get("text_cfg", {})
        self.pooler = text_cfg.get("hf_pooler_type", "cls_last_hidden_state_pooler")
        if self.pooler not in ("cls_last_hidden_state_pooler", "mean_pooler"):
            raise ValueError(f"{folder}: text pooler {self.pooler!r} is not supported (CLS or mean pooling)")
        self.context_length = int(text_cfg.get("context_length", 256))
        bert_state = {k[len(_TEXT) :]: v for k, v in state.items() if k.startswith(_TEXT)}
        bert_state = {k: v for k, v in bert_state.items() if not UNUSED_OPEN_CLIP_KEYS.match(_TEXT + k)}
        transformers = require_transformers()
        self.bert = transformers.BertModel(bert_config_from_state(bert_state, heads), add_pooling_layer=False)
        load_state(self.bert, bert_state, folder)
        proj = {k[len("text.proj.") :]: v for k, v in state.items() if k.startswith("text.proj.")}
        if "0.weight" in proj:  # mlp
            hidden, width = proj["0.weight"].shape
            self.projection = nn.Sequential(
                nn.Linear(width, hidden, bias="0.bias" in proj),
                nn.GELU(),
                nn.Linear(hidden, proj["2.weight"].shape[0], bias="2.bias" in proj),
            )
        elif "weight" in proj:
            self.projection = nn.Linear(proj["weight"].shape[1], proj["weight"].shape[0], bias="bias" in proj)
        else:
            raise ValueError(f"{folder}: no text projection (text.proj.*) in the open_clip weights")
        load_state(self.projection, proj, folder)
        self.embedding_dim: int = proj["2.weight" if "0.weight" in proj else "weight"].shape[0]
        self.tokenizer = transformers.BertTokenizerFast.from_pretrained(os.fspath(folder), local_files_only=True)
        self.requires_grad_(False)
        self.eval()
        # frozen: a prompt's embedding is computed once (BERT-base per training step and sliding window otherwise)
        self._embeddings: dict[tuple[str, torch.device, torch.dtype], torch.Tensor] = {}
        self.register_load_state_dict_post_hook(_forget_embeddings)

    def train(self, mode: bool = True) -> "BiomedCLIPText":
        """Frozen: always in evaluation mode (no BERT dropout), whatever the enclosing network's mode."""
        return super().train(False)

    def _apply(self, fn, recurse: bool = True):
        _forget_embeddings(self)  # .to(), .half(): stored embeddings would be on the old device or dtype
        return super()._apply(fn, recurse)

    @torch.no_grad()
    def forward(self, prompts: list[str]) -> torch.Tensor:
        """One embedding per prompt, ``(len(prompts), embedding_dim)``; each distinct prompt is encoded once."""
        weight = self.bert.embeddings.word_embeddings.weight
        missing = sorted({p for p in prompts if (p, weight.device, weight.dtype) not in self._embeddings})
        if missing:
            for prompt, embedding in zip(missing, self._encode(missing)):
                self._embeddings[(prompt, weight.device, weight.dtype)] = embedding
        return torch.stack([self._embeddings[(p, weight.device, weight.dtype)] for p in prompts])

    def _encode(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(
            prompts, padding=True, truncation=True, max_length=self.context_length, return_tensors="pt"
        ).to(self.bert.embeddings.word_embeddings.weight.device)
        hidden = self.bert(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).last_hidden_state
        if self.pooler == "mean_pooler":
            mask = tokens["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1)
        else:
            pooled = hidden[:, 0]
        return self.projection(pooled)


class BiomedCLIPSeg(PromptedSegmenter):
    """BiomedCLIPSeg(-D), MONAI layout ``(B, 3, H, W, T) -> (B, 2, H, W, T)``, one target per prompt.

    Args:
        biomedclip: local folder of BiomedCLIP in open_clip format (see the module docstring).
        clipseg: local folder of a CLIPSeg model (e.g. ``rd64-refined``) whose decoder initialises ours (the "-D"
            variant); ``None`` starts the decoder from random weights with ``rd64-refined``'s shape.
        temporal_depth: ST-Mamba layers on the decoder's patch tokens across the clip's frames (0: frame by frame).
        default_prompt: the prompt when none is given.
        vision_heads, text_heads: attention heads when not width / 64.
        scan_backend: selective-scan backend of the ST-Mamba layers.
    """

    def __init__(
        self,
        biomedclip: str | os.PathLike,
        clipseg: str | os.PathLike | None = None,
        temporal_depth: int = 0,
        default_prompt: str = "",
        vision_heads: int | None = None,
        text_heads: int | None = None,
        scan_backend: str | None = None,
    ) -> None:
        config, state, source = load_open_clip_folder(biomedclip)
        unknown = [
            k for k in state if not (k.startswith((_VISION, _TEXT, "text.proj.")) or UNUSED_OPEN_CLIP_KEYS.match(k))
        ]
        if unknown:
            raise ValueError(f"{source}: keys outside BiomedCLIP's image and text towers: {unknown[:5]}")
        vit_config, vit_state = timm_vit_to_transformers(state, vision_heads)
        text = BiomedCLIPText(biomedclip, config, state, text_heads)
        if clipseg is None:
            decoder_config, decoder_state = clipseg_decoder_config(vit_config.hidden_size, text.embedding_dim), None
            decoder_config.vision_config.patch_size = vit_config.patch_size
        else:
            decoder_config, decoder_state = load_clipseg_decoder_state(clipseg)
            found = (decoder_config.vision_config.hidden_size, decoder_config.projection_dim)
            if found != (vit_config.hidden_size, text.embedding_dim):
                raise ValueError(
                    f"{clipseg}: CLIPSeg decoder for tokens of width {found[0]} and conditional embeddings of "
                    f"{found[1]}, but BiomedCLIP gives {vit_config.hidden_size} and {text.embedding_dim}"
                )
        decoder = PromptedDecoder(decoder_config, temporal_depth, scan_backend)
        if decoder_state is not None:
            decoder.load_weights(decoder_state, clipseg)
        super().__init__(decoder, vit_config.image_size, class_token=True, default_prompt=default_prompt)
        self.vision = require_transformers().ViTModel(vit_config, add_pooling_layer=False)
        load_state(self.vision, vit_state, source)
        self.vision.requires_grad_(False)
        self.text = text
        self.train()  # frozen encoders in evaluation mode from the start

    def train(self, mode: bool = True) -> "BiomedCLIPSeg":
        """The decoder trains; the frozen encoders stay in evaluation mode."""
        super().train(mode)
        self.vision.eval()
        return self

    def encode_image(self, frames: torch.Tensor) -> list[torch.Tensor]:
        with torch.no_grad():
            hidden = self.vision(frames, output_hidden_states=True).hidden_states
        return [hidden[layer + 1] for layer in self.decoder.extract_layers]

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return self.text(prompts)
