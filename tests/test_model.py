import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GenerationMixin

from dnallm.configuration import DNALLMConfig
from dnallm.encoders import LoadingError
from dnallm.modeling import PROJECTOR_FILE, DNALLMForConditionalGeneration
from dnallm.processing import DNALLMProcessor


def build(tiny_dir, **overrides):
    torch.manual_seed(0)
    cfg = DNALLMConfig(dna_config={"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
                       text_model_name_or_path=str(tiny_dir / "text-model"), projector_type="mlp",
                       projector_stride=32, lora_r=4, lora_alpha=8, lora_dropout=0.0, **overrides)
    model = DNALLMForConditionalGeneration.build(cfg)
    model.add_lora()
    return model


def batch_for(model, records, targets=True, padding_side="right"):
    proc = model.processor
    return proc([proc.prompt(r["question"]) for r in records], [[r["ref_window"], r["variant_window"]] for r in records],
                targets=[proc.target(r["reasoning"], r["label"]) for r in records] if targets else None,
                padding_side=padding_side)


@pytest.fixture
def records(kegg_train):
    return [kegg_train[i] for i in range(3)]


def test_processor_expands_each_window_to_its_projected_token_count(tiny_dir, records):
    model = build(tiny_dir)
    proc = model.processor
    b = batch_for(model, records, targets=False)
    pad = proc.tokenizer.convert_tokens_to_ids(proc.dna_pad_token)
    start = proc.tokenizer.convert_tokens_to_ids(proc.dna_start_token)
    assert ((b["input_ids"] == pad).sum(1) == 2 * 1024 // 32).all()  # ref + variant, 32 tokens each
    assert ((b["input_ids"] == start).sum(1) == 2).all()
    assert b["dna_input_ids"].shape == (6, 1024)  # windows in order: ex0 ref, ex0 var, ex1 ref, ...
    with pytest.raises(ValueError, match="example 0: prompt has 2 DNA placeholders but 1 windows"):
        proc([proc.prompt("q")], [["A" * 1024]])


def test_loss_covers_exactly_the_answer(tiny_dir, records):
    model = build(tiny_dir)
    proc = model.processor
    r = records[0]
    b = batch_for(model, [r])
    labelled = b["labels"][0][b["labels"][0] != -100]
    text = proc.tokenizer.decode(labelled)
    assert text == f"<think>\n{r['reasoning'].strip()}\n</think>\n\nAnswer: {r['label']}<|im_end|>"
    n_prompt = int((b["labels"][0] == -100).sum())
    prompt = proc.tokenizer.decode(b["input_ids"][0][:n_prompt])
    assert prompt.endswith("<|im_start|>assistant\n") and r["question"] in prompt
    assert torch.equal(b["labels"][0][n_prompt:], b["input_ids"][0][n_prompt:])


def test_forward_splices_dna_and_backprops_into_projector_and_lora_only(tiny_dir, records):
    model = build(tiny_dir)
    out = model(**batch_for(model, records))
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(p.grad is not None for p in model.projector.parameters())
    lora = [p for n, p in model.language_model.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)
    # Besides LoRA, only the DNA marker rows train (peft trainable tokens, tests/test_special_tokens.py).
    trainable = {n for n, p in model.language_model.named_parameters() if p.requires_grad and "lora_" not in n}
    assert trainable == {"base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta.default"}
    assert not any(p.requires_grad for p in model.dna_encoder.parameters())


def test_dna_embeddings_land_on_their_placeholders_in_window_order(tiny_dir, records):
    model = build(tiny_dir).eval()
    b = batch_for(model, records[:2], targets=False)
    dna = {k: b[k] for k in ("dna_input_ids", "dna_attention_mask")}
    with torch.no_grad():
        embedded = model.embed_inputs(b["input_ids"], **dna)
        token_embeddings = model.language_model.get_input_embeddings()(b["input_ids"])
        # each window projected on its own: example 0 ref, example 0 variant, example 1 ref, ...
        per_window = [model.get_dna_features(dna_input_ids=dna["dna_input_ids"][w:w + 1],
                                             dna_attention_mask=dna["dna_attention_mask"][w:w + 1]) for w in range(4)]
    placeholders = b["input_ids"] == model.processor.dna_pad_id
    for example in range(2):
        expected = torch.cat(per_window[2 * example:2 * example + 2])
        torch.testing.assert_close(embedded[example][placeholders[example]], expected)
    assert torch.equal(embedded[~placeholders], token_embeddings[~placeholders])  # text positions untouched
    # and the DNA reaches the output: other windows give other next-token logits
    logits = model(**b).logits[0, -1]
    other = model.processor.tokenize_dna(["T" * 1024, "G" * 1024] * 2)
    assert not torch.allclose(logits, model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
                                            **other).logits[0, -1])


def test_placeholder_count_mismatch_raises(tiny_dir, records):
    model = build(tiny_dir)
    b = batch_for(model, records[:2], targets=False)
    with pytest.raises(ValueError, match="DNA placeholder tokens in the text but the DNA windows yield"):
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"],
              dna_input_ids=b["dna_input_ids"][:2], dna_attention_mask=b["dna_attention_mask"][:2])
    with pytest.raises(ValueError, match="but no DNA inputs"):
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])


