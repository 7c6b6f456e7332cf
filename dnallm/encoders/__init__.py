"""DNA encoders behind one interface, built by name (`build_encoder("genos", "ZhejiangLab/Genos-1.2B")`)."""

from __future__ import annotations

from dnallm.encoders.base import DNAEncoder, LoadingError
from dnallm.encoders.genos import GenosEncoder, genos_config
from dnallm.encoders.hf import HFEncoder

ENCODERS: dict[str, type[DNAEncoder]] = {"genos": GenosEncoder, "hf": HFEncoder}


def build_encoder(kind: str, name_or_path: str, layer: int = -1, **kwargs) -> DNAEncoder:
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder type {kind!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[kind].from_pretrained(name_or_path, layer=layer, **kwargs)


__all__ = ["DNAEncoder", "LoadingError", "GenosEncoder", "HFEncoder", "ENCODERS", "build_encoder", "genos_config"]
