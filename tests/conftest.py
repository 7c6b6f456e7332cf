"""Shared fixtures: tiny pretrained stand-in models built once per test session (about 15 s on 2 cores)."""

from __future__ import annotations

import copy

import pytest

from dnallm.data import load_kegg
from dnallm.quickstart import build_tiny_models, load_preset, run_quickstart


def mini_preset() -> dict:
    """The tiny preset cut down further so that tests build and train in seconds."""
    p = copy.deepcopy(load_preset("tiny"))
    p["dna_pretrain"].update(steps=3, batch_size=4)
    p["dna_pretrain"]["layout"].update(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    p["text_pretrain"].update(epochs=0.25, batch_size=8)
    p["text_pretrain"]["layout"].update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, head_dim=16)
    p["sft"].update(epochs=1.0, batch_size=4, log_every=1000)
    p["eval"].update(batch_size=8, max_new_tokens=24)
    return p


@pytest.fixture(scope="session")
def kegg_train():
    return load_kegg("train")


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, kegg_train):
    """A folder with `encoder/` (Genos-layout DNA LM) and `text-model/` (Qwen3-layout LM + pruned tokenizer)."""
    out = tmp_path_factory.mktemp("tiny")
    build_tiny_models(out, kegg_train.select(range(32)), mini_preset())
    return out


@pytest.fixture(scope="session")
def quickstart_dir(tmp_path_factory):
    """A cut-down quickstart run (24 rows per split): its folder, with the checkpoint in `model/`, and result."""
    out = tmp_path_factory.mktemp("qs")
    result = run_quickstart(out, preset=mini_preset(), limit=24)
    return out, result
