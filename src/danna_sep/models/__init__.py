"""The model registry: a name for each network, and `build(name, **kwargs)`.

Models are pure `nn.Module`s: they take tensors and return tensors, never read files,
never chunk a track and never pick a device. Each is a `SeparationModel` (models/base.py)
that carries its contract and its constructor arguments (`model.config`), and answers for
itself where networks differ. Adding a network is its file and one line in `_MODELS`.

The original Danna-Sep system lives here too: its blend tables name the networks it blends.
"""

from typing import Any, Dict, List, Type

from torch import nn

from .base import INPUT_DOMAINS, OUTPUT_KINDS, Contract, SeparationModel, TargetGroup, contract_of
from .common import SOURCES
from .demucs import DemucsSplit, DemucsV1
from .umx import OpenUnmix
from .unet import UNetAttn
from .xumx import XUMX

_MODELS = (
    XUMX,
    UNetAttn,
    DemucsSplit,
    OpenUnmix,
    DemucsV1,
)
_REGISTRY: Dict[str, Type[SeparationModel]] = {cls.name: cls for cls in _MODELS}

# The paper's blend (SPEC-models.md): model -> source -> weight; each source sums to 1.
PAPER_BLEND = {
    "xumx": {"drums": 0.2, "bass": 0.1, "other": 0.0, "vocals": 0.2},
    "unet_attn": {"drums": 0.2, "bass": 0.17, "other": 0.5, "vocals": 0.4},
    "demucs_split": {"drums": 0.6, "bass": 0.73, "other": 0.5, "vocals": 0.4},
}
# The original tool's --fast: the U-Net and Demucs only.
FAST_BLEND = {
    "unet_attn": {"drums": 0.4, "bass": 0.27, "other": 0.5, "vocals": 0.6},
    "demucs_split": {"drums": 0.6, "bass": 0.73, "other": 0.5, "vocals": 0.4},
}


def names() -> List[str]:
    """Registered model names, in registry order."""
    return list(_REGISTRY)


def get(name: str) -> Type[SeparationModel]:
    """The class registered under `name`."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):  # TypeError: a name that is not a string (a hand-edited manifest)
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}") from None


def build(name: str, **kwargs: Any) -> SeparationModel:
    """A new model of the registered kind `name`, built with `kwargs`."""
    return get(name)(**kwargs)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["SOURCES", "build", "get", "names", "parameter_count", "SeparationModel", "Contract", "contract_of",
           "TargetGroup",
           "INPUT_DOMAINS", "OUTPUT_KINDS", "PAPER_BLEND", "FAST_BLEND",
           "XUMX", "UNetAttn", "DemucsSplit", "OpenUnmix", "DemucsV1"]
