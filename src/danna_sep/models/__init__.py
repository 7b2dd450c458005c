"""The model registry: a name for each network, and `build(name, **kwargs)`.

Models are pure `nn.Module`s: they take tensors and return tensors, never read files,
never chunk a track and never pick a device. Each carries its I/O contract as attributes:
`sources`, `samplerate`, `audio_channels`, `input_domain` ("magnitude" or "waveform") and
`output_kind` ("mask", "magnitude" or "waveform").
"""

from typing import Any, Dict, List, Type

from torch import nn

from .common import SOURCES
from .demucs import DemucsSplit, DemucsV1
from .umx import OpenUnmix
from .unet import UNetAttn
from .xumx import XUMX

_REGISTRY: Dict[str, Type[nn.Module]] = {
    "xumx": XUMX,
    "unet_attn": UNetAttn,
    "demucs_split": DemucsSplit,
    "umx": OpenUnmix,
    "demucs_v1": DemucsV1,
}


def names() -> List[str]:
    """Registered model names, in registry order."""
    return list(_REGISTRY)


def get(name: str) -> Type[nn.Module]:
    """The class registered under `name`."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(_REGISTRY)}") from None


def build(name: str, **kwargs: Any) -> nn.Module:
    """A new model of the registered kind `name`, built with `kwargs`."""
    return get(name)(**kwargs)


def parameter_count(model: nn.Module) -> int:
    """Number of parameters (buffers excluded)."""
    return sum(p.numel() for p in model.parameters())


__all__ = ["SOURCES", "build", "get", "names", "parameter_count",
           "XUMX", "UNetAttn", "DemucsSplit", "OpenUnmix", "DemucsV1"]
