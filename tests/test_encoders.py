import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import MixtralForCausalLM

from dnallm.encoders import ENCODERS, LoadingError, build_encoder, genos_config
from dnallm.encoders.cache import EmbeddingCache
from dnallm.encoders.genos import build_base_tokenizer

WINDOWS = ["ACGT" * 8, "TTGCA" * 6 + "NN"]


@pytest.fixture
def tiny_genos(tmp_path):
    torch.manual_seed(0)
    cfg = genos_config("1.2b", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2)
    model = MixtralForCausalLM(cfg)
    model.save_pretrained(tmp_path)
    build_base_tokenizer().save_pretrained(tmp_path)
    return tmp_path, model


def test_published_genos_layouts():
    small, big = genos_config("1.2b"), genos_config("10b")
    assert (small.hidden_size, small.vocab_size, small.intermediate_size) == (1024, 128, 4096)
    assert (big.hidden_size, big.vocab_size, big.intermediate_size) == (4096, 256, 8192)
    for c in (small, big):
        assert (c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (12, 16, 8)
        assert (c.num_local_experts, c.num_experts_per_tok, c.rms_norm_eps) == (8, 2, 1e-5)
        assert c.rope_parameters["rope_theta"] == 5e7


def test_genos_save_load_gives_identical_hidden_states(tiny_genos):
    path, model = tiny_genos
    enc = build_encoder("genos", str(path), layer=-1)
    hidden, mask = enc.encode(WINDOWS)
    assert hidden.shape == (2, 32, 32) and mask.sum(1).tolist() == [32, 32]
    ids = enc.tokenize(WINDOWS)
    expected = model.model(**ids, output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)
    again, _ = build_encoder("genos", str(path)).encode(WINDOWS)
    assert torch.equal(hidden, again)


def test_one_token_per_base_and_layer_choice(tiny_genos):
    path, _ = tiny_genos
    enc = build_encoder("genos", str(path), layer=1)
    ids = enc.tokenize(["ACGTN"])["input_ids"][0].tolist()
    assert len(ids) == 5 and len(set(ids)) == 5
    h1, _ = enc.encode(WINDOWS)
    h_last, _ = build_encoder("genos", str(path), layer=-1).encode(WINDOWS)
    assert not torch.equal(h1, h_last)


def test_a_layer_outside_the_hidden_states_is_an_error(tiny_genos):
    """2 blocks: hidden states 0 (embeddings), 1, 2. Layer 3 was read modulo 3 as the embeddings, layer 5 as 2."""
    from dnallm.encoders.evo2 import layer_name

    path, _ = tiny_genos
    for layer in (-3, 0, 2):
        assert build_encoder("genos", str(path), layer=layer).layer == layer
    for layer in (3, 5, -4):
        with pytest.raises(ValueError, match=rf"layer {layer} is out of range: the encoder has 3 hidden states, so "
                                             r"layers -3\.\.2"):
            build_encoder("genos", str(path), layer=layer)
    with pytest.raises(ValueError, match=r"Evo2 layer 30 is out of range: evo2_1b_base has 25 blocks \(-25\.\.24\)"):
        layer_name(30, "evo2_1b_base", 25)


def test_encoder_is_frozen(tiny_genos):
    enc = build_encoder("genos", str(tiny_genos[0]))
    enc.train()
    assert not enc.training and not enc.model.training
    assert not any(p.requires_grad for p in enc.parameters())


def test_missing_weight_is_an_error(tiny_genos):
    path, _ = tiny_genos
    weights = load_file(path / "model.safetensors")
    del weights["model.layers.1.self_attn.q_proj.weight"]
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="missing weights.*q_proj"):
        build_encoder("genos", str(path))


def test_generic_hf_encoder_loads_a_masked_lm_checkpoint_without_its_pooler(tmp_path):
    """AutoModel builds BertModel's pooler, which a BertForMaskedLM (DNABERT-style) checkpoint lacks: it was refused
    as a missing weight, though per-position states never pass through it. Other missing weights still refuse."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=128, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                     pad_token_id=0)
    mlm = BertForMaskedLM(cfg).eval()
    mlm.save_pretrained(tmp_path)
    build_base_tokenizer().save_pretrained(tmp_path)
    enc = build_encoder("hf", str(tmp_path))
    assert enc.model.pooler is None
    hidden, mask = enc.encode(WINDOWS[:1])
    ids = enc.tokenize(WINDOWS[:1])
    expected = mlm.bert(**ids).last_hidden_state
    torch.testing.assert_close(hidden[0, : int(mask.sum())], expected[0][ids["attention_mask"][0].bool()][: int(mask.sum())])
    weights = load_file(tmp_path / "model.safetensors")
    del weights[next(k for k in weights if "encoder.layer.0.attention.self.query.weight" in k)]
    save_file(weights, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="missing weights.*query"):
        build_encoder("hf", str(tmp_path))


def test_unexpected_weight_is_an_error(tiny_genos):
    path, _ = tiny_genos
    weights = load_file(path / "model.safetensors")
    weights["model.layers.0.extra.weight"] = torch.zeros(2)
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(LoadingError, match="unexpected weights"):
        build_encoder("genos", str(path))


def test_generic_hf_encoder_loads_a_causal_lm_checkpoint_as_base_model(tiny_genos):
    path, model = tiny_genos
    enc = build_encoder("hf", str(path), layer=-1)
    hidden, mask = enc.encode(WINDOWS[:1])
    expected = model.model(**enc.tokenize(WINDOWS[:1]), output_hidden_states=True).hidden_states[-1]
    torch.testing.assert_close(hidden, expected)
    assert mask.all()


def test_unknown_encoder_type():
    assert set(ENCODERS) >= {"genos", "hf"}
    with pytest.raises(ValueError, match="unknown encoder type 'evo9'"):
        build_encoder("evo9", "x")


def test_embedding_cache_encodes_each_distinct_window_once(tiny_genos):
    enc = build_encoder("genos", str(tiny_genos[0]))
    calls = []
    original = enc.encode
    enc.encode = lambda ws: calls.append(list(ws)) or original(ws)
    cache = EmbeddingCache(enc)
    cache.add(WINDOWS + WINDOWS)
    hidden, mask = cache.lookup([WINDOWS[1], WINDOWS[0], WINDOWS[1]])
    assert sum(len(c) for c in calls) == 2
    direct, _ = original([WINDOWS[1]])
    torch.testing.assert_close(hidden[0], direct[0])
    assert torch.equal(hidden[0], hidden[2])


@pytest.mark.parametrize("layer", [0, 1, 2, -1, -2])
def test_a_middle_layer_stops_the_stack_there_and_equals_hidden_states(tiny_genos, layer):
    path, model = tiny_genos
    enc = build_encoder("genos", str(path), layer=layer)
    ran = []
    hooks = [b.register_forward_hook(lambda m, a, o, i=i: ran.append(i)) for i, b in enumerate(enc.model.layers)]
    hidden, _ = enc.encode(WINDOWS)
    for h in hooks:
        h.remove()
    expected = model.model(**enc.tokenize(WINDOWS), output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(hidden, expected, rtol=0, atol=0)
    # the blocks above the chosen layer never run (2 blocks; layer 2 = -1 is the normed output after both)
    assert ran == list(range(layer % 3 if layer % 3 < 2 else 2))
