"""Every named preset under train/configs parses into the objects the entry points build."""

import json
from pathlib import Path

import pytest
import yaml

from dnallm.configuration import DNALLMConfig
from dnallm.encoders import ENCODERS
from dnallm.grpo import GRPOConfig
from dnallm.quickstart import load_preset
from dnallm.training import SFTConfig

ROOT = Path(__file__).resolve().parents[1]
PRESETS = sorted((ROOT / "train/configs").glob("*.yaml"))
SEED_COMBOS = {f"{e}_{t}" for e in ("genos-1.2b", "genos-10b", "evo2-1b", "nt-500m", "hyenadna")
               for t in ("qwen3-1.7b", "qwen3-4b")}


def test_one_preset_per_seed_combination_and_one_tiny_preset():
    # the tiny preset lives once, packaged (dnallm/presets/tiny.yaml): the quickstart, train/sft.py --config tiny
    # and the tests all read that file
    assert {p.stem for p in PRESETS} == SEED_COMBOS
    assert load_preset("tiny") == yaml.safe_load((ROOT / "dnallm/presets/tiny.yaml").read_text())
    with pytest.raises(ValueError, match="unknown preset 'small'.*tiny"):
        load_preset("small")
    with pytest.raises(FileNotFoundError, match="no preset file"):
        load_preset("train/configs/missing.yaml")


@pytest.mark.parametrize("path", PRESETS + ["tiny"], ids=[p.stem for p in PRESETS] + ["tiny"])
def test_preset_parses(path):
    preset = load_preset(path)
    config = DNALLMConfig(**preset["model"])
    assert config.dna_config.encoder_type in ENCODERS
    assert config.lora_r in (4, 8, 16, 32, 64) and config.lora_alpha == 2 * config.lora_r
    assert config.projector_type in ("linear", "mlp")
    sft = SFTConfig.from_dict(preset["sft"])
    # numbers, not strings: YAML reads "2e-4" (no dot) as a string, which the optimizer would reject only at run time
    for name in ("lr_projector", "lr_lora", "epochs"):
        assert type(getattr(sft, name)) in (int, float), name
    assert 1e-5 <= sft.lr_lora <= sft.lr_projector <= 1e-2 and 0.5 <= sft.epochs <= 5
    GRPOConfig(**preset.get("grpo", {}))
    if sft.deepspeed:
        ds = json.loads((ROOT / sft.deepspeed).read_text())
        assert ds["bf16"]["enabled"] and ds["zero_optimization"]["stage"] in (2, 3)
    if str(path).split("/")[-1].startswith("genos-10b"):
        assert sft.deepspeed.endswith("zero3.json")  # 10B encoder + 4B LM: parameters sharded


def test_a_preset_with_an_unknown_section_or_key_is_refused_naming_it(tmp_path):
    tiny = load_preset("tiny")
    for broken, message in (
            ({**tiny, "modle": {}}, r"unknown section 'modle'"),
            ({**tiny, "model": {**tiny["model"], "lora_rank": 8}}, r"unknown key\(s\) \['lora_rank'\] in section 'model'"),
            ({**tiny, "model": {**tiny["model"], "dna_config": {"encoder": "genos"}}},
             r"unknown key\(s\) \['encoder'\] in section 'model.dna_config'"),
            ({**tiny, "sft": {**tiny["sft"], "epoch": 2}}, r"unknown key\(s\) \['epoch'\] in section 'sft'"),
            ({"sft": tiny["sft"]}, "at least a 'model' section")):
        path = tmp_path / "broken.yaml"
        path.write_text(yaml.safe_dump(broken))
        with pytest.raises(ValueError, match=message) as error:
            load_preset(path)
        assert str(path) in str(error.value)
