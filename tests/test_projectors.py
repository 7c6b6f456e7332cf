import pytest
import torch

from projectors import PROJECTORS, build_projector
from projectors.pooling import pool_positions


@pytest.mark.parametrize("kind", ["linear", "mlp"])
@pytest.mark.parametrize("stride", [1, 4])
def test_shapes_and_token_counts(kind, stride):
    proj = build_projector(kind, 8, 16, stride=stride)
    hidden, mask = torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool)
    out, out_mask = proj(hidden, mask)
    assert out.shape == (3, proj.num_tokens(10), 16) and out_mask.all()
    assert proj.num_tokens(1024) == 1024 // stride


def test_mlp_is_two_linear_layers_with_gelu():
    proj = build_projector("mlp", 8, 16)
    kinds = [type(m).__name__ for m in proj.net]
    assert kinds.count("Linear") == 2 and "GELU" in kinds


def test_pooling_ignores_padding():
    hidden = torch.arange(12, dtype=torch.float).view(1, 6, 2)
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    pooled, pooled_mask = pool_positions(hidden, mask, 4)
    assert pooled_mask.tolist() == [[True, True]]
    torch.testing.assert_close(pooled[0, 0], hidden[0, :4].mean(0))
    torch.testing.assert_close(pooled[0, 1], hidden[0, 4])  # the padded position is left out
    _, all_pad = pool_positions(hidden, torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool), 4)
    assert all_pad.tolist() == [[True, False]]


def test_unknown_projector():
    assert {"linear", "mlp"} <= set(PROJECTORS)
    with pytest.raises(ValueError, match="unknown projector 'qformer9'"):
        build_projector("qformer9", 4, 4)
