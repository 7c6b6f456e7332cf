"""SFT loop: resume gives identical results, stage 1 trains the projector only, stage 2 starts from it."""

import json

import pytest
import torch
from safetensors.torch import load_file

from dnallm.data import load_kegg
from dnallm.training import SFTConfig, train_sft
from test_model import build


def trained_weights(path):
    weights = dict(load_file(path / "projector.safetensors"))
    weights.update({f"lora.{k}": v for k, v in load_file(path / "adapter" / "adapter_model.safetensors").items()})
    return weights


def run(tiny_dir, out, **kw):
    train, val = load_kegg("train").select(range(16)), load_kegg("val").select(range(4))
    cfg = SFTConfig(**{"epochs": 2.0, "batch_size": 4, "evals_per_epoch": 2, "save_every": 1, "log_every": 1000,
                       "lr_projector": 1e-2, "lr_lora": 1e-2, **kw})
    return train_sft(build(tiny_dir), train, val, cfg, out)


def test_resume_mid_epoch_matches_uninterrupted_run(tiny_dir, tmp_path):
    full = run(tiny_dir, tmp_path / "full")
    assert full["steps"] == 8 and full["finished"]
    part = run(tiny_dir, tmp_path / "resumed", stop_after_steps=3)  # "killed" in the middle of epoch 1
    assert part["steps"] == 3 and not part["finished"]
    assert json.loads((tmp_path / "resumed/last/trainer_state.json").read_text())["global_step"] == 3  # Trainer's state file
    resumed = run(tiny_dir, tmp_path / "resumed", resume=True)
    assert resumed["steps"] == 8 and resumed["finished"]
    a, b = trained_weights(tmp_path / "full/last"), trained_weights(tmp_path / "resumed/last")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["val_loss"] for h in full["history"]] == [h["val_loss"] for h in resumed["history"]]
    assert (tmp_path / "full/tensorboard").is_dir()


def test_stage1_projector_only_then_stage2_from_it(tiny_dir, tmp_path):
    initial = build(tiny_dir)
    lora_before = {n: p.detach().clone() for n, p in initial.language_model.named_parameters() if p.requires_grad}
    run(tiny_dir, tmp_path / "stage1", epochs=1.0, train_lora=False)
    stage1 = trained_weights(tmp_path / "stage1/last")
    lora_after = {k.removeprefix("lora."): v for k, v in stage1.items() if k.startswith("lora.")}
    assert len(lora_after) == len(lora_before)
    for k, v in lora_after.items():  # adapter keys drop peft's adapter name; match by suffix
        match = [n for n in lora_before if n.replace(".default", "") == k]
        assert match and torch.equal(lora_before[match[0]], v), k
    assert not torch.equal(stage1["net.1.weight"], initial.projector.state_dict()["net.1.weight"])
    # stage 2 with zero learning rates must keep exactly the stage-1 projector
    run(tiny_dir, tmp_path / "stage2", epochs=0.5, init_projector_from=str(tmp_path / "stage1/last"),
        lr_projector=0.0, lr_lora=0.0)
    stage2 = trained_weights(tmp_path / "stage2/last")
    assert torch.equal(stage2["net.1.weight"], stage1["net.1.weight"])


def test_examples_per_view_follow_the_thinking_and_direct_settings(tiny_dir):
    from dnallm.data import load_views
    from dnallm.training import encode_examples
    from test_model import build

    model = build(tiny_dir)
    records = load_views("val", {"kegg": 1.0, "kegg_hard": 1.0}, limit=3)
    examples = encode_examples(model, records, 8192, direct_answers={"kegg": 2, "kegg_hard": 5},
                               thinking_answers={"kegg": 1, "kegg_hard": 0})
    assert len(examples) == 3 * (1 + 2) + 3 * 5
    tok = model.processor.tokenizer
    think = tok.convert_tokens_to_ids("<think>")
    # reasoning examples carry the reasoning as their answer; direct ones only the label line
    answers = [tok.decode(e["input_ids"][e["labels"] != -100]) for e in examples]
    reasoning = [a for a in answers if "Step 1" in a]
    assert len(reasoning) == 3
    prompts = [tok.decode(e["input_ids"][e["labels"] == -100]) for e in examples]
    assert sum("What disease does this contribute to?" in p for p in prompts) == 15  # hard: direct only
    assert all(think in e["input_ids"].tolist() for e in examples)  # both modes render the Qwen3 think markup
    # booleans keep the old meaning: one reasoning example, plus one direct example per record
    assert len(encode_examples(model, records, 8192, direct_answers=True)) == 12
    assert len(encode_examples(model, records, 8192)) == 6


