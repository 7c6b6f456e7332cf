"""Nucleotide Transformer, HyenaDNA and Evo2 encoders, and the positions rule they share with the processor.

What runs here: NT on tiny models of the real architectures (transformers' Esm classes, NT v2's gated FFN),
saved and loaded through the real loading path, with an NT-vocabulary EsmTokenizer configured as the hub's
(no EOS). HyenaDNA's architecture is hub remote code, not installable here: its tokenizer is tested, and the
left-padding/positions logic through the generic path on a tiny causal model of an installable architecture.
Evo2 needs CUDA and the `evo2` package: on CPU, the clear error and its byte-level tokenizer.
"""

import inspect
import json
import random

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, EsmConfig, EsmForMaskedLM, EsmTokenizer, MixtralForCausalLM

from helpers import nt_v2_config, nt_vocab
from dnallm.encoders import ENCODERS, LoadingError, build_encoder, genos_config
from dnallm.encoders.base import dna_positions, pack_positions
from dnallm.encoders.evo2 import DEFAULT_LAYERS as EVO2_LAYERS
from dnallm.encoders.evo2 import build_evo2_tokenizer, layer_name, resolve_model
from dnallm.encoders.genos import build_base_tokenizer
from dnallm.encoders.hyenadna import HUB_IDS as HYENA_HUB_IDS
from dnallm.encoders.hyenadna import build_hyenadna_tokenizer, load_hyenadna_tokenizer
from dnallm.encoders.nt import HUB_IDS as NT_HUB_IDS
from dnallm.encoders.nt import GatedFFN, use_glu_ffn
from dnallm.processing import DNALLMProcessor
from dnallm.tokenization import BUNDLED_ALIAS, load_text_tokenizer
from projectors import build_projector

rng = random.Random(0)
W1024 = "".join(rng.choice("ACGT") for _ in range(1024))
NT_WINDOWS = [W1024, W1024[:1000] + "N" + W1024[1000:1017], "ATCGAATNGGCGATGCAC"]
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)


@pytest.fixture(scope="module")
def text_tokenizer():
    return load_text_tokenizer(BUNDLED_ALIAS)


def save_nt_tokenizer(path):
    """An EsmTokenizer over NT's 4107-token vocabulary, configured as the hub's (no EOS: only <cls> is added)."""
    (path / "vocab.txt").write_text("\n".join(nt_vocab()))
    EsmTokenizer(str(path / "vocab.txt"), eos_token=None, model_max_length=2048).save_pretrained(path)


def make_tiny_nt(path, version: str):
    """A tiny NT v2 (rotary, gated bias-free FFN) or v1 (absolute positions, plain ESM FFN) masked LM on disk."""
    torch.manual_seed(0)
    if version == "v2":
        cfg = nt_v2_config(**TINY)
        model = EsmForMaskedLM(cfg)
        use_glu_ffn(model.esm, cfg)
    else:
        cfg = EsmConfig(vocab_size=4105, pad_token_id=1, mask_token_id=2, max_position_embeddings=1002,
                        position_embedding_type="absolute", emb_layer_norm_before=False, token_dropout=False,
                        tie_word_embeddings=False, **TINY)
        model = EsmForMaskedLM(cfg)
    model.eval().save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    if version == "v2":  # as on the hub: remote code named, but the files are not needed
        config["auto_map"] = {"AutoConfig": "esm_config.EsmConfig", "AutoModelForMaskedLM": "modeling_esm.EsmForMaskedLM"}
        (path / "config.json").write_text(json.dumps(config))
    save_nt_tokenizer(path)
    return path, model, version


@pytest.fixture(params=["v2", "v1"])
def tiny_nt(request, tmp_path):
    return make_tiny_nt(tmp_path, request.param)


