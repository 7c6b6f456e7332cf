import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from dnallm.data import load_kegg
from dnallm.grpo import (GRPOConfig, _completion_logprobs, _completion_mask, _encode_dna, group_advantages, grpo_train,
                         k3_kl)
from dnallm.modeling import PROJECTOR_FILE, DNALLMForConditionalGeneration
from dnallm.rewards import correctness_reward, format_reward, length_reward, total_reward
from test_model import batch_for, build


def vowel_share(text, record, n):
    """A reward that varies between samples of the random tiny model, so advantages are non-zero."""
    return {"total": sum(c in "aeiou" for c in text) / max(1, len(text))}


def trainable(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


GOOD = "<think>\nStep 1: TARDBP G>T.\nStep 2: TDP-43 aggregates.\n</think>\n\nAnswer: amyotrophic lateral sclerosis"


@pytest.mark.parametrize("completion,correct,fmt", [
    (GOOD, 1.0, 1.0),
    (GOOD.replace("amyotrophic lateral sclerosis", "melanoma"), 0.0, 1.0),        # well formed, wrong
    ("Answer: amyotrophic lateral sclerosis", 1.0, 0.0),                          # right, no think block
    ("<think>\n\n</think>\n\nAnswer: amyotrophic lateral sclerosis", 1.0, 0.0),   # empty think block
    ("<think>it is amyotrophic lateral sclerosis</think>", 0.0, 0.0),             # no answer line
    (GOOD + "\nmore words", 0.0, 0.0),                                            # answer not the last line
    (GOOD.replace("amyotrophic lateral sclerosis", "ALS"), 0.0, 0.0),             # not one of the 37 labels
])
def test_correctness_and_format_rewards(completion, correct, fmt):
    assert correctness_reward(completion, "amyotrophic lateral sclerosis") == correct
    assert format_reward(completion) == fmt


def test_length_reward_and_weighted_total():
    assert length_reward(100, 512, 1024) == 1.0
    assert length_reward(768, 512, 1024) == pytest.approx(0.5)
    assert length_reward(2000, 512, 1024) == 0.0
    parts = total_reward(GOOD, "amyotrophic lateral sclerosis", 768, {"correct": 1.0, "format": 0.2, "length": 0.1})
    assert parts["total"] == pytest.approx(1.0 + 0.2 + 0.05)
    with pytest.raises(ValueError, match="unknown reward names"):
        total_reward(GOOD, "melanoma", 1, {"brevity": 1.0})


def test_completion_mask_stops_after_the_first_end_token_of_either_kind():
    c = torch.tensor([[5, 6, 9, 0, 0], [5, 5, 5, 5, 5], [5, 8, 5, 9, 0]])
    assert _completion_mask(c, [9, 8]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_runs_two_steps_on_the_tiny_model(tiny_dir, tmp_path, beta):
    model = build(tiny_dir)
    sft = tmp_path / "sft"
    model.save_pretrained(sft)
    before = trainable(model)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=12, lr=1e-2, beta=beta,
                     length_target=4, length_limit=12)
    records = load_kegg("train").select(range(8))
    # built-in rewards: a random tiny model never writes a valid answer or a think block, so every completion
    # (<= 4 tokens, under the length target) scores only the length part: 0.1 x 1; equal rewards, zero loss
    builtin = grpo_train(build(tiny_dir), records, GRPOConfig(steps=1, prompts_per_step=1, num_generations=2,
                                                              max_new_tokens=4), tmp_path / "builtin")
    assert builtin[0]["reward"] == pytest.approx(0.1) and builtin[0]["accuracy"] == 0.0
    assert builtin[0]["loss"] == 0.0
    log = grpo_train(model, records, cfg, tmp_path / "grpo", reference_adapter=sft / "adapter" if beta else None,
                     reward_fn=vowel_share)
    assert [e["step"] for e in log] == [1, 2] and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed
    assert (tmp_path / "grpo" / "adapter" / "adapter_model.safetensors").exists()
    if beta:
        # the reference is the SFT adapter the policy starts from: no divergence in step 1, some after an update
        assert log[0]["kl"] == pytest.approx(0.0, abs=1e-7)
        assert log[1]["kl"] > 1e-6
    else:
        assert all(e["kl"] == 0.0 for e in log)


def test_k3_kl_matches_hand_computed_values():
    logp = torch.log(torch.tensor([0.5, 0.2, 0.9]))
    ref = torch.log(torch.tensor([0.25, 0.2, 0.3]))
    # exp(d) - d - 1 with d = log(ref / policy) = log(1/2), 0, log(1/3)
    expected = [0.5 + math.log(2) - 1, 0.0, 1 / 3 + math.log(3) - 1]
    assert k3_kl(logp, ref).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("groups", [0, 1])
def test_a_group_of_fewer_than_two_completions_is_an_error(groups):
    """One completion per group: its advantage is NaN (std of one value), and the step wrote NaN into every
    trainable weight and saved them."""
    assert torch.isnan(group_advantages(torch.tensor([1.0, 0.0]), 1)).all()  # what the check prevents
    with pytest.raises(ValueError, match="num_generations must be >= 2"):
        GRPOConfig(num_generations=groups)


def test_group_advantages_are_group_normalised_rewards():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.3, 0.3, 0.3, 0.3])
    s = math.sqrt(1 / 3) + 1e-4  # sample std of (1, 0, 0, 1) plus trl's 1e-4
    assert group_advantages(rewards, 4).tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])
    # groups are consecutive runs of G completions: (1, 0), (0, 1), ...
    s = math.sqrt(0.5) + 1e-4
    assert group_advantages(rewards, 2).tolist() == pytest.approx([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0, 0, 0, 0])


