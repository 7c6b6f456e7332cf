import pytest
import torch

from dnallm.data import load_kegg
from dnallm.grpo import GRPOConfig, _completion_mask, grpo_train
from dnallm.rewards import correctness_reward, format_reward, length_reward, total_reward
from test_model import build

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


def test_completion_mask_stops_after_first_eos():
    c = torch.tensor([[5, 6, 9, 0, 0], [5, 5, 5, 5, 5]])
    assert _completion_mask(c, 9).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_runs_two_steps_on_the_tiny_model(tiny_dir, tmp_path, beta):
    model = build(tiny_dir)
    sft = tmp_path / "sft"
    model.save_pretrained(sft)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_new_tokens=12, lr=1e-2, beta=beta,
                     length_target=4, length_limit=12)
    records = load_kegg("train").select(range(8))
    # built-in rewards: a random tiny model never writes a valid answer, so every total is the same
    grpo_train(build(tiny_dir), records, GRPOConfig(steps=1, prompts_per_step=1, num_generations=2,
                                                    max_new_tokens=4), tmp_path / "builtin")
    # a custom reward that varies between samples, so advantages are non-zero and the weights must move
    vowel_share = lambda text, record, n: {"total": sum(c in "aeiou" for c in text) / max(1, len(text))}
    log = grpo_train(model, records, cfg, tmp_path / "grpo", reference_adapter=sft / "adapter" if beta else None,
                     reward_fn=vowel_share)
    assert [e["step"] for e in log] == [1, 2] and all(torch.isfinite(torch.tensor(e["loss"])) for e in log)
    changed = [n for n, p in model.named_parameters() if n in before and not torch.equal(before[n], p)]
    assert changed
    assert (tmp_path / "grpo" / "adapter" / "adapter_model.safetensors").exists()
    if beta:
        assert log[-1]["kl"] >= 0.0
