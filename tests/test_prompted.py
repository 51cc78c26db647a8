"""Text-prompted segmenters: BiomedCLIPSeg(-D) from local open_clip / CLIPSeg folders (offline), the CLIPSeg decoder
with its ST-Mamba stage, and the trainable EfficientNet-Lite model with a learned prompt vocabulary.

The BiomedCLIP and CLIPSeg folders are small random models written here in the published formats: timm ViT and
Hugging Face BERT keys under open_clip's prefixes, and transformers' own ``save_pretrained`` for CLIPSeg.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_ROOT, bundle_workflow, train_with_snapshot
from transformers import BertConfig, BertModel, CLIPSegConfig, CLIPSegForImageSegmentation

from vivim_monai.data import make_phantom_data
from vivim_monai.data.joint import write_prompted_datalist
from vivim_monai.networks import BiomedCLIPSeg, TextPromptedLite, parameter_groups
from vivim_monai.networks.blocks.prompted_decoder import PromptedDecoder, load_clipseg_decoder_state
from vivim_monai.networks.nets.prompted import prompts_per_clip
from vivim_monai.networks.nets.text_prompted import LearnedPromptVocabulary, prompt_words

WIDTH, DEPTH, HEADS, PATCH, IMAGE, EMBED = 32, 10, 2, 16, 32, 16
WORDS = ["thyroid", "nodule", "in", "the", "ultrasound", "image", "glottis", "carotid", "lumen"]
PROMPT = "thyroid nodule in the ultrasound image"


def _vit_state(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A timm ``vit_base_patch16``-style state dict (tiny) under open_clip's ``visual.trunk.`` prefix."""

    def rand(*shape, scale=0.05):
        return torch.randn(*shape, generator=generator) * scale

    p, tokens = "visual.trunk.", (IMAGE // PATCH) ** 2 + 1
    state = {
        p + "cls_token": rand(1, 1, WIDTH),
        p + "pos_embed": rand(1, tokens, WIDTH),
        p + "patch_embed.proj.weight": rand(WIDTH, 3, PATCH, PATCH),
        p + "patch_embed.proj.bias": rand(WIDTH),
        p + "norm.weight": 1 + rand(WIDTH),
        p + "norm.bias": rand(WIDTH),
    }
    for i in range(DEPTH):
        b = f"{p}blocks.{i}."
        state |= {
            b + "norm1.weight": 1 + rand(WIDTH),
            b + "norm1.bias": rand(WIDTH),
            b + "attn.qkv.weight": rand(3 * WIDTH, WIDTH, scale=0.2),
            b + "attn.qkv.bias": rand(3 * WIDTH),
            b + "attn.proj.weight": rand(WIDTH, WIDTH, scale=0.2),
            b + "attn.proj.bias": rand(WIDTH),
            b + "norm2.weight": 1 + rand(WIDTH),
            b + "norm2.bias": rand(WIDTH),
            b + "mlp.fc1.weight": rand(2 * WIDTH, WIDTH, scale=0.2),
            b + "mlp.fc1.bias": rand(2 * WIDTH),
            b + "mlp.fc2.weight": rand(WIDTH, 2 * WIDTH, scale=0.2),
            b + "mlp.fc2.bias": rand(WIDTH),
        }
    state["visual.head.proj.weight"] = rand(EMBED, WIDTH)
    return state


@pytest.fixture(scope="module")
def biomedclip_folder(tmp_path_factory):
    """A tiny BiomedCLIP in open_clip's published layout: config, weights with BERT's pooler, BERT vocabulary."""
    folder = tmp_path_factory.mktemp("biomedclip")
    generator = torch.Generator().manual_seed(0)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    torch.manual_seed(0)
    bert = BertModel(
        BertConfig(
            vocab_size=len(vocab),
            hidden_size=WIDTH,
            num_hidden_layers=1,
            num_attention_heads=HEADS,
            intermediate_size=2 * WIDTH,
            max_position_embeddings=64,
        )
    )
    state = _vit_state(generator)
    state |= {f"text.transformer.{k}": v for k, v in bert.state_dict().items()}
    hidden = (WIDTH + EMBED) // 2
    state["text.proj.0.weight"] = torch.randn(hidden, WIDTH, generator=generator) * 0.2
    state["text.proj.2.weight"] = torch.randn(EMBED, hidden, generator=generator) * 0.2
    state["logit_scale"] = torch.tensor(4.6)
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    config = {
        "model_cfg": {
            "embed_dim": EMBED,
            "vision_cfg": {
                "timm_model_name": "vit_base_patch16_224",
                "timm_pool": "",
                "timm_proj": "linear",
                "image_size": IMAGE,
            },
            "text_cfg": {
                "hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": 64,
            },
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    return folder


def _save_tiny_clipseg(folder, width: int) -> None:
    """A tiny CLIPSeg ``rd64-refined``-shaped model saved by transformers (decoder for width-``width`` tokens)."""
    config = CLIPSegConfig(
        text_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32},
        vision_config={
            "hidden_size": width,
            "num_hidden_layers": DEPTH,
            "num_attention_heads": HEADS,
            "intermediate_size": 2 * width,
            "image_size": IMAGE,
            "patch_size": PATCH,
        },
        projection_dim=EMBED,
        reduce_dim=8,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=16,
        extract_layers=[3, 6, 9],
        use_complex_transposed_convolution=True,
    )
    CLIPSegForImageSegmentation(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def clipseg_folder(tmp_path_factory):
    """A tiny CLIPSeg ``rd64-refined``-shaped model saved by transformers (decoder for width-32 tokens, 16-d text)."""
    folder = tmp_path_factory.mktemp("clipseg")
    torch.manual_seed(1)
    _save_tiny_clipseg(folder, WIDTH)
    return folder


@pytest.fixture()
def offline(monkeypatch):
    """No network: Hugging Face offline mode and every socket connection refused."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def _model(biomedclip_folder, clipseg_folder, **kwargs) -> BiomedCLIPSeg:
    return BiomedCLIPSeg(biomedclip_folder, clipseg_folder, vision_heads=HEADS, text_heads=HEADS, **kwargs)


def _timm_vit_hidden(state: dict[str, torch.Tensor], x: torch.Tensor) -> list[torch.Tensor]:
    """timm's ViT forward written out (patchify, class token, positions, pre-norm blocks): tokens after each block."""
    p = "visual.trunk."
    tokens = F.conv2d(x, state[p + "patch_embed.proj.weight"], state[p + "patch_embed.proj.bias"], stride=PATCH)
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([state[p + "cls_token"].expand(len(x), -1, -1), tokens], 1) + state[p + "pos_embed"]
    outputs = [tokens]
    n, length, _ = tokens.shape
    for i in range(DEPTH):
        b = f"{p}blocks.{i}."
        h = F.layer_norm(tokens, (WIDTH,), state[b + "norm1.weight"], state[b + "norm1.bias"], eps=1e-6)
        qkv = F.linear(h, state[b + "attn.qkv.weight"], state[b + "attn.qkv.bias"])
        q, k, v = qkv.reshape(n, length, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attention = torch.softmax(q @ k.transpose(-1, -2) / (WIDTH // HEADS) ** 0.5, -1) @ v
        attention = attention.transpose(1, 2).reshape(n, length, WIDTH)
        tokens = tokens + F.linear(attention, state[b + "attn.proj.weight"], state[b + "attn.proj.bias"])
        h = F.layer_norm(tokens, (WIDTH,), state[b + "norm2.weight"], state[b + "norm2.bias"], eps=1e-6)
        h = F.linear(
            F.gelu(F.linear(h, state[b + "mlp.fc1.weight"], state[b + "mlp.fc1.bias"])),
            state[b + "mlp.fc2.weight"],
            state[b + "mlp.fc2.bias"],
        )
        tokens = tokens + h
        outputs.append(tokens)
    return outputs


def test_open_clip_vit_is_mapped_onto_transformers(biomedclip_folder, clipseg_folder, offline):
    """The hidden states fed to the decoder are timm's blocks 4, 7 and 10 computed by hand from the same file."""
    model = _model(biomedclip_folder, clipseg_folder)
    state = torch.load(biomedclip_folder / "open_clip_pytorch_model.bin", weights_only=True)
    frames = torch.randn(2, 3, IMAGE, IMAGE)
    reference = _timm_vit_hidden(state, frames)
    for ours, layer in zip(model.encode_image(frames), (3, 6, 9)):
        torch.testing.assert_close(ours, reference[layer + 1], atol=2e-5, rtol=1e-4)


def test_text_tower_is_bert_cls_then_mlp_projection(biomedclip_folder, clipseg_folder, offline):
    model = _model(biomedclip_folder, clipseg_folder)
    state = torch.load(biomedclip_folder / "open_clip_pytorch_model.bin", weights_only=True)
    # WordPiece ids read off the folder's vocab.txt by hand: [CLS] prompt words [SEP]
    ids = torch.tensor([[2, *(5 + WORDS.index(w) for w in PROMPT.split()), 3]])
    assert model.text.tokenizer([PROMPT.upper()], return_tensors="pt")["input_ids"].tolist() == ids.tolist()
    bert = BertModel(
        BertConfig(
            vocab_size=5 + len(WORDS),
            hidden_size=WIDTH,
            num_hidden_layers=1,
            num_attention_heads=HEADS,
            intermediate_size=2 * WIDTH,
            max_position_embeddings=64,
        )
    )
    bert.load_state_dict(
        {k[len("text.transformer.") :]: v for k, v in state.items() if k.startswith("text.transformer.")}
    )
    cls = bert.eval()(input_ids=ids).last_hidden_state[:, 0]
    expected = F.linear(F.gelu(F.linear(cls, state["text.proj.0.weight"])), state["text.proj.2.weight"])
    torch.testing.assert_close(model.encode_prompts([PROMPT]), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(model.encode_prompts([PROMPT]), model.encode_prompts(["glottis"]))


def test_decoder_is_clipseg_decoder_without_temporal_stage(clipseg_folder):
    """Same outputs as transformers' own CLIPSegDecoder.forward on the weights of a saved CLIPSeg."""
    reference = CLIPSegForImageSegmentation.from_pretrained(clipseg_folder, local_files_only=True).decoder.eval()
    config, state = load_clipseg_decoder_state(clipseg_folder)
    ours = PromptedDecoder(config)
    ours.load_weights(state, clipseg_folder)
    activations = [torch.randn(3, 5, WIDTH) for _ in range(3)]
    conditional = torch.randn(3, EMBED)
    expected = reference(activations, conditional).logits
    torch.testing.assert_close(ours.eval()(activations, conditional, 1, True)[:, 0], expected, atol=1e-5, rtol=1e-4)


def test_biomedclipseg_offline_end_to_end(biomedclip_folder, clipseg_folder, offline):
    model = _model(biomedclip_folder, clipseg_folder, default_prompt=PROMPT)
    clip = torch.randn(1, 3, 40, 48, 3)
    out = model.train()(clip)
    assert out.shape == (1, 2, 40, 48, 3)
    torch.testing.assert_close(out[:, 0], -out[:, 1])  # (-l/2, l/2): the target's softmax is CLIPSeg's sigmoid(l)
    torch.testing.assert_close(model(clip, PROMPT), out)  # the default prompt
    assert not torch.allclose(model(clip, "glottis"), out)  # FiLM conditions on the prompt
    out[:, 1].sum().backward()
    trainable = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trainable and all(n.startswith("decoder.") for n in trainable)
    assert not any(p.requires_grad for p in [*model.vision.parameters(), *model.text.parameters()])
    assert not model.vision.training and not model.text.training  # frozen encoders stay in eval mode


def test_biomedclipseg_without_clipseg_starts_a_random_decoder(biomedclip_folder, offline):
    model = BiomedCLIPSeg(biomedclip_folder, None, vision_heads=HEADS, text_heads=HEADS)
    assert model.decoder.config.reduce_dim == 64 and model.decoder.config.use_complex_transposed_convolution
    assert model(torch.randn(1, 3, 32, 32, 2), "nodule").shape == (1, 2, 32, 32, 2)


def test_missing_files_are_named(tmp_path, biomedclip_folder):
    with pytest.raises(FileNotFoundError, match="open_clip_config.json.*open_clip_pytorch_model.bin.*vocab.txt"):
        BiomedCLIPSeg(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="missing model.safetensors or pytorch_model.bin"):
        BiomedCLIPSeg(biomedclip_folder, tmp_path, vision_heads=HEADS, text_heads=HEADS)


def test_clipseg_of_another_width_is_refused(biomedclip_folder, tmp_path):
    _save_tiny_clipseg(tmp_path, 24)
    with pytest.raises(ValueError, match="width 24.*BiomedCLIP gives 32"):
        BiomedCLIPSeg(biomedclip_folder, tmp_path, vision_heads=HEADS, text_heads=HEADS)


def test_unknown_vit_keys_are_refused(biomedclip_folder, tmp_path):
    for name in ("open_clip_config.json", "vocab.txt"):
        (tmp_path / name).write_text((biomedclip_folder / name).read_text())
    state = torch.load(biomedclip_folder / "open_clip_pytorch_model.bin", weights_only=True)
    state["visual.trunk.blocks.0.ls1.gamma"] = torch.ones(WIDTH)  # layer scale: another ViT design
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(ValueError, match="ls1.gamma"):
        BiomedCLIPSeg(tmp_path, vision_heads=HEADS, text_heads=HEADS)


@pytest.mark.parametrize("frames", [1, 4])
def test_temporal_stage_mixes_frames_only_when_present(biomedclip_folder, clipseg_folder, frames):
    torch.manual_seed(0)
    clip = torch.randn(1, 3, IMAGE, IMAGE, frames)
    changed = clip.clone()
    changed[..., 0] += 1.0
    for depth in (0, 1):
        model = _model(biomedclip_folder, clipseg_folder, temporal_depth=depth).eval()
        with torch.no_grad():
            before, after = model(clip, PROMPT), model(changed, PROMPT)
        assert before.shape == (1, 2, IMAGE, IMAGE, frames)
        if frames > 1:
            assert torch.allclose(before[..., 1:], after[..., 1:]) == (depth == 0)


def test_prompts_per_clip():
    assert prompts_per_clip(None, 2, "a") == ["a", "a"]
    assert prompts_per_clip("b", 3, "a") == ["b"] * 3
    assert prompts_per_clip(["c"], 2, "a") == ["c", "c"]  # the collated field of a batch of one
    assert prompts_per_clip(["c", "d"], 2, "a") == ["c", "d"]
    with pytest.raises(ValueError, match="3 prompts for a batch of 2"):
        prompts_per_clip(["c", "d", "e"], 2, "a")
    with pytest.raises(TypeError):
        prompts_per_clip([1, 2], 2, "a")


def test_learned_prompt_vocabulary():
    vocabulary = LearnedPromptVocabulary(["Carotid artery lumen.", "glottis, endoscopy"], embedding_dim=8)
    assert vocabulary.words == ["artery", "carotid", "endoscopy", "glottis", "lumen"]
    assert prompt_words("Thyroid NODULE!") == ["thyroid", "nodule"]
    with torch.no_grad():
        same = vocabulary(["carotid artery lumen", "LUMEN artery, carotid"])
        unknown = vocabulary(["thyroid", "nodule kidney"])  # unknown words share one vector
        empty = vocabulary(["", "  ,."])
    torch.testing.assert_close(same[0], same[1])  # a bag of words: order, case, punctuation ignored
    torch.testing.assert_close(unknown[0], unknown[1])
    torch.testing.assert_close(empty[0], empty[1])
    assert not torch.allclose(same[0], empty[0])
    with pytest.raises(ValueError, match="at least one prompt"):
        LearnedPromptVocabulary(["", "!"])


def test_text_prompted_lite_trains_all_but_uses_encoder_groups():
    torch.manual_seed(0)
    model = TextPromptedLite(["thyroid nodule", "glottis"], pretrained=False, image_size=64, temporal_depth=1)
    clip = torch.randn(2, 3, 50, 70, 3)
    out = model(clip, ["glottis", "thyroid nodule"])
    assert out.shape == (2, 2, 50, 70, 3)
    assert not torch.allclose(out[:1], model(clip[:1], "thyroid nodule"))  # the prompt reaches the output
    out[:, 1].sum().backward()
    for part in (model.encoder, model.decoder, model.prompt_encoder):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    groups = parameter_groups(model, encoder_learning_rate=1e-5)
    assert len(groups) == 2 and groups[0]["lr"] == 1e-5
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    with pytest.raises(ValueError, match="multiple of 32"):
        TextPromptedLite(["a"], pretrained=False, image_size=100)


@pytest.mark.integration
def test_biomedclipseg_trains_through_the_bundle_offline(
    biomedclip_folder, clipseg_folder, offline, tmp_path, monkeypatch
):
    """``configs/biomedclipseg.json`` on the joint prompted datalist: the decoder learns, both encoders stay."""
    monkeypatch.setenv("BIOMEDCLIP_DIR", str(biomedclip_folder))
    monkeypatch.setenv("CLIPSEG_DIR", str(clipseg_folder))
    source = make_phantom_data(tmp_path, cases=2, frames=3, folds=2, height=48, width=48)
    document = json.loads(source.read_text())
    for entry in document["training"]:
        entry["label_format"] = "binary"
    source.write_text(json.dumps(document))
    overlays = [str(REPO_ROOT / "configs" / name) for name in ("text_prompted.json", "biomedclipseg.json")]
    prompts = json.loads((REPO_ROOT / "configs" / "text_prompted.json").read_text())["dataset_prompts"]
    write_prompted_datalist(tmp_path / "joint.json", {"carotid": source, "vtus": source}, prompts)
    train = bundle_workflow(
        "train",
        ["train.json", *overlays],
        bundle_root=str(tmp_path),
        datalist=str(tmp_path / "joint.json"),
        fold=0,
        epochs=1,
        batch_size=1,
        clip_length=2,
        spatial_size=[IMAGE, IMAGE],
        **{"network_def#vision_heads": HEADS, "network_def#text_heads": HEADS},
    )
    network, before, after = train_with_snapshot(train)
    assert all(torch.equal(after[k], v) for k, v in before.items() if k.startswith(("vision.", "text.")))
    assert not torch.equal(after["decoder.decoder.film_mul.weight"], before["decoder.decoder.film_mul.weight"])
    assert (tmp_path / "models" / "model.pt").is_file()


def test_untrained_decoder_starts_with_moderate_logits():
    """A decoder trained from scratch starts from PyTorch's initialisation (transformers leaves FiLM and the
    upsampling at N(0, 1): logits in the hundreds, a Dice-CE loss near 200 on the first step)."""
    torch.manual_seed(0)
    model = TextPromptedLite(["thyroid nodule"], pretrained=False, image_size=64)
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64, 2))
    assert logits.abs().max() < 5


def test_networks_import_without_transformers_and_prompted_ones_name_it():
    """MONAI Label's environment has no transformers: the package and the default network must still load."""
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "import vivim_monai.networks as n\n"
        "from monai.networks.nets import FlexibleUNet\n"
        "FlexibleUNet(3, 2, backbone='efficientnet-lite0', pretrained=False)\n"
        "try:\n"
        "    n.TextPromptedLite(['a'], pretrained=False)\n"
        "except ImportError as err:\n"
        "    print('ERR', err)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ERR the text-prompted networks are built on the 'transformers' package" in done.stdout


def test_text_tower_encodes_each_prompt_once_until_its_weights_change(biomedclip_folder, clipseg_folder, offline):
    model = _model(biomedclip_folder, clipseg_folder)
    calls = []
    encode = model.text._encode
    model.text._encode = lambda prompts: calls.append(list(prompts)) or encode(prompts)
    first = model.encode_prompts([PROMPT, "glottis", PROMPT])
    again = model.encode_prompts(["glottis", PROMPT])
    assert calls == [["glottis", PROMPT]]
    torch.testing.assert_close(again, first[[1, 0]])
    torch.testing.assert_close(first[0], first[2])
    state = model.state_dict()
    state["text.bert.embeddings.word_embeddings.weight"] = state["text.bert.embeddings.word_embeddings.weight"] * 2
    model.load_state_dict(state)  # e.g. the bundle's CheckpointLoader
    changed = model.encode_prompts([PROMPT])
    assert len(calls) == 2 and not torch.allclose(changed[0], first[0])
    model.double()
    assert model.encode_prompts([PROMPT]).dtype == torch.float64 and len(calls) == 3