def test_an_example_longer_than_max_length_is_an_error_for_distractors_too(tiny_dir):
    from dnallm.data import load_kegg
    from dnallm.training import encode_examples
    from test_model import build

    model = build(tiny_dir)
    records = load_kegg("val").select(range(4))
    with pytest.raises(ValueError, match=r"row 0: example of \d+ tokens exceeds max_length 200"):
        encode_examples(model, records, 200)
    with pytest.raises(ValueError, match=r"row 0: distractor example of \d+ tokens exceeds max_length 200"):
        encode_examples(model, records, 200, thinking_answers=False, distractor_answers=1)


def test_fractional_copies_give_a_fixed_share_of_the_records_one_more_example(tiny_dir):
    """thinking_answers {kegg: 0.5}: a fixed half of the records get their reasoning example (the same records in
    every call), the others none; 1.5 direct copies: one for every record, a second for about half of them."""
    from dnallm.data import load_kegg
    from dnallm.training import _copies, encode_examples
    from test_model import build

    model = build(tiny_dir)
    records = load_kegg("train").select(range(40))
    tok = model.processor.tokenizer

    def reasoning_rows(examples):
        return [tok.decode(e["input_ids"][e["labels"] != -100]) for e in examples
                if "Step 1" in tok.decode(e["input_ids"][e["labels"] != -100])]

    half = encode_examples(model, records, 8192, thinking_answers={"kegg": 0.5})
    assert 12 <= len(half) <= 28  # about half of 40, never all or none
    assert len(reasoning_rows(half)) == len(half)
    again = encode_examples(model, records, 8192, thinking_answers={"kegg": 0.5})
    assert [e["input_ids"].tolist() for e in again] == [e["input_ids"].tolist() for e in half]
    assert _copies({"kegg": 0.5}, "kegg") == 1  # without a draw: the mode counts as used (config.answer_modes)
    mixed = encode_examples(model, records, 8192, thinking_answers=False, direct_answers=1.5)
    assert 40 + 12 <= len(mixed) <= 40 + 28
    assert _copies(0.0, "kegg") == 0 and _copies({"kegg": 2}, "kegg_hard", "direct-1") == 0
    with pytest.raises(ValueError, match="copies must be >= 0"):
        _copies({"kegg": -1}, "kegg", "thinking-0")


def test_distractor_examples_train_the_answer_line_after_another_labels_reasoning(tiny_dir):
    """sft.distractor_answers: the record's prompt and DNA, a think block ending another record's reasoning (another
    label), the record's own answer line; loss on that answer line only, at answer_weight."""
    from dnallm.data import load_kegg
    from dnallm.training import encode_examples
    from test_model import build

    model = build(tiny_dir)
    tok = model.processor.tokenizer
    records = load_kegg("train").select(range(12))
    assert len(set(records["label"])) > 1
    plain = encode_examples(model, records, 8192, answer_weight=8.0)
    examples = encode_examples(model, records, 8192, answer_weight=8.0, distractor_answers=2)
    assert len(examples) == len(plain) + 2 * len(records)
    for k, r in enumerate(records):  # per record: its reasoning example, then its two distractors
        assert torch.equal(examples[3 * k]["input_ids"], plain[k]["input_ids"])
        for e in examples[3 * k + 1: 3 * k + 3]:
            assert e["windows"] == [r["ref_window"], r["variant_window"]]
            text = tok.decode(e["input_ids"])
            think = text[text.rindex("<think>"):text.rindex("</think>")]
            tails = {rr["reasoning"].strip().splitlines()[-1] for rr in records if rr["label"] != r["label"]}
            assert any(t in think for t in tails)  # another label's closing step
            assert r["reasoning"].strip().splitlines()[-1] not in think
            labelled = tok.decode(e["input_ids"][e["labels"] != -100])
            assert labelled.strip().startswith("Answer:") and r["label"] in labelled  # the answer line alone
            assert torch.all(e["label_weights"][e["labels"] != -100] == 8.0)
    # deterministic: the same distractors on a second encoding
    again = encode_examples(model, records, 8192, answer_weight=8.0, distractor_answers=2)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(examples, again))