def test_completion_logprobs_equal_log_softmax_of_the_full_logits(tiny_dir, kegg_train):
    model = build(tiny_dir).eval()
    model.loss_chunk_size = 5  # several LM-head chunks
    b = batch_for(model, [kegg_train[i] for i in range(4)], targets=False, padding_side="left")
    prompt_ids, prompt_mask = b.pop("input_ids"), b.pop("attention_mask")
    assert len(set(prompt_mask.sum(1).tolist())) > 1  # prompts of different lengths: left padding is exercised
    eos = model.processor.tokenizer.eos_token_id
    completions = torch.randint(0, 200, (4, 9), generator=torch.Generator().manual_seed(0))
    completions[0, 3] = eos  # one completion ends early; padding follows
    completions[0, 4:] = model.processor.tokenizer.pad_token_id
    completion_mask = _completion_mask(completions, [eos])
    with torch.no_grad():
        got = _completion_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask, b)
        ids, mask = torch.cat([prompt_ids, completions], 1), torch.cat([prompt_mask, completion_mask], 1)
        logits = model(ids, mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0), **b).logits
    # the logits at position t predict token t + 1: completion token j comes from position prompt_len + j - 1
    reference = logits.float().log_softmax(-1)[:, prompt_ids.shape[1] - 1:-1].gather(-1, completions[..., None])[..., 0]
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


def test_dna_encoded_once_per_prompt_equals_encoding_every_row(tiny_dir, kegg_train):
    model = build(tiny_dir).eval()
    records = [kegg_train[i] for i in (0, 7)]
    windows = [[r["ref_window"], r["variant_window"]] for r in records]
    assert windows[0] != windows[1]
    with torch.no_grad():
        hidden, mask = _encode_dna(model, windows, 3)
        # the processor's batch of 3 copies per prompt, as GRPO samples them
        dna = batch_for(model, [r for r in records for _ in range(3)], targets=False)
        expected_hidden, expected_mask = model.dna_encoder(dna["dna_input_ids"], dna["dna_attention_mask"])
    assert torch.equal(mask, expected_mask)
    torch.testing.assert_close(hidden, expected_hidden)


def test_one_step_trains_the_projector_of_a_bf16_model(tiny_dir, tmp_path, kegg_train):
    sft = tmp_path / "sft"
    build(tiny_dir).save_pretrained(sft)
    model = DNALLMForConditionalGeneration.from_pretrained(sft, dtype=torch.bfloat16, is_trainable=True)  # as train/grpo.py on GPU
    assert {p.dtype for p in model.projector.parameters()} == {torch.bfloat16}
    before = {k: v.float() for k, v in model.projector.state_dict().items()}
    cfg = GRPOConfig(steps=1, prompts_per_step=2, num_generations=4, max_new_tokens=8, lr=1e-6)
    grpo_train(model, kegg_train.select(range(8)), cfg, tmp_path / "grpo", reward_fn=vowel_share)
    after = load_file(tmp_path / "grpo" / PROJECTOR_FILE)
    for k, v in before.items():
        # Adam's first step moves every weight that has a gradient by ~lr; on bf16 weights these updates round away
        assert (after[k].float() - v).abs().median().item() == pytest.approx(cfg.lr, rel=0.05), k
    assert {p.dtype for p in model.projector.parameters()} == {torch.bfloat16}  # handed back as it came


