"""DNA encoders behind one interface, built by name (`build_encoder("genos", "ZhejiangLab/Genos-1.2B")`).

Each encoder module has HUB_IDS (short aliases -> hub ids); Evo2 also DEFAULT_LAYERS (model -> the layer to use).
"""

from __future__ import annotations

from dnallm.encoders.base import DNAEncoder, LoadingError
from dnallm.encoders.evo2 import Evo2Encoder
from dnallm.encoders.genos import GenosEncoder, genos_config
from dnallm.encoders.hf import HFEncoder
from dnallm.encoders.hyenadna import HyenaDNAEncoder
from dnallm.encoders.nt import NTEncoder

ENCODERS: dict[str, type[DNAEncoder]] = {"genos": GenosEncoder, "hf": HFEncoder, "nt": NTEncoder,
                                         "hyenadna": HyenaDNAEncoder, "evo2": Evo2Encoder}


def build_encoder(kind: str, name_or_path: str, layer: int | str | None = None, **kwargs) -> DNAEncoder:
    """layer None: the encoder's default (the last hidden layer; for Evo2 its DEFAULT_LAYERS entry)."""
    if kind not in ENCODERS:
        raise ValueError(f"unknown encoder type {kind!r}; known: {sorted(ENCODERS)}")
    if layer is not None:
        kwargs["layer"] = layer
    return ENCODERS[kind].from_pretrained(name_or_path, **kwargs)


__all__ = ["DNAEncoder", "LoadingError", "GenosEncoder", "HFEncoder", "NTEncoder", "HyenaDNAEncoder",
           "Evo2Encoder", "ENCODERS", "build_encoder", "genos_config"]
