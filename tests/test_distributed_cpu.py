"""Two DeepSpeed ranks on CPU (gloo) train, stop mid-epoch, and the run resumes on one rank (resharded) or on two
(then with the weights, and the weights' EMA, of an uninterrupted run)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(ranks: int, preset: Path, out: Path):
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_port())}
    if ranks == 1:
        cmd = [sys.executable, str(ROOT / "train/sft.py")]
        env.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={ranks}",
               f"--master_port={env['MASTER_PORT']}", str(ROOT / "train/sft.py")]
    proc = subprocess.run(cmd + ["--config", str(preset), "--out", str(out), "--limit", "16"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((out / "train_summary.json").read_text())


@pytest.mark.slow  # 145 s for both cases on 2 cores
@pytest.mark.parametrize("first,second", [(2, 1), (2, 2)])
def test_checkpoint_moves_between_world_sizes(first, second, tiny_dir, tmp_path):
    zero = json.loads((ROOT / "train/configs/zero2.json").read_text())
    zero["bf16"] = {"enabled": False}
    (tmp_path / "zero.json").write_text(json.dumps(zero))
    model = {"dna_config": {"encoder_type": "genos", "encoder_name_or_path": str(tiny_dir / "encoder")},
             "text_model_name_or_path": str(tiny_dir / "text-model"), "projector_type": "mlp",
             "projector_stride": 32, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0}
    sft = {"epochs": 1.0, "batch_size": 2, "deepspeed": str(tmp_path / "zero.json"), "save_every": 1,
           "tensorboard": False}
    for name, extra in (("stop", {"stop_after_steps": 2}), ("resume", {"resume": True})):
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump({"model": model, "sft": {**sft, **extra}}))
    out = tmp_path / "run"
    part = _run(first, tmp_path / "stop.yaml", out)
    assert part["steps"] == 2 and not part["finished"]
    assert json.loads((out / "last/world_size.json").read_text())["world_size"] == first
    done = _run(second, tmp_path / "resume.yaml", out)
    # 16 examples / batch 2 = 8 batches per epoch, shared by the ranks
    assert done["finished"] and done["steps"] == 8 // second
    assert json.loads((out / "last/world_size.json").read_text())["world_size"] == second
    if first == second:  # same world size: the resumed run ends with the weights of an uninterrupted one
        (tmp_path / "full.yaml").write_text(yaml.safe_dump({"model": model, "sft": sft}))
        _run(first, tmp_path / "full.yaml", tmp_path / "full")
        for folder in ("last", "."):  # the last weights, and the best checkpoint at the top
            resumed, full = _weights(out / folder), _weights(tmp_path / "full" / folder)
            assert resumed.keys() == full.keys() and len(full) > 1
            for k in full:
                assert torch.equal(resumed[k], full[k]), (folder, k)


def _weights(path: Path) -> dict:
    from safetensors.torch import load_file

    weights = dict(load_file(path / "projector.safetensors"))
    weights.update({f"lora.{k}": v for k, v in load_file(path / "adapter" / "adapter_model.safetensors").items()})
    return weights