def test_micro_batched_step_equals_full_batch_step(tiny_dir, tmp_path, kegg_train):
    sft = tmp_path / "sft"
    build(tiny_dir).save_pretrained(sft)
    records = kegg_train.select(range(8))
    logs, weights = [], []
    for micro, checkpointing in ((None, False), (3, True)):  # 8 sequences at once; in micro-batches of 3, 3, 2
        model = build(tiny_dir)
        cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=8, lr=1e-3, beta=0.1,
                         micro_batch_size=micro, gradient_checkpointing=checkpointing)
        logs.append(grpo_train(model, records, cfg, tmp_path / f"run{micro}", reference_adapter=sft / "adapter",
                               reward_fn=vowel_share))
        assert model.language_model.get_base_model().is_gradient_checkpointing == checkpointing
        weights.append(trainable(model))
    for full, micro in zip(*logs):
        assert micro["reward"] == full["reward"]  # same completions
        assert micro["loss"] == pytest.approx(full["loss"], abs=1e-6)
        assert micro["kl"] == pytest.approx(full["kl"], abs=1e-6)
    assert logs[0][1]["kl"] > 0  # the KL term takes part
    for name, w in weights[0].items():
        torch.testing.assert_close(weights[1][name], w, atol=1e-6, rtol=1e-5, msg=name)


def test_resume_gives_the_weights_of_an_uninterrupted_run(tiny_dir, tmp_path, kegg_train):
    records = kegg_train.select(range(8))
    cfg = dict(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=8, lr=1e-2, save_every=1)
    model = build(tiny_dir)
    log = grpo_train(model, records, GRPOConfig(**cfg), tmp_path / "full", reward_fn=vowel_share)
    first = grpo_train(build(tiny_dir), records, GRPOConfig(**cfg, stop_after_steps=1), tmp_path / "staged",
                       reward_fn=vowel_share)
    last = tmp_path / "staged" / "last"
    assert len(first) == 1 and json.loads((last / "trainer_state.json").read_text())["step"] == 1
    assert (last / "optimizer.pt").exists() and (last / "rng.pt").exists()
    resumed = build(tiny_dir)  # a fresh process: new weights, optimizer and RNG states
    torch.manual_seed(123), random.seed(123)
    staged = grpo_train(resumed, records, GRPOConfig(**cfg, resume=True), tmp_path / "staged", reward_fn=vowel_share)
    assert [(e["step"], e["loss"], e["reward"]) for e in staged] == [(e["step"], e["loss"], e["reward"]) for e in log]
    uninterrupted, continued = trainable(model), trainable(resumed)
    assert all(torch.equal(continued[n], w) for n, w in uninterrupted.items())


def test_a_crash_during_a_state_save_leaves_the_previous_state_whole(tiny_dir, tmp_path, kegg_train, monkeypatch):
    records = kegg_train.select(range(8))
    cfg = dict(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=8, lr=1e-2, save_every=1)
    real_save = torch.save

    def crashing_save(obj, path, *a, **kw):
        if ".last-step2" in str(path):  # step 2's weights are written, its optimizer state is not
            raise KeyboardInterrupt("killed mid-save")
        return real_save(obj, path, *a, **kw)

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(KeyboardInterrupt):
        grpo_train(build(tiny_dir), records, GRPOConfig(**cfg), tmp_path / "crashed", reward_fn=vowel_share)
    monkeypatch.setattr(torch, "save", real_save)
    last = tmp_path / "crashed" / "last"
    assert json.loads((last / "trainer_state.json").read_text())["step"] == 1
    assert (last / "optimizer.pt").exists() and (last / "rng.pt").exists()
    log = grpo_train(build(tiny_dir), records, GRPOConfig(**cfg, resume=True), tmp_path / "crashed",
                     reward_fn=vowel_share)
    assert [e["step"] for e in log] == [1, 2]


