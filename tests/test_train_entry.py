"""train/sft.py runs the same loop under DeepSpeed (ZeRO-2, gloo on CPU) as the plain-torch quickstart."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dnallm.modeling import DNALLMForConditionalGeneration

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("zero_config", ["zero2.json", "zero3.json"])
def test_sft_entry_point_under_deepspeed(zero_config, tiny_dir, tmp_path):
    zero = json.loads((ROOT / "train/configs" / zero_config).read_text())
    zero["bf16"] = {"enabled": False}  # CPU: fp32 (the GPU presets keep bf16)
    (tmp_path / "zero.json").write_text(json.dumps(zero))
    preset = {"model": {"dna_config": {"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
                        "text_model_name_or_path": str(tiny_dir / "text-model"), "projector_type": "mlp",
                        "projector_stride": 32, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0},
              "sft": {"epochs": 1.0, "batch_size": 4, "deepspeed": str(tmp_path / "zero.json"), "log_every": 1}}
    (tmp_path / "preset.yaml").write_text(yaml.safe_dump(preset))
    env = {**os.environ, "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port())}
    out = tmp_path / "ckpt"
    proc = subprocess.run([sys.executable, str(ROOT / "train/sft.py"), "--config", str(tmp_path / "preset.yaml"),
                           "--out", str(out), "--limit", "8"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["deepspeed"].endswith("zero.json")
    model = DNALLMForConditionalGeneration.from_pretrained(out)  # the DeepSpeed-trained checkpoint loads like any other
    assert model.config.projector_stride == 32
    assert all(p.numel() > 0 for p in model.projector.parameters())  # ZeRO-3 weights were gathered for saving
    # Trainer port: DeepSpeed's checkpoint is Trainer's checkpoint-N/global_stepN (was last/deepspeed/last)
    assert [p for p in (out / "last").glob("global_step*") if p.is_dir()]


def test_sft_entry_point_trains_the_packaged_tiny_preset_on_stand_ins_next_to_its_out(tiny_dir, tmp_path):
    for part in ("encoder", "text-model"):  # where a quickstart run leaves them: DIR/encoder, DIR/text-model
        (tmp_path / part).symlink_to(tiny_dir / part)
    out = tmp_path / "sft2"
    proc = subprocess.run([sys.executable, str(ROOT / "train/sft.py"), "--config", "tiny", "--out", str(out),
                           "--limit", "4"], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    # the packaged preset's settings, its stand-ins found relative to the checkpoint folder
    assert (config["dna_config"]["encoder_name_or_path"], config["dna_config"]["layer"], config["projector_stride"]) == \
        ("../encoder", 2, 64)
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["train_examples"] == 4 * 16  # each row: kegg x (1 reasoning + 2 direct + 1 distractor), kegg_hard x 12 direct
    DNALLMForConditionalGeneration.from_pretrained(out)


def test_sft_entry_point_uses_the_gpu_without_deepspeed(monkeypatch, tmp_path):
    """One GPU runs without DeepSpeed (`sft.deepspeed: null`, the measured single-GPU setting): the script kept the
    model on the CPU in fp32 unless DeepSpeed was on. CUDA is faked; the model build is stubbed at the move."""
    import runpy

    import torch

    class Moved(Exception):
        pass

    class Stub:
        def add_lora(self):
            pass

        def to(self, device):
            raise Moved(device)

    built = {}

    def build(cls, config, dtype=None, base_dir=None):
        built["dtype"] = dtype
        return Stub()

    preset = yaml.safe_load((ROOT / "train" / "configs" / "genos-1.2b_qwen3-4b.yaml").read_text())
    preset["sft"]["deepspeed"] = None
    (tmp_path / "one_gpu.yaml").write_text(yaml.safe_dump(preset))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: built.setdefault("set_device", device))
    monkeypatch.setattr(DNALLMForConditionalGeneration, "build", classmethod(build))
    monkeypatch.setattr(sys, "argv", ["train/sft.py", "--config", str(tmp_path / "one_gpu.yaml"), "--out",
                                      str(tmp_path / "out")])
    with pytest.raises(Moved) as moved:
        runpy.run_path(str(ROOT / "train" / "sft.py"), run_name="__main__")
    assert str(moved.value.args[0]) == "cuda:0" and str(built["set_device"]) == "cuda:0"
    assert built["dtype"] == (torch.bfloat16 if preset["sft"].get("bf16") else None)
