"""torch state_dicts ⇄ fedchain Weights (numpy arrays in the model's order), both ways."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from ..errors import InvalidModel
from .codec import Weights

if TYPE_CHECKING:
    import torch


def from_state_dict(state_dict: Mapping[str, torch.Tensor]) -> Weights:
    """Weights (numpy copies, same order) of a torch state_dict."""
    import torch

    weights: Weights = {}
    for name, tensor in state_dict.items():
        if tensor.dtype == torch.bfloat16:
            raise InvalidModel(f"layer {name}: bfloat16 has no numpy dtype; cast the model first")
        weights[name] = tensor.detach().cpu().numpy().copy()
    return weights


def to_state_dict(weights: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A torch state_dict (same order) of weights, for `module.load_state_dict`."""
    import torch

    return {name: torch.from_numpy(np.ascontiguousarray(a)) for name, a in weights.items()}