def test_save_load_gives_identical_logits_and_stores_no_frozen_weights(tiny_dir, records, tmp_path):
    model = build(tiny_dir).eval()
    with torch.no_grad():  # make LoRA non-trivial (B starts at zero)
        for n, p in model.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    b = batch_for(model, records, targets=False, padding_side="left")
    expected = model(**b).logits
    model.save_pretrained(tmp_path)
    files = {p.name for p in tmp_path.rglob("*") if p.is_file()}
    assert {"config.json", PROJECTOR_FILE, "adapter_model.safetensors", "processor_config.json"} <= files
    assert "model.safetensors" not in files  # the frozen encoder and base LM are never copied
    loaded = DNALLMForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert torch.equal(loaded(**b).logits, expected)


def test_checkpoint_from_another_encoder_is_refused(tiny_dir, tmp_path):
    model = build(tiny_dir)
    model.save_pretrained(tmp_path)
    cfg = DNALLMConfig.from_pretrained(tmp_path)
    cfg.dna_config.fingerprint = {**cfg.dna_config.fingerprint, "hidden_size": 1024}
    cfg.save_pretrained(tmp_path)
    with pytest.raises(LoadingError, match="checkpoint was trained on encoder"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path)


def test_checkpoint_on_an_encoder_of_the_same_layout_with_other_weights_is_refused(tiny_dir, tmp_path):
    """The layout fingerprint alone let a re-pretrained stand-in (same config, other weights) serve a checkpoint
    trained on another: its states differed by ~0.8 and nothing said so. Another load dtype is the same encoder."""
    from transformers import AutoModelForCausalLM

    model = build(tiny_dir)
    model.save_pretrained(tmp_path / "ckpt")
    assert len(DNALLMConfig.from_pretrained(tmp_path / "ckpt").dna_config.weight_sample) == 16
    other = tmp_path / "other-encoder"
    shutil.copytree(tiny_dir / "encoder", other)
    torch.manual_seed(123)
    AutoModelForCausalLM.from_config(AutoModelForCausalLM.from_pretrained(other).config).save_pretrained(other)
    with pytest.raises(LoadingError, match="checkpoint was trained on other encoder weights than"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path / "ckpt", dna_config={"encoder_name_or_path": str(other)})
    copy = tmp_path / "same-encoder"  # the same weights elsewhere, or in bfloat16, load
    shutil.copytree(tiny_dir / "encoder", copy)
    DNALLMForConditionalGeneration.from_pretrained(tmp_path / "ckpt", dna_config={"encoder_name_or_path": str(copy)})
    bf16 = DNALLMForConditionalGeneration.from_pretrained(tmp_path / "ckpt", dtype=torch.bfloat16)
    assert next(bf16.dna_encoder.model.parameters()).dtype == torch.bfloat16