RANK_RUNNER = """
import sys, torch
from safetensors.torch import save_file
from dnallm.data import load_kegg
from dnallm.grpo import GRPOConfig, grpo_train
from dnallm.modeling import DNALLMForConditionalGeneration
import torch.distributed as dist

def vowel_share(text, record, n):
    return {"total": sum(c in "aeiou" for c in text) / max(1, len(text))}

ckpt, out = sys.argv[1], sys.argv[2]
model = DNALLMForConditionalGeneration.from_pretrained(ckpt, is_trainable=True)
cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=10, lr=1e-2, micro_batch_size=2,
                 gradient_checkpointing=False)
log = grpo_train(model, load_kegg("train").select(range(8)), cfg, out, reward_fn=vowel_share)
rank = dist.get_rank()
save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad},
          f"{out}/weights-rank{rank}.safetensors")
torch.save(log, f"{out}/log-rank{rank}.pt")
"""


def test_two_ranks_take_the_same_step_from_their_summed_gradients(tiny_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys

    build(tiny_dir).save_pretrained(tmp_path / "sft")
    (tmp_path / "runner.py").write_text(RANK_RUNNER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "grpo"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           str(tmp_path / "runner.py"), str(tmp_path / "sft"), str(out)],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0, w1 = load_file(out / "weights-rank0.safetensors"), load_file(out / "weights-rank1.safetensors")
    initial = trainable(build(tiny_dir))
    # each rank drew other prompts and sampled other completions, yet both hold the same weights after two steps,
    # and those moved: the steps used the gradient summed over both ranks
    assert w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)
    assert any(not torch.equal(w0[k], initial[k]) for k in w0 if k in initial)
    logs = [torch.load(out / f"log-rank{r}.pt") for r in (0, 1)]
    assert logs[0] == [{**e, "seconds": logs[0][i]["seconds"]} for i, e in enumerate(logs[1])]  # all-rank figures
    assert all(e["ranks"] == 2 and e["grad_norm"] > 0 for e in logs[0])
    state = out / "last"
    assert {"rng.pt", "rng-rank1.pt", "optimizer.pt", "trainer_state.json"} <= {p.name for p in state.iterdir()}


def test_grpo_entry_point_runs_on_two_ranks(tiny_dir, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    build(tiny_dir).save_pretrained(tmp_path / "sft")
    preset = {"model": {"dna_config": {"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
                        "text_model_name_or_path": str(tiny_dir / "text-model")},
              "grpo": {"steps": 1, "prompts_per_step": 2, "num_generations": 2, "max_new_tokens": 4,
                       "gradient_checkpointing": False}}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
                           str(root / "train/grpo.py"), "--model", str(tmp_path / "sft"), "--config",
                           str(tmp_path / "preset.yaml"), "--out", str(tmp_path / "out"), "--limit", "8"],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "grpo_log.json").read_text())
    assert result["finished"] and result["log"][0]["ranks"] == 2
    DNALLMForConditionalGeneration.from_pretrained(tmp_path / "out")  # rank 0 saved a loadable checkpoint


def test_the_grpo_entry_point_limit_cuts_each_training_view(tiny_dir, tmp_path, monkeypatch):
    """`train/grpo.py --limit N` keeps N rows of every view of the preset's mix (the rows GRPO would train on are
    captured at grpo_train; the training itself is tested above)."""
    import runpy
    import sys
    from pathlib import Path

    import yaml

    import dnallm.grpo

    build(tiny_dir).save_pretrained(tmp_path / "sft")
    preset = {"model": {"dna_config": {"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
                        "text_model_name_or_path": str(tiny_dir / "text-model")},
              "data": {"views": {"kegg": 1.0, "kegg_hard": 1.0}}, "grpo": {"steps": 1}}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    seen = []
    monkeypatch.setattr(dnallm.grpo, "grpo_train", lambda model, records, cfg, out, **kw: seen.append(records))
    monkeypatch.setattr(sys, "argv", ["grpo.py", "--model", str(tmp_path / "sft"), "--config",
                                      str(tmp_path / "preset.yaml"), "--out", str(tmp_path / "out"), "--limit", "3"])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "train/grpo.py"), run_name="__main__")
    (records,) = seen
    assert list(records["view"]) == ["kegg"] * 3 + ["kegg_hard"] * 3
    assert list(records["row"]) == [0, 1, 2] * 2
