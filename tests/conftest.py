"""Shared fixtures: tiny pretrained stand-in models built once per test session (about 15 s on 2 cores)."""

from __future__ import annotations

import pytest

from dnallm.data import load_kegg
from dnallm.quickstart import build_tiny_models, run_quickstart
from helpers import mini_preset


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