def test_missing_projector_weight_is_an_error(tiny_dir, tmp_path):
    build(tiny_dir).save_pretrained(tmp_path)
    state = load_file(tmp_path / PROJECTOR_FILE)
    state.pop(next(iter(state)))
    save_file(state, tmp_path / PROJECTOR_FILE)
    with pytest.raises(LoadingError, match="missing weights"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path)


@pytest.mark.parametrize("which", ["lora", "trainable_tokens"])
def test_missing_adapter_weight_is_an_error(tiny_dir, tmp_path, which):
    build(tiny_dir).save_pretrained(tmp_path)
    adapter_file = tmp_path / "adapter" / "adapter_model.safetensors"
    state = load_file(adapter_file)
    state.pop(next(k for k in state if ("lora_B" if which == "lora" else "trainable_tokens") in k))
    save_file(state, adapter_file)
    with pytest.raises(LoadingError, match="missing adapter weight"):  # peft alone only warns (or a bare KeyError)
        DNALLMForConditionalGeneration.from_pretrained(tmp_path)


def test_a_checkpoint_without_its_adapter_folder_is_an_error(tiny_dir, tmp_path):
    build(tiny_dir).save_pretrained(tmp_path)
    assert DNALLMConfig.from_pretrained(tmp_path).has_adapter
    shutil.rmtree(tmp_path / "adapter")
    with pytest.raises(LoadingError, match="the config records a LoRA adapter, but adapter/ is missing"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path)


def test_a_relative_component_path_missing_next_to_the_checkpoint_is_an_error(tiny_dir, tmp_path, monkeypatch):
    """A checkpoint that names its encoder `../encoder` and is copied without it must not pick up a folder of that
    name under the current directory."""
    run = tmp_path / "run"
    shutil.copytree(tiny_dir / "encoder", run / "encoder")
    shutil.copytree(tiny_dir / "text-model", run / "text-model")
    (run / "model").mkdir()
    cfg = DNALLMConfig(dna_config={"encoder_type": "genos", "encoder_name_or_path": "../encoder"},
                       text_model_name_or_path="../text-model", projector_stride=32, lora_r=4, lora_alpha=8)
    model = DNALLMForConditionalGeneration.build(cfg, base_dir=run / "model")
    model.add_lora()
    model.save_pretrained(run / "model")
    DNALLMForConditionalGeneration.from_pretrained(run / "model")  # loads with its neighbours
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(run / "model", moved / "model")  # the checkpoint alone
    monkeypatch.chdir(run / "model")  # ../encoder from here is the run's encoder: it must not be taken
    with pytest.raises(FileNotFoundError, match=r"'\.\./encoder', relative to the checkpoint .*copy/model, does not exist"):
        DNALLMForConditionalGeneration.from_pretrained(moved / "model")