def test_nt_tokens_are_six_mers_after_cls(tmp_path):
    save_nt_tokenizer(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok(W1024)["input_ids"]
    tokens = tok.convert_ids_to_tokens(ids)
    assert len(ids) == 175 and tokens[0] == "<cls>"
    assert [len(t) for t in tokens[1:]] == [6] * 170 + [1] * 4 and "".join(tokens[1:]) == W1024
    # an N breaks the 6-mer grid as in NT's own tokenizer: leftover bases become single-nucleotide tokens
    assert tok.convert_ids_to_tokens(tok(NT_WINDOWS[2])["input_ids"]) == \
        ["<cls>", "ATCGAA", "T", "N", "GGCGAT", "G", "C", "A", "C"]
    mask = dna_positions(tok, torch.tensor([ids]), torch.ones(1, len(ids)))
    assert mask.sum() == 174 and not mask[0, 0]


def test_nt_save_load_gives_identical_hidden_states(tiny_nt):
    path, model, version = tiny_nt
    enc = build_encoder("nt", str(path))
    assert isinstance(enc.model.encoder.layer[0].intermediate, GatedFFN) == (version == "v2")
    assert enc.fingerprint["gated_ffn"] == (version == "v2") and enc.hidden_size == 32
    hidden, mask = enc.encode(NT_WINDOWS)
    batch = enc.tokenize(NT_WINDOWS)
    assert batch["input_ids"][:, 0].eq(enc.tokenizer.cls_token_id).all()
    expected = model.esm(**batch, output_hidden_states=True).hidden_states[-1]
    keep = dna_positions(enc.tokenizer, batch["input_ids"], batch["attention_mask"])
    # 1024 bp: 170 + 4; 1000 bp + N + 17 bp: (166 + 4) + 1 + (2 + 5); the 18 bp example: 8
    assert mask.sum(1).tolist() == keep.sum(1).tolist() == [174, 178, 8]
    for i in range(len(NT_WINDOWS)):
        n = int(keep[i].sum())
        torch.testing.assert_close(hidden[i, :n], expected[i][keep[i]], rtol=0, atol=0)
        assert mask[i, :n].all() and not mask[i, n:].any() and hidden[i, n:].eq(0).all()


def test_nt_positions_match_processor_and_projector(tiny_nt, text_tokenizer):
    path, _, _ = tiny_nt
    enc = build_encoder("nt", str(path))
    hidden, mask = enc.encode(NT_WINDOWS)
    for stride in (1, 32):
        proc = DNALLMProcessor(text_tokenizer, enc.tokenizer, dna_stride=stride,
                               dna_add_special_tokens=enc.add_special_tokens)
        projector = build_projector("linear", enc.hidden_size, 8, stride=stride)
        _, tokens_mask = projector(hidden, mask)
        assert tokens_mask.sum(1).tolist() == [proc.num_dna_tokens(w) for w in NT_WINDOWS]
    assert DNALLMProcessor(text_tokenizer, enc.tokenizer, dna_add_special_tokens=True).num_dna_tokens(W1024) == 174


def test_nt_missing_weight_is_an_error(tiny_nt):
    path, _, _ = tiny_nt
    weights = load_file(path / "model.safetensors")
    del weights["esm.encoder.layer.1.intermediate.dense.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="missing weights.*intermediate"):
        build_encoder("nt", str(path))


def test_nt_v2_checkpoint_does_not_fit_plain_esm(tmp_path):
    path, _, _ = make_tiny_nt(tmp_path, "v2")
    with pytest.raises(RuntimeError, match="mismatched"):  # intermediate [2 x 48, 32] vs [48, 32]
        build_encoder("hf", str(path))


# ---- the positions rule: packing and left padding ----

def test_pack_positions_moves_real_positions_to_the_front():
    hidden = torch.arange(12.0).view(2, 6, 1)
    mask = torch.tensor([[0, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1]]).bool()  # a CLS + right pad; left pad
    packed, packed_mask = pack_positions(hidden, mask)
    assert packed_mask.tolist() == [[True, True, True, False], [True] * 4]
    assert packed[..., 0].tolist() == [[1, 2, 3, 0], [8, 9, 10, 11]]


@pytest.fixture
def tiny_causal_left_padded(tmp_path):
    """A tiny causal LM of an installable architecture (Mixtral/Genos layout) whose tokenizer pads on the left."""
    torch.manual_seed(0)
    model = MixtralForCausalLM(genos_config("1.2b", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                            num_attention_heads=4, num_key_value_heads=2))
    model.save_pretrained(tmp_path)
    tok = build_base_tokenizer()
    tok.padding_side = "left"
    tok.save_pretrained(tmp_path)
    return tmp_path


def test_left_padding_keeps_only_real_positions(tiny_causal_left_padded, text_tokenizer):
    enc = build_encoder("hf", str(tiny_causal_left_padded))
    windows = ["ACGTACGTAC" * 4, "TTGCAN" * 3, "GATTACA"]
    batch = enc.tokenize(windows)
    assert enc.tokenizer.padding_side == "left" and batch["attention_mask"][:, 0].tolist() == [1, 0, 0]
    hidden, mask = enc.encode(windows)
    assert mask.sum(1).tolist() == [len(w) for w in windows]
    proc = DNALLMProcessor(text_tokenizer, enc.tokenizer, dna_stride=4)
    _, tokens_mask = build_projector("mlp", enc.hidden_size, 8, stride=4)(hidden, mask)
    assert tokens_mask.sum(1).tolist() == [proc.num_dna_tokens(w) for w in windows]
    for i, w in enumerate(windows):  # the same states as the window encoded alone, unpadded
        alone, _ = enc.encode([w])
        torch.testing.assert_close(hidden[i, : len(w)], alone[0], rtol=1e-4, atol=1e-5)


# ---- HyenaDNA ----

def test_hyenadna_tokenizer_ids_padding_and_reload(tmp_path, text_tokenizer):
    tok = build_hyenadna_tokenizer()
    assert tok("ACGTN")["input_ids"] == [7, 8, 9, 10, 11] and tok.pad_token_id == 4
    assert tok("ACGTN", add_special_tokens=True)["input_ids"] == [7, 8, 9, 10, 11]
    batch = tok(["ACGTN", "AC"], padding=True)
    assert batch["input_ids"][1] == [7, 8, 4, 4, 4] and batch["attention_mask"][1] == [1, 1, 0, 0, 0]
    # the checkpoint's tokenizer_config.json gives the characters; padding stays on the right
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(
        {"characters": ["A", "C", "G", "T", "N"], "model_max_length": 1026, "padding_side": "left"}))
    loaded = load_hyenadna_tokenizer(str(tmp_path))
    assert loaded.padding_side == "right" and loaded.model_max_length == 1026
    assert loaded("GATTACA")["input_ids"] == [9, 7, 10, 10, 7, 8, 7]
    # saved with a processor, it reloads without remote code
    loaded.save_pretrained(tmp_path / "dna_tokenizer")
    again = AutoTokenizer.from_pretrained(tmp_path / "dna_tokenizer")
    assert again("GATTACA")["input_ids"] == [9, 7, 10, 10, 7, 8, 7] and again.padding_side == "right"
    assert DNALLMProcessor(text_tokenizer, again, dna_stride=4).num_dna_tokens("GATTACA") == 2
    assert "hyenadna-large-1m" in HYENA_HUB_IDS


# ---- Evo2 ----

def test_evo2_needs_cuda():
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(RuntimeError, match="Evo2 needs a CUDA GPU.*evo2"):
        build_encoder("evo2", "evo2-1b")


def test_evo2_tokenizer_is_byte_level_and_layer_names(text_tokenizer):
    tok = build_evo2_tokenizer()
    for w in ("ACGTN", "acgtnACGT"):
        assert tok(w)["input_ids"] == list(w.encode())
    batch = tok(["ACGT", "A"], padding=True)
    assert batch["input_ids"][1] == [65, 1, 1, 1] and tok.pad_token_id == 1
    assert DNALLMProcessor(text_tokenizer, tok, dna_stride=1).num_dna_tokens("ACGTN") == 5
    assert EVO2_LAYERS["evo2_1b_base"] == "blocks.20.mlp.l3"
    assert layer_name(None, "evo2_1b_base", 25) == layer_name(-5, "evo2_1b_base", 25) == "blocks.20.mlp.l3"
    assert resolve_model("evo2-1b") == resolve_model("arcinstitute/evo2_1b_base") == ("evo2_1b_base", None)
    assert resolve_model("/ckpt/evo2_1b_base.pt") == ("evo2_1b_base", "/ckpt/evo2_1b_base.pt")



class _VortexConfig(dict):
    """vortex's `dotdict`: a missing key reads as None (dict.get), as StripedHyena's config does."""
    __getattr__ = dict.get


def test_evo2_encoder_wraps_a_striped_hyena_layout():
    """Our Evo2 wrapper around a module with StripedHyena's layout (`blocks.N.mlp.l3`, a vortex config with
    `num_layers` and no `num_hidden_layers`, no `layers` stack): the `evo2` package itself needs CUDA and
    flash-attn and cannot be installed here. The generic hidden-state count once ran for Evo2's module-name layer
    and failed on the missing `num_hidden_layers` (None + 1) before any weight was read."""
    from types import SimpleNamespace

    from dnallm.encoders.evo2 import Evo2Encoder

    class StripedHyenaLayout(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.config = _VortexConfig(num_layers=25, hidden_size=8)
            self.blocks = torch.nn.ModuleList(torch.nn.Module() for _ in range(25))
            for block in self.blocks:
                block.mlp = torch.nn.Module()
                block.mlp.l3 = torch.nn.Linear(8, 8)

    encoder = Evo2Encoder(SimpleNamespace(model=StripedHyenaLayout()), None, "evo2-1b")
    assert encoder.layer == "blocks.20.mlp.l3" and encoder.hidden_size == 8
    assert Evo2Encoder(SimpleNamespace(model=StripedHyenaLayout()), -1, "evo2-1b").layer == "blocks.24.mlp.l3"
    with pytest.raises(ValueError, match="Evo2 layer 25 is out of range"):
        Evo2Encoder(SimpleNamespace(model=StripedHyenaLayout()), 25, "evo2-1b")

def test_registry_and_defaults():
    assert set(ENCODERS) == {"genos", "hf", "nt", "hyenadna", "evo2"}
    nt_id = "InstaDeepAI/nucleotide-transformer-v2-500m-multi-species"
    assert NT_HUB_IDS["nt-v2-500m"] == nt_id
    # the last hidden layer (after the final layer norm), as BioReason takes it
    assert all(inspect.signature(ENCODERS[k].from_pretrained).parameters["layer"].default == -1
               for k in ("nt", "hyenadna"))
    assert HYENA_HUB_IDS["hyenadna-large-1m"] == "LongSafari/hyenadna-large-1m-seqlen-hf"


@pytest.mark.parametrize("layer", [1, -1])
def test_nt_middle_layer_equals_hidden_states(tiny_nt, layer):
    path, model, _ = tiny_nt
    enc = build_encoder("nt", str(path), layer=layer)
    hidden, mask = enc.encode(NT_WINDOWS)
    batch = enc.tokenize(NT_WINDOWS)
    expected = model.esm(**batch, output_hidden_states=True).hidden_states[layer]
    keep = dna_positions(enc.tokenizer, batch["input_ids"], batch["attention_mask"])
    for i in range(len(NT_WINDOWS)):
        n = int(keep[i].sum())
        torch.testing.assert_close(hidden[i, :n], expected[i][keep[i]], rtol=0, atol=0)