def test_resume_with_gradient_accumulation_matches_uninterrupted_run(tiny_dir, tmp_path):
    # 9 records, batch 2 -> 5 micro-batches per epoch; accumulation 4 -> Trainer steps after micro-batches 4 and 5
    # of each epoch (accumulation restarts at every epoch), so 2 epochs = 4 optimizer steps, 2 of them partial.
    # (Adapted for the Trainer port: the old loop counted micro-batches and accumulated across epochs.)
    train, val = load_kegg("train").select(range(9)), load_kegg("val").select(range(2))

    def go(out, **kw):
        cfg = SFTConfig(**{"epochs": 2.0, "batch_size": 2, "grad_accum": 4, "save_every": 1, "log_every": 1000,
                           "lr_projector": 1e-2, "lr_lora": 1e-2, "tensorboard": False, **kw})
        return train_sft(build(tiny_dir), train, val, cfg, out)

    full = go(tmp_path / "full")
    assert full["steps"] == 4 and full["finished"]
    part = go(tmp_path / "resumed", stop_after_steps=3)  # after the first accumulation of epoch 2
    assert part["steps"] == 3 and not part["finished"]
    at_3 = trained_weights(tmp_path / "resumed/last")
    go(tmp_path / "resumed", resume=True)
    a, b = trained_weights(tmp_path / "full/last"), trained_weights(tmp_path / "resumed/last")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert not torch.equal(a["net.1.weight"], at_3["net.1.weight"])  # the final partial accumulation stepped


def test_a_crash_during_a_save_leaves_the_previous_state_whole(tiny_dir, tmp_path, monkeypatch):
    full = run(tiny_dir, tmp_path / "full", epochs=1.0)
    real_save, calls = torch.save, []

    def crashing_save(obj, path, *a, **kw):
        calls.append(path)
        # Trainer's checkpoint torch.saves optimizer.pt, scheduler.pt, rng_state.pth (adapted from the old loop's
        # optimizer.pt, rng.pt): call 4 is the first of checkpoint-2, "killed" after its weights were written
        if len(calls) == 4:
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, tmp_path / "crashed", epochs=1.0)
    monkeypatch.setattr(torch, "save", real_save)
    last = tmp_path / "crashed/last"
    assert json.loads((last / "trainer_state.json").read_text())["global_step"] == 1
    assert {p.name for p in last.iterdir()} >= {"projector.safetensors", "optimizer.pt", "scheduler.pt",
                                                "rng_state.pth", "adapter"}
    resumed = run(tiny_dir, tmp_path / "crashed", epochs=1.0, resume=True)
    assert resumed["finished"]
    a, b = trained_weights(tmp_path / "full/last"), trained_weights(last)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_scoring_warns_on_a_checkpoint_trained_without_direct_answers(tiny_dir, tmp_path):
    import warnings

    from dnallm.modeling import DNALLMForConditionalGeneration
    from dnallm.scoring import UntrainedScoringFormWarning, label_probabilities

    train = load_kegg("train").select(range(4))
    r = train[0]
    args = ([r["question"]], [(r["ref_window"], r["variant_window"])])
    for direct, modes in ((False, ["thinking"]), (True, ["thinking", "direct"])):
        out = tmp_path / str(direct)
        train_sft(build(tiny_dir), train, train, SFTConfig(epochs=1.0, batch_size=4, direct_answers=direct,
                                                           tensorboard=False), out)
        model = DNALLMForConditionalGeneration.from_pretrained(out)
        assert model.config.answer_modes == modes  # recorded in the checkpoint's config
        if direct:
            with warnings.catch_warnings():
                warnings.simplefilter("error", UntrainedScoringFormWarning)
                label_probabilities(model, *args)
        else:
            with pytest.warns(UntrainedScoringFormWarning, match="without direct answers"):
                label_probabilities(model, *args)