def test_linear_projector_stride_one_is_bioreason_parity(tiny_dir, records):
    cfg = DNALLMConfig(dna_config={"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
                       text_model_name_or_path=str(tiny_dir / "text-model"), projector_type="linear")
    model = DNALLMForConditionalGeneration.build(cfg)
    b = batch_for(model, records[:1], targets=False)
    pad = model.processor.dna_pad_id
    assert int((b["input_ids"] == pad).sum()) == 2 * 1024  # one token per base, as BioReason does
    assert model(**b).logits.shape[1] == b["input_ids"].shape[1]


def test_generate_is_the_greedy_continuation_with_the_dna_given_at_the_prefill_only(tiny_dir, records):
    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    b = batch_for(model, records[:2], targets=False, padding_side="left")
    out = model.generate(**b, max_new_tokens=5, min_new_tokens=5)
    ids, mask = b["input_ids"], b["attention_mask"]
    assert torch.equal(out[:, :ids.shape[1]], ids) and out.shape == (2, ids.shape[1] + 5)
    # each new token is the argmax of a full forward over prompt + tokens so far (DNA spliced in every time),
    # so the KV cache carried the DNA from the prefill on
    with torch.no_grad():
        for k in range(5):
            step_mask = torch.cat([mask, torch.ones_like(out[:, ids.shape[1]:ids.shape[1] + k])], 1)
            logits = model(input_ids=out[:, :ids.shape[1] + k], attention_mask=step_mask,
                           dna_input_ids=b["dna_input_ids"], dna_attention_mask=b["dna_attention_mask"]).logits
            assert torch.equal(out[:, ids.shape[1] + k], logits[:, -1].argmax(-1))
    # other windows, other continuation: the DNA reaches generation
    other = {**b, **model.processor.tokenize_dna(["T" * 1024, "G" * 1024] * 2)}
    assert not torch.equal(model.generate(**other, max_new_tokens=5, min_new_tokens=5), out)
    # without a KV cache the DNA goes in at every step, with the same result
    assert torch.equal(model.generate(**b, max_new_tokens=5, min_new_tokens=5, use_cache=False), out)


def test_processor_round_trip(tiny_dir, tmp_path):
    model = build(tiny_dir)
    model.processor.save_pretrained(tmp_path)
    proc = DNALLMProcessor.from_pretrained(tmp_path)
    assert proc.prompt("Q?") == model.processor.prompt("Q?")
    assert proc.num_dna_tokens("A" * 1024) == 32
    assert proc.dna_pad_id == model.processor.dna_pad_id


def _nonzero_lora(model):
    with torch.no_grad():  # LoRA B starts at zero; give the adapter an effect to merge
        for n, p in model.language_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)


def test_merged_lora_gives_the_same_logits_and_cannot_be_saved(tiny_dir, records, tmp_path):
    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    b = batch_for(model, records, targets=False, padding_side="left")
    with torch.no_grad():
        unmerged = model(**b).logits
        merged = model.merge_lora()(**b).logits
    assert model.lora_merged and not hasattr(model.language_model, "peft_config")
    assert not torch.equal(unmerged, build(tiny_dir).eval()(**b).logits)  # the adapter did change the output
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="merged"):
        model.save_pretrained(tmp_path)


def test_static_cache_decoding_matches_dynamic(tiny_dir, records):
    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    model.merge_lora()
    b = batch_for(model, records, targets=False, padding_side="left")
    ids, mask = b.pop("input_ids"), b.pop("attention_mask")
    dynamic = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, **b)
    static = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, cache_implementation="static", **b)
    assert torch.equal(static, dynamic)


def test_pad_to_multiple_of_left_pads_without_changing_the_tokens(tiny_dir, records):
    model = build(tiny_dir)
    plain = batch_for(model, records, targets=False, padding_side="left")
    proc = model.processor
    padded = proc([proc.prompt(r["question"]) for r in records], [[r["ref_window"], r["variant_window"]] for r in records],
                  padding_side="left", pad_to_multiple_of=64)
    width = plain["input_ids"].shape[1]
    assert padded["input_ids"].shape[1] % 64 == 0 and padded["input_ids"].shape[1] >= width
    assert torch.equal(padded["input_ids"][:, -width:], plain["input_ids"])
    assert int(padded["attention_mask"].sum()) == int(plain["attention_mask"].sum())


def test_generate_answers_returns_input_order_from_length_sorted_batches(tiny_dir, kegg_train):
    from dnallm.inference import generate_answers
    from dnallm.modeling import CACHE_KWARG

    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    rows = [kegg_train[i] for i in range(5)]
    questions, windows = [r["question"] for r in rows], [(r["ref_window"], r["variant_window"]) for r in rows]
    order = model.processor.length_order(questions)
    assert order != sorted(order)  # the batches really are reordered
    lengths = [len(model.processor.tokenizer(questions[i])["input_ids"]) for i in order]
    assert lengths == sorted(lengths, reverse=True)
    batched = generate_answers(model, questions, windows, batch_size=2, max_new_tokens=6, max_answer_tokens=3)
    singles = [generate_answers(model, [q], [w], max_new_tokens=6, max_answer_tokens=3)[0]
               for q, w in zip(questions, windows)]
    assert batched == singles
    # the CPU default decodes with a static KV cache; a dynamic cache gives the same greedy answers
    seen, real_generate = [], model.generate
    model.generate = lambda *a, **kw: seen.append(type(kw.get(CACHE_KWARG)).__name__) or real_generate(*a, **kw)
    dynamic = generate_answers(model, questions, windows, batch_size=2, max_new_tokens=6, max_answer_tokens=3,
                               static_cache=False)
    generate_answers(model, questions[:2], windows[:2], batch_size=2, max_new_tokens=6, max_answer_tokens=3)
    del model.generate
    assert dynamic == batched and seen[-1] == "StaticCache" and set(seen[:-1]) == {"DynamicCache"}


