"""`sdpa_gqa` (dnallm.attention): the same attention as transformers' sdpa, without repeat_kv."""

import pytest
import torch
from transformers import AttentionInterface, Qwen3Config, Qwen3ForCausalLM
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from dnallm.attention import sdpa_gqa_attention_forward
from dnallm.inference import generate_answers
from dnallm.modeling import load_text_model
from dnallm.scoring import label_logprobs
from test_model import batch_for, build


class _Attn(torch.nn.Module):
    def __init__(self, groups):
        super().__init__()
        self.num_key_value_groups = groups


DEVICES = [("cpu", torch.float32)] + ([("cuda", torch.bfloat16)] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device,dtype", DEVICES)
@pytest.mark.parametrize("q_len", [1, 5])
@pytest.mark.parametrize("mask_kind", ["bool", "float", "per_head", "per_head_batch1"])
def test_folded_heads_give_sdpa_with_repeat_kv(q_len, mask_kind, device, dtype):
    torch.manual_seed(0)
    b, kv_heads, groups, kv_len, d = 3, 2, 4, 40, 64  # (CUDA's masked kernels want aligned sizes)
    q = torch.randn(b, kv_heads * groups, q_len, d, device=device, dtype=dtype)
    k, v = (torch.randn(b, kv_heads, kv_len, d, device=device, dtype=dtype) for _ in range(2))
    per_head = mask_kind.startswith("per_head")
    mask = torch.rand(1 if mask_kind.endswith("batch1") else b, kv_heads * groups if per_head else 1, q_len, kv_len,
                      device=device) > 0.3  # (a batch-1 mask broadcasts over the batch)
    mask[..., 0] = True  # every query row sees something
    if mask_kind == "float":
        mask = torch.zeros(mask.shape, device=device, dtype=dtype).masked_fill(~mask, torch.finfo(dtype).min)
    module = _Attn(groups)
    want, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=0.3)
    got, _ = sdpa_gqa_attention_forward(module, q, k, v, mask, scaling=0.3, fold=True)
    assert got.shape == want.shape == (b, q_len, kv_heads * groups, d)
    tol = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 2e-2, "rtol": 2e-2}
    torch.testing.assert_close(got, want, **tol)
    if device == "cpu":  # by default the CPU runs stock sdpa itself (the fold does not pay there)
        assert torch.equal(sdpa_gqa_attention_forward(module, q, k, v, mask, scaling=0.3)[0], want)
    # and it is not the same as attending with the heads mis-assigned to their KV heads
    wrong, _ = sdpa_gqa_attention_forward(module, q.flip(1), k, v, mask.flip(1) if per_head else mask,
                                          scaling=0.3, fold=True)
    assert not torch.allclose(wrong.flip(2), want, atol=0.1)


def _trainable_grads(model):
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.requires_grad and p.grad is not None])


@pytest.fixture
def spy():
    """`sdpa_gqa`, folding on every device, registered under another name that records each call's query length and
    whether it had a mask."""
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        calls.append((query.shape[2], attention_mask is not None))
        return sdpa_gqa_attention_forward(module, query, key, value, attention_mask, fold=True, **kwargs)

    AttentionInterface.register("sdpa_gqa_spy", recording)
    AttentionMaskInterface.register("sdpa_gqa_spy", sdpa_mask)
    return calls


def test_the_model_trains_scores_and_generates_as_with_sdpa(tiny_dir, kegg_train, spy):
    records = [kegg_train[i] for i in range(3)]
    model = build(tiny_dir)
    assert model.language_model.config.num_key_value_heads < model.language_model.config.num_attention_heads
    batch = batch_for(model, records, padding_side="left")  # padded: the masked path
    prompts = batch_for(model, records, targets=False, padding_side="left")

    def run():
        model.zero_grad()
        out = model(**batch)
        out.loss.backward()
        with torch.no_grad():
            return out.loss.detach(), _trainable_grads(model), model(**prompts).logits

    assert model.config._attn_implementation == "sdpa_gqa"  # the default for a grouped-KV LM
    model.set_attn_implementation("sdpa")
    want = run()
    model.set_attn_implementation("sdpa_gqa_spy")
    assert model.config._attn_implementation == "sdpa_gqa_spy"
    got = run()
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    assert any(q > 1 and masked for q, masked in spy)

    model.eval()
    questions = [r["question"] for r in records]
    windows = [(r["ref_window"], r["variant_window"]) for r in records]
    model.set_attn_implementation("sdpa")
    want_scores = label_logprobs(model, questions, windows, batch_size=3)
    want_texts = generate_answers(model, questions, windows, batch_size=3, max_new_tokens=16)
    model.set_attn_implementation("sdpa_gqa_spy")
    spy.clear()
    torch.testing.assert_close(label_logprobs(model, questions, windows, batch_size=3), want_scores, atol=1e-4,
                               rtol=1e-5)
    assert generate_answers(model, questions, windows, batch_size=3, max_new_tokens=16) == want_texts
    assert (1, True) in spy  # decoding steps of a padded batch went through the folded path


def test_a_grouped_kv_lm_attends_with_sdpa_gqa_unless_told_otherwise(tiny_dir, tmp_path):
    path = str(tiny_dir / "text-model")
    assert load_text_model(path).config._attn_implementation == "sdpa_gqa"
    assert load_text_model(path, attn_implementation="sdpa").config._attn_implementation == "sdpa"
    assert load_text_model(path, attn_implementation="eager").config._attn_implementation == "eager"
    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, head_dim=16)  # no grouping: nothing to fold
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    assert load_text_model(str(tmp_path)).config._attn_implementation == "sdpa"