def test_a_crash_while_saving_a_new_best_checkpoint_leaves_the_previous_best_whole(tiny_dir, tmp_path, monkeypatch):
    import dnallm.modeling as modeling
    from dnallm.modeling import DNALLMForConditionalGeneration

    # 4 steps per epoch, validation (and a best save when it improves) at steps 2 and 4
    at_2 = run(tiny_dir, tmp_path / "at2", epochs=1.0, stop_after_steps=2)
    assert [h["step"] for h in at_2["history"]] == [2]
    real_save, calls = modeling.save_file, []

    def crashing_save(tensors, path, *a, **kw):
        calls.append(str(path))
        if ".best-step4" in str(path):  # the new best's projector is on disk; its adapter never gets written
            raise KeyboardInterrupt("killed mid-save")
        return real_save(tensors, path, *a, **kw)

    monkeypatch.setattr(modeling, "save_file", crashing_save)
    out = tmp_path / "crashed"
    with pytest.raises(KeyboardInterrupt):
        run(tiny_dir, out, epochs=1.0, save_every=100)
    assert any(".best-step4" in c for c in calls)  # the crash did hit the second best save
    monkeypatch.setattr(modeling, "save_file", real_save)
    # the checkpoint users load (the top of out) is still step 2's, every file of it
    assert (out / "best").resolve().name == ".best-step2"
    for name in ("config.json", "projector.safetensors", "adapter"):
        assert (out / name).resolve().parent.name == ".best-step2", name
    a, b = trained_weights(tmp_path / "at2"), trained_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    DNALLMForConditionalGeneration.from_pretrained(out)  # loads


def test_the_best_checkpoint_switches_to_the_latest_best_step(tiny_dir, tmp_path):
    result = run(tiny_dir, tmp_path / "out", epochs=1.0)
    losses = [h["val_loss"] for h in result["history"]]
    best_step = result["history"][losses.index(min(losses))]["step"]
    out = tmp_path / "out"
    assert (out / "best").resolve().name == f".best-step{best_step}"
    assert not [p.name for p in out.iterdir() if p.name.startswith(".best-step") and p != (out / "best").resolve()]


def test_reasoning_examples_weigh_their_answer_line(tiny_dir):
    """answer_weight: the tokens after `</think>` carry that weight in the loss, which is the weighted sum of the
    per-token losses over the token count. Fails if the weights land elsewhere, are dropped by collate, or are
    ignored by the model's loss."""
    from dnallm.data import load_views
    from dnallm.encoders.cache import EmbeddingCache
    from dnallm.training import collate, encode_examples

    model = build(tiny_dir)
    records = load_views("val", {"kegg": 1.0}, limit=3)
    plain = encode_examples(model, records, 8192)
    assert not any("label_weights" in e for e in plain)
    weighted = encode_examples(model, records, 8192, answer_weight=8.0)
    tok = model.processor.tokenizer
    for e, p, r in zip(weighted, plain, records):
        w = e["label_weights"]
        assert torch.equal(e["input_ids"], p["input_ids"])
        assert tok.decode(e["input_ids"][w == 8.0]).strip() == f"Answer: {r['label']}{tok.eos_token}"
        assert set(w[w != 8.0].tolist()) == {1.0}  # everything else, the prompt too, keeps weight 1

    cache = EmbeddingCache(model.dna_encoder)
    batch = collate(weighted[:2], cache, tok.pad_token_id)
    out = model(**batch)
    logits = model(**{k: v for k, v in batch.items() if k not in ("labels", "label_weights")}).logits
    targets, keep = batch["labels"][:, 1:], batch["labels"][:, 1:] != -100
    nll = torch.nn.functional.cross_entropy(logits[:, :-1][keep].float(), targets[keep], reduction="none")
    expected = (nll * batch["label_weights"][:, 1:][keep]).sum() / keep.sum()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert out["loss"].item() > model(**collate(plain[:2], cache, tok.pad_token_id))["loss"].item()


@pytest.mark.parametrize("fraction,recomputed", [(True, [True, True]), (0.5, [True, False]), (False, [False, False])])
def test_checkpointing_a_fraction_of_the_layers_recomputes_those_only_and_changes_no_gradient(tiny_dir, fraction,
                                                                                              recomputed):
    from dnallm.training import checkpoint_layers
    from test_model import batch_for

    model = build(tiny_dir)
    torch.manual_seed(0)
    for p in model.parameters():  # LoRA B starts at zero: give every trainable weight a gradient path
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    batch = batch_for(model, [load_kegg("train")[i] for i in range(2)])

    def step():
        model.zero_grad()
        model(**batch)["loss"].backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    want = step()
    layers = model.language_model.base_model.model.model.layers
    assert len(layers) == 2
    calls = [0] * len(layers)
    for i, layer in enumerate(layers):
        # a pre-hook: torch's checkpoint stops its recomputation once it has what the backward needs, so a hook at
        # the end of a submodule may not run again
        layer.self_attn.register_forward_pre_hook(lambda *a, i=i: calls.__setitem__(i, calls[i] + 1))
    if fraction is not False:
        assert checkpoint_layers(model.language_model, fraction) == sum(recomputed)
    model.train()
    got = step()
    assert calls == [2 if r else 1 for r in recomputed]  # a checkpointed layer runs again in the backward
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 1.5, -0.2, "half"])
def test_gradient_checkpointing_must_be_a_bool_or_a_fraction(bad):
    with pytest.raises(ValueError, match="gradient_checkpointing"):
        SFTConfig(gradient_checkpointing=bad)


