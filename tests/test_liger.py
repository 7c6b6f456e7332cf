"""The opt-in liger-kernel loss (`chunk_size="liger"` in dnallm.losses): same loss and gradients as the chunked
loss. The fused kernel needs liger-kernel, Triton and a CUDA device (skipped otherwise); the head-weight lookup it
relies on runs everywhere."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dnallm.losses import chunked_cross_entropy, head_weight



@pytest.fixture(autouse=True)
def _plain_qwen3_module_afterwards():
    """liger patches transformers' Qwen3 module for the whole process (`apply_liger_kernels`: its RMSNorm and MLP
    classes and its RoPE function): put it back, so that later tests' CPU models do not run Triton kernels (on a
    GPU machine tests/test_attention.py then failed: "cannot be accessed from Triton (cpu tensor?)")."""
    from transformers.models.qwen3 import modeling_qwen3

    saved = dict(vars(modeling_qwen3))
    yield
    for name, value in saved.items():
        setattr(modeling_qwen3, name, value)

def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def test_head_weight_is_what_a_peft_trainable_tokens_head_applies():
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    config = Qwen3Config(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, tie_word_embeddings=True)
    lm = get_peft_model(Qwen3ForCausalLM(config), LoraConfig(r=4, target_modules="all-linear",
                                                             trainable_token_indices=[90, 91]))
    head = lm.get_output_embeddings()
    with torch.no_grad():  # move the trainable rows away from the base rows, so a stale weight would show
        for p in head.parameters():
            if p.requires_grad:
                p.add_(1.0)
    weight, bias = head_weight(head)
    h = torch.randn(7, 32)
    torch.testing.assert_close(F.linear(h, weight, bias), head(h))
    assert weight.requires_grad  # the trainable rows get their gradient through the fused loss too
    weight.sum().backward()
    assert [n for n, p in lm.named_parameters() if p.grad is not None] == \
        [n for n, p in lm.named_parameters() if p.requires_grad and "trainable_tokens" in n]


def _needs_liger():
    if not torch.cuda.is_available():
        pytest.skip("liger's fused loss needs a CUDA device")
    pytest.importorskip("triton")
    pytest.importorskip("liger_kernel")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_loss_matches_the_chunked_loss_and_its_gradients(dtype):
    _needs_liger()
    torch.manual_seed(0)
    n, d, vocab = 3000, 256, 32000
    head = torch.nn.Linear(d, vocab, bias=False, device="cuda", dtype=dtype)
    targets = torch.randint(0, vocab, (n,), device="cuda")
    results = []
    for chunk in (1024, "liger"):
        hidden = torch.randn(n, d, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(1))
        hidden.requires_grad_(True)
        head.weight.grad = None
        loss = chunked_cross_entropy(hidden, head, targets, chunk)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), head.weight.grad.clone()))
    (l_ref, gh_ref, gw_ref), (l_fused, gh_fused, gw_fused) = results
    tol = 2e-2 if dtype == torch.bfloat16 else 1e-4
    assert torch.isfinite(l_fused) and abs(float(l_fused - l_ref)) / float(l_ref) < tol / 10
    assert _rel(gh_fused, gh_ref) < tol
    assert _rel(gw_fused, gw_ref) < tol


@pytest.mark.parametrize("compiled", [False, True])
def test_sft_liger_needs_a_cuda_device(tiny_dir, tmp_path, compiled):
    """sft.liger on a CPU model is an error naming the device, before any work, not a run without the kernels
    (with sft.compile too, where only liger's fused loss is used)."""
    from test_model import build

    from dnallm.data import load_kegg
    from dnallm.training import SFTConfig, train_sft

    with pytest.raises(ValueError, match="CUDA device"):
        train_sft(build(tiny_dir), load_kegg("train").select(range(4)), load_kegg("val").select(range(2)),
                  SFTConfig(liger=True, compile=compiled, tensorboard=False), tmp_path)
    assert not (tmp_path / "train_summary.json").exists()


def test_sft_with_liger_trains_as_the_chunked_loss_does(tiny_dir, tmp_path):
    """sft.liger on CUDA: the fused loss and liger's kernels in the LM; the run's losses follow the plain run's.
    With sft.compile too: the fused loss, compiled decoder layers and no liger kernels (compile fuses those ops)."""
    _needs_liger()
    from test_model import build
    from transformers.modeling_layers import GradientCheckpointingLayer

    from dnallm.data import load_kegg
    from dnallm.training import SFTConfig, train_sft

    train, val = load_kegg("train").select(range(16)), load_kegg("val").select(range(4))
    runs = {}
    # compiled before the kernels run: liger patches RoPE in transformers' Qwen3 module for the whole process
    for liger, compiled in ((False, False), (True, True), (True, False)):
        model = build(tiny_dir).to("cuda")
        cfg = SFTConfig(epochs=2.0, batch_size=4, evals_per_epoch=1, lr_projector=1e-2, lr_lora=1e-2, liger=liger,
                        compile=compiled, tensorboard=False, log_every=1000)
        runs[liger, compiled] = train_sft(model, train, val, cfg, tmp_path / f"liger{liger}{compiled}")
        assert model.loss_chunk_size == ("liger" if liger else 1024)
        norm = model.language_model.get_base_model().model.norm
        kernels = "liger" in type(norm).__module__ or "liger" in norm.forward.__func__.__module__
        assert kernels == (liger and not compiled)
        layers = [m for m in model.language_model.modules() if isinstance(m, GradientCheckpointingLayer)]
        assert all((layer._compiled_call_impl is not None) == compiled for layer in layers)
    plain = [h["val_loss"] for h in runs[False, False]["history"]]
    for key in ((True, False), (True, True)):
        fused = [h["val_loss"] for h in runs[key]["history"]]
        assert len(plain) == len(fused) == 2
        for a, b in zip(plain, fused):
            assert abs(a - b) / a < 1e-2, (key, plain, fused)


def test_load_model_with_liger_needs_a_cuda_device(tmp_path):
    """load_model(liger=True) on the CPU is an error naming the device (checked before the checkpoint is read)."""
    from dnallm.inference import load_model

    with pytest.raises(ValueError, match="CUDA device"):
        load_model(str(tmp_path), device="cpu", liger=True)


def test_liger_kernels_in_the_merged_lm_score_as_the_plain_lm(tiny_dir, tmp_path):
    """load_model(liger=True) on CUDA: liger's kernels in the merged LM, label probabilities as without them."""
    _needs_liger()
    from test_model import build

    from dnallm.data import load_kegg
    from dnallm.inference import load_model
    from dnallm.scoring import label_probabilities

    build(tiny_dir).save_pretrained(tmp_path / "ckpt")
    rows = load_kegg("test").select(range(4))
    questions, windows = list(rows["question"]), list(zip(rows["ref_window"], rows["variant_window"]))
    plain = label_probabilities(load_model(str(tmp_path / "ckpt"), "cuda", "float32"), questions, windows)
    model = load_model(str(tmp_path / "ckpt"), "cuda", "float32", liger=True)
    norm = model.language_model.model.norm
    assert "liger" in type(norm).__module__ or "liger" in norm.forward.__func__.__module__
    fused = label_probabilities(model, questions, windows)
    torch.testing.assert_close(fused.float().cpu(), plain.float().cpu(), atol=1e-3, rtol=1e-3)