def test_a_job_gives_its_static_caches_one_length_without_room_for_the_answer(tiny_dir, kegg_train, monkeypatch):
    """Issue 15 (GPU generation regression): a static cache sized per batch, with room for the answer, gave the
    compiled decoding step a new shape (a recompilation) for every prompt width and ~150 more positions to attend
    over at every step. Now every batch's cache has the job's length (widest prompt + reasoning budget) and the
    answer runs on chunked copies of the cache's rows. Same answers, also with one cache object reset between
    batches (`_JobCache.reuse`)."""
    import dnallm.inference as inference

    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    rows = [kegg_train[i] for i in range(5)]
    questions, windows = [r["question"] for r in rows], [(r["ref_window"], r["variant_window"]) for r in rows]
    built, real_static = [], inference.StaticCache
    monkeypatch.setattr(inference, "StaticCache",
                        lambda **kw: built.append(kw["max_cache_len"]) or real_static(**kw))
    static = generate_answers_of(model, questions, windows, static_cache=True)
    proc = model.processor
    order = proc.length_order(questions)
    widths = [proc([proc.prompt(questions[j]) for j in order[i:i + 2]], [list(windows[j]) for j in order[i:i + 2]],
                   padding_side="left")["input_ids"].shape[1] for i in (0, 2, 4)]
    assert len(set(widths)) > 1
    assert built == [w + 6 for w in widths]  # CPU (nothing compiles): each batch its own length, no answer room
    built.clear()
    job = inference._JobCache(model.config.text_config, one_length=True)  # compiled (CUDA) jobs: one length
    for width in widths:
        job.get(2, width + 6)
    assert built == [widths[0] + 6] * 3
    built.clear()
    monkeypatch.setattr(inference, "TAIL_ROWS", 1)  # the answer one row at a time: the same answers
    assert generate_answers_of(model, questions, windows, static_cache=True) == static
    monkeypatch.setattr(inference._JobCache, "reuse", True)  # one cache object reset between batches: the same
    built.clear()
    assert generate_answers_of(model, questions, windows, static_cache=True) == static and len(built) == 2
    assert built == [widths[0] + 6] * 2  # batches of 2 share one object (one length); the batch of 1 gets its own
    monkeypatch.setattr(inference._JobCache, "reuse", False)
    assert generate_answers_of(model, questions, windows, static_cache=False) == static
    unconstrained = generate_answers_of(model, questions, windows, static_cache=True, constrained=False)
    monkeypatch.setattr(inference, "TAIL_ROWS", 32)
    assert generate_answers_of(model, questions, windows, static_cache=False, constrained=False) == unconstrained


def generate_answers_of(model, questions, windows, **kwargs):
    from dnallm.inference import generate_answers

    return generate_answers(model, questions, windows, **{"batch_size": 2, "max_new_tokens": 6, "max_answer_tokens": 3,
                                                          **kwargs})