@pytest.mark.parametrize("option", ["direct_answers", "thinking_answers", "distractor_answers"])
def test_a_misspelt_view_in_a_copies_setting_is_an_error(option):
    """{kegg-hard: 12} would give kegg_hard 0 copies (and, with thinking 0 there, its records no example)."""
    with pytest.raises(ValueError, match=rf"sft.{option}: unknown view\(s\) \['kegg-hard'\]"):
        SFTConfig.from_dict({option: {"kegg": 1, "kegg-hard": 12}})
    assert SFTConfig.from_dict({option: {"kegg": 1, "kegg_hard": 12}})  # the right names pass


def test_compiled_decoder_layers_give_the_eager_loss_and_gradients(tiny_dir):
    """sft.compile: every decoder layer runs as a torch.compile graph (inductor, dynamic shapes), with the eager
    layers' loss and gradients. Fails if the layers are not compiled, are compiled per shape, or compute something
    else."""
    import torch._dynamo

    from dnallm.training import compile_layers
    from test_model import batch_for

    model = build(tiny_dir)
    torch.manual_seed(0)
    for p in model.parameters():  # LoRA B starts at zero: give every trainable weight a gradient path
        if p.requires_grad:
            p.data.normal_(0, 0.05)
    records = load_kegg("train")
    batches = [batch_for(model, [records[i] for i in idx]) for idx in ((0, 1), (2, 3, 4))]
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]  # two sequence lengths

    def step(batch):
        model.zero_grad()
        loss = model(**batch)["loss"]
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    model.train()
    want = [step(b) for b in batches]
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_layers(model.language_model) == 2
    got = [step(b) for b in batches]
    # both layers and both lengths share one compiled graph (a recompile per shape would make it 2+)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    for (want_loss, want_grads), (got_loss, got_grads) in zip(want, got):
        torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-6)
        for name in want_grads:
            torch.testing.assert_close(got_grads[name], want_grads[name], rtol=1e-4, atol=1e-5)


def test_sft_compile_option_compiles_the_text_model_layers(tiny_dir, tmp_path):
    from transformers.modeling_layers import GradientCheckpointingLayer

    model = build(tiny_dir)
    train, val = load_kegg("train").select(range(8)), load_kegg("val").select(range(2))
    train_sft(model, train, val, SFTConfig(epochs=1.0, batch_size=4, compile=True, tensorboard=False), tmp_path)
    layers = [m for m in model.language_model.modules() if isinstance(m, GradientCheckpointingLayer)]
    assert len(layers) == 2 and all(layer._compiled_call_impl is not None for layer in layers)


def test_the_trainer_counts_the_parameters_for_its_flops_once(tiny_dir, tmp_path, monkeypatch):
    """Trainer's total_flos (6 x tokens x non-embedding parameters) with the parameters counted once, not at every
    step (a walk over every module)."""
    from dnallm.modeling import DNALLMForConditionalGeneration

    counted = []
    original = DNALLMForConditionalGeneration.num_parameters

    def counting(self, *args, **kwargs):
        counted.append(original(self, *args, **kwargs))
        return counted[-1]

    monkeypatch.setattr(DNALLMForConditionalGeneration, "num_parameters", counting)
    summary = run(tiny_dir, tmp_path / "run")
    assert summary["steps"] == 8 and len(counted) == 1
    flos = json.loads((tmp_path / "run/last/trainer_state.json").read_text())["total_flos"]
    tokens = flos / (6 * counted[0])  # the padded batches' tokens over both epochs
    assert tokens == int(tokens) and 2 * summary["train_tokens_per_epoch"] <= tokens <= 3 * summary["train_tokens_per_epoch"]