def test_chunked_answer_loss_equals_the_full_logits_loss_and_gradients(tiny_dir, records):
    import torch.nn.functional as F

    from dnallm.losses import chunked_cross_entropy

    model = build(tiny_dir)
    _nonzero_lora(model)
    b = batch_for(model, records)
    model.loss_chunk_size = 7  # many chunks, the last one partial
    loss = model(**b)["loss"]
    loss.backward()
    chunked_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    # reference: the full logits over every answer position at once
    base = model.language_model.get_base_model()
    hidden = base.model(inputs_embeds=model.embed_inputs(b["input_ids"], dna_input_ids=b["dna_input_ids"],
                                                         dna_attention_mask=b["dna_attention_mask"]),
                        attention_mask=b["attention_mask"]).last_hidden_state
    targets = b["labels"][:, 1:]
    keep = targets != -100
    reference = F.cross_entropy(base.lm_head(hidden[:, :-1][keep]).float(), targets[keep])
    reference.backward()
    torch.testing.assert_close(loss, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(chunked_cross_entropy(hidden[:, :-1][keep], base.lm_head, targets[keep], None),
                               reference, rtol=1e-6, atol=1e-7)  # chunk_size None: the plain full-logits loss
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(chunked_grads[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
    with pytest.raises(ValueError, match="no answer tokens"):
        chunked_cross_entropy(hidden[0, :0], base.lm_head, targets[0, :0])


def test_chunked_token_logprobs_equal_log_softmax_and_its_gradients():
    from dnallm.losses import chunked_token_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 50, bias=False)
    hidden = torch.randn(3, 11, 16, requires_grad=True)
    targets = torch.randint(0, 50, (3, 11))
    got = chunked_token_logprobs(hidden, head, targets, chunk_size=4)  # 33 positions: 9 chunks, last partial
    want = torch.log_softmax(head(hidden), -1).gather(-1, targets[..., None]).squeeze(-1)
    torch.testing.assert_close(got, want)
    weights = torch.randn(3, 11)
    (g_got,) = torch.autograd.grad((got * weights).sum(), hidden)
    (g_want,) = torch.autograd.grad((want * weights).sum(), hidden)
    torch.testing.assert_close(g_got, g_want)
    torch.testing.assert_close(chunked_token_logprobs(hidden, head, targets, None), want)


def test_auto_classes_load_a_saved_checkpoint_with_identical_logits(tiny_dir, records, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM, Qwen3Config

    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    b = batch_for(model, records, targets=False, padding_side="left")
    with torch.no_grad():
        expected = model(**b).logits
    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    # composite: the LM's own config (vocabulary grown by the DNA tokens) and the encoder's settings + identity
    assert isinstance(config, DNALLMConfig) and isinstance(config.text_config, Qwen3Config)
    assert config.text_config.vocab_size == len(model.processor.tokenizer)
    assert config.dna_config.fingerprint == model.dna_encoder.fingerprint and config.dna_config.layer == -1
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is DNALLMForConditionalGeneration
    with torch.no_grad():
        assert torch.equal(loaded(**b).logits, expected)
    assert loaded.generation_config.suppress_tokens == [*model.processor.dna_marker_ids, model.processor.dna_pad_id]


def test_checkpoint_from_another_text_model_is_refused(tiny_dir, tmp_path):
    build(tiny_dir).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["text_config"]["intermediate_size"] *= 2
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(LoadingError, match="checkpoint was trained on a text model with"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path)


def test_a_flat_config_of_dnallm_0_1_is_refused_with_where_the_keys_went(tmp_path):
    with pytest.raises(ValueError, match=r"flat encoder keys \['encoder_name_or_path', 'encoder_type'\].*dna_config"):
        DNALLMConfig(encoder_type="genos", encoder_name_or_path="x")


def test_generate_computes_prefill_logits_at_the_last_position_only(tiny_dir, records):
    model = build(tiny_dir).eval()
    b = batch_for(model, records[:2], targets=False, padding_side="left")
    widths = []
    handle = model.language_model.register_forward_hook(lambda m, args, out: widths.append(out.logits.shape[1]))
    model.generate(**b, max_new_tokens=3, min_new_tokens=3)
    handle.remove()
    # the prefill (whole prompt) and two decoding steps, each with one position's logits over the vocabulary
    assert widths == [1, 1, 1]


def test_placeholders_without_dna_are_refused_by_generate_and_scoring_continuations_skip_the_check(tiny_dir, records,
                                                                                                    monkeypatch):
    from dnallm.scoring import label_logprobs

    model = build(tiny_dir).eval()
    b = batch_for(model, records[:2], targets=False, padding_side="left")
    with pytest.raises(ValueError, match="DNA placeholder tokens but no DNA inputs"):
        model.generate(input_ids=b["input_ids"], attention_mask=b["attention_mask"], max_new_tokens=2)
    checks = []
    real = model._check_no_placeholders
    monkeypatch.setattr(model, "_check_no_placeholders", lambda ids: checks.append(ids.shape) or real(ids))
    label_logprobs(model, [r["question"] for r in records[:2]], [(r["ref_window"], r["variant_window"]) for r in records[:2]])
    model.generate(**b, max_new_tokens=3, min_new_tokens=3)
    assert checks == []  # the tree pass and the decoding steps continue a KV cache: no device read-back


def test_beam_copies_keep_their_own_dna_windows(tiny_dir, records):
    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    b = batch_for(model, records[:2], targets=False, padding_side="left")
    with torch.no_grad():
        expected = model.embed_inputs(b["input_ids"], dna_input_ids=b["dna_input_ids"],
                                      dna_attention_mask=b["dna_attention_mask"]).repeat_interleave(2, 0)
    prefill = []
    handle = model.language_model.register_forward_hook(
        lambda m, args, kwargs, out: prefill.append(kwargs["inputs_embeds"]) if not prefill else None, with_kwargs=True)
    out = model.generate(**b, max_new_tokens=2, num_beams=2, num_return_sequences=2)
    handle.remove()
    assert out.shape[0] == 4
    # each of the 4 rows (2 per prompt) was spliced with its own prompt's reference and variant windows
    torch.testing.assert_close(prefill[0], expected)


def test_from_pretrained_takes_dtype_refuses_what_it_cannot_honour_and_attends_as_its_lm(tiny_dir, tmp_path):
    build(tiny_dir).save_pretrained(tmp_path)
    loaded = DNALLMForConditionalGeneration.from_pretrained(tmp_path, torch_dtype=torch.bfloat16)
    assert loaded.language_model.dtype == torch.bfloat16 and next(loaded.projector.parameters()).dtype == torch.bfloat16
    with pytest.raises(TypeError, match=r"unsupported arguments.*device_map"):
        DNALLMForConditionalGeneration.from_pretrained(tmp_path, device_map="auto")
    cfg = DNALLMConfig.from_pretrained(tmp_path)
    eager = DNALLMForConditionalGeneration.build(cfg, attn_implementation="eager")
    # generate reads the wrapper's config (e.g. whether flash attention needs the mask kept): it must be the LM's
    assert eager.config._attn_implementation == eager.language_model.config._attn_implementation == "eager"


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_a_padded_batch_loss_is_the_token_mean_of_its_examples_alone(tiny_dir, records, padding_side):
    """The training loss drops the padding mask of a right-padded batch (plain causal attention) and keeps it for
    left padding: either way a padded batch gives the token-weighted mean of its examples' own losses. Fails if
    a right-padded row's tokens could see the padding or a left-padded batch lost its mask."""
    model = build(tiny_dir)
    _nonzero_lora(model)
    batch = batch_for(model, records, padding_side=padding_side)
    assert (batch["attention_mask"] == 0).any()  # the three answers differ in length: there is padding
    out = model(**batch)
    total, count = 0.0, 0
    for r in records:
        alone = model(**batch_for(model, [r]))
        total, count = total + alone["loss"].item() * alone["n_tokens"], count + alone["n_tokens"]
    assert out["n_tokens"] == count
    assert out["loss"].item() == pytest.approx(total / count, rel=1e-5)


@pytest.mark.parametrize("constrained", [True, False])
def test_decoding_drops_finished_rows_and_gives_the_same_answers(tiny_dir, kegg_train, monkeypatch, constrained):
    """CPU decoding runs in segments and drops the rows that stopped (`_decode_batch`): every row's text is the one
    a single `generate` over the whole budget gives, rows that stop at different steps included. Fails if a
    dropped row loses its answer, a continuing row sees the wrong cache rows, or rows come back in the wrong order."""
    import dnallm.inference as inference

    model = build(tiny_dir).eval()
    _nonzero_lora(model)
    rows = [kegg_train[i] for i in range(6)]
    questions, windows = [r["question"] for r in rows], [(r["ref_window"], r["variant_window"]) for r in rows]
    widths, real_generate = [], model.generate

    def recording(*a, **kw):
        out = real_generate(*a, **kw)
        widths.append(kw["input_ids"].shape[0])
        recording.last = out[:, kw["input_ids"].shape[1]:]
        return out

    monkeypatch.setattr(model, "generate", recording)
    monkeypatch.setattr(inference, "COMPACT_EVERY", 10**6)
    generate_answers_of(model, questions, windows, max_new_tokens=16, batch_size=6, constrained=False,
                        max_answer_tokens=0)
    # make a token that some row emits mid-way (and some row never) an end token: that row stops early, the others
    # run the whole budget
    emitted = recording.last.tolist()
    firsts = {t: [row.index(t) for row in emitted if t in row] for row in emitted for t in row}
    stop = max((t for t in firsts if len(firsts[t]) < len(emitted)), key=lambda t: max(firsts[t]))
    assert 0 < max(firsts[stop]) < 15
    monkeypatch.setattr(model.processor, "end_token_ids", [*model.processor.end_token_ids, stop])
    kwargs = dict(max_new_tokens=16, batch_size=6, constrained=constrained, max_answer_tokens=3)
    widths.clear()
    whole = generate_answers_of(model, questions, windows, **kwargs)
    assert widths[0] == 6
    monkeypatch.setattr(inference, "COMPACT_EVERY", 2)
    widths.clear()
    segmented = generate_answers_of(model, questions, windows, **kwargs)
    assert segmented == whole
    decoding = [w for w in widths if w > 0]
    assert decoding[0] == 6 and min(decoding) < 6  # rows were dropped along the way


def test_generation_opens_the_think_block_once(tiny_dir, kegg_train):
    """A model that would write `<think>` at every step gets it once per answer (`ThinkOpensOnce`), in batched
    generation, in the stream and in a plain `model.generate`; without the rule every generated token here is
    `<think>`."""
    from dnallm.inference import stream_answer

    model = build(tiny_dir).eval()
    tok = model.processor.tokenizer
    think = tok.convert_tokens_to_ids("<think>")
    lm_head = model.language_model.get_output_embeddings()

    def prefer_think(module, args, out):  # <think> first at every position, by a wide margin
        out = out.clone()
        out[..., think] += 1e4
        return out

    rows = [kegg_train[i] for i in range(3)]
    questions, windows = [r["question"] for r in rows], [(r["ref_window"], r["variant_window"]) for r in rows]
    handle = lm_head.register_forward_hook(prefer_think)
    try:
        prompt = model.processor([model.processor.prompt(questions[0])], [list(windows[0])], padding_side="left")
        width = prompt["input_ids"].shape[1]
        stock = GenerationMixin.generate(model, **prompt, max_new_tokens=4)[0, width:].tolist()
        assert stock == [think] * 4  # the hook works: transformers' own generate repeats it
        plain = model.generate(**prompt, max_new_tokens=4)[0, width:].tolist()  # a plain call gets the rule
        assert plain[0] == think and think not in plain[1:], plain
        assert model.generate(**prompt, max_new_tokens=4, think_opens_once=False)[0, width:].tolist() == stock
        texts = generate_answers_of(model, questions, windows, max_new_tokens=8, batch_size=3, constrained=False,
                                    max_answer_tokens=2)
        streamed = "".join(str(chunk) for chunk in stream_answer(model, questions[0], windows[0], max_new_tokens=8,
                                                                 constrained=False, max_answer_tokens=2))
    finally:
        handle.remove()
    for text in texts:
        assert text.count("<think>") == 1 and text.startswith("<think>"), text
    ids = tok(texts[0], add_special_tokens=False)["input_ids"]
    assert ids.count(think) == 1
    assert streamed.count("<think>") == 1, streamed
