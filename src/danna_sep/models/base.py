"""The contract every separation network keeps, and what each one knows about itself.

A network is a `SeparationModel`: a pure `nn.Module` whose class says what kind of network
it is, whose instances say what they estimate, and which answers for itself where networks
differ, so that no code outside `models/` ever asks for a network by its name.

Per class, set in the class body:

- `name`: the registry name (bundles, checkpoints and configs store it);
- `network`: what it is, in words;
- `input_domain`: "magnitude" `(batch, channels, bins, frames)` or "waveform"
  `(batch, channels, samples)`;
- `output_kind`: "mask" `(batch, sources, channels, bins, frames)`, "magnitude" (one
  target, the input's shape) or "waveform" `(batch, sources, channels, samples)`;
- `takes_input_statistics`: whether `set_input_statistics` is implemented;
- `original_file`, `original_onnx`: its file in the original Danna-Sep tool's checkpoint
  folder (TorchScript) and that file's ONNX form, or None;
- `original_chunk_frames`: frames per call in the original tool's separation (None: the
  whole track in one call).

Per instance, set by the constructor: `sources`, `samplerate`, `audio_channels`,
`input_bins` (bins of the magnitude it reads) and `output_bins` (bins whose output it
learns). `config` holds the constructor's arguments, every default filled in, captured
without the constructor's help: `type(model)(**model.config)` builds the same network.

Hooks, where networks differ: `set_input_statistics`, `adopt_state` (a state dict in an
upstream layout) and `original_kwargs` (constructor arguments that fit a file of the
original tool).

TorchScript keeps a module's instance attributes only, so the class's `input_domain`,
`output_kind` and `original_chunk_frames` are copied onto each instance: a scripted model
still states its contract. `contract_of` reads the contract from any module.

A `TargetGroup` holds single-target models of one network, one per source (Open-Unmix's
four targets): a bundle member whose magnitude estimates the engine joins before one
Wiener filter, since a target filtered alone would get the whole mixture back.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Literal, Mapping, Optional, Sequence

import torch
from torch import nn

from .. import SAMPLERATE
from ..schema import plain

InputDomain = Literal["magnitude", "waveform"]
OutputKind = Literal["mask", "magnitude", "waveform"]
INPUT_DOMAINS = ("magnitude", "waveform")
OUTPUT_KINDS = ("mask", "magnitude", "waveform")


def _capturing(init: Callable[..., None]) -> Callable[..., None]:
    """`init`, wrapped so that the outermost constructor of a model records its arguments."""
    signature = inspect.signature(init)
    if any(p.kind is p.VAR_POSITIONAL for p in signature.parameters.values()):
        raise TypeError(f"{init.__qualname__}: a model's arguments are stored by name; *args cannot be")

    @functools.wraps(init)  # keeps the source reachable: TorchScript reads it
    def wrapper(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        # A subclass's constructor returns last, so its record replaces its parent's.
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        config: Dict[str, Any] = {}
        for key, value in list(bound.arguments.items())[1:]:
            if signature.parameters[key].kind is inspect.Parameter.VAR_KEYWORD:
                config.update(value)
            else:
                config[key] = value
        self.config = plain(config)  # as JSON gives it back: what a bundle or checkpoint holds

    return wrapper


class SeparationModel(nn.Module):
    """Base of every registered network (see the module docstring for the contract)."""

    # What kind of network the class is.
    name: str = ""
    network: str = ""
    input_domain: str = "magnitude"
    output_kind: str = "mask"
    takes_input_statistics: bool = False
    original_file: Optional[str] = None
    original_onnx: Optional[str] = None
    original_chunk_frames: Optional[int] = None

    # What an instance estimates, set by each constructor.
    sources: List[str]
    samplerate: int
    audio_channels: int
    input_bins: int = 0
    output_bins: int = 0

    # The constructor's arguments; not for TorchScript, which cannot type them.
    config: Dict[str, Any]
    __jit_ignored_attributes__ = ["config"]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.input_domain not in INPUT_DOMAINS:
            raise TypeError(f"{cls.__name__}.input_domain: {cls.input_domain!r} is not one of {INPUT_DOMAINS}")
        if cls.output_kind not in OUTPUT_KINDS:
            raise TypeError(f"{cls.__name__}.output_kind: {cls.output_kind!r} is not one of {OUTPUT_KINDS}")
        if "__init__" in cls.__dict__:
            cls.__init__ = _capturing(cls.__dict__["__init__"])  # type: ignore[method-assign]

    def __init__(self) -> None:
        super().__init__()
        self.input_domain = type(self).input_domain
        self.output_kind = type(self).output_kind
        self.original_chunk_frames = type(self).original_chunk_frames

    # --- hooks ---------------------------------------------------------------------------

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Normalise inputs by a training set's magnitude statistics, mean and std `(bins,)`
        of at least `input_bins` bins (only where `takes_input_statistics`)."""
        raise NotImplementedError(f"{self.name} has no input normalisation to set")

    def adopt_state(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """`state` under this class's parameter names: a state dict in an upstream layout
        this network knows is converted, any other is returned as it is."""
        return dict(state)

    @classmethod
    def original_kwargs(cls, state: Mapping[str, torch.Tensor], scripted: Any) -> Dict[str, Any]:
        """Constructor arguments that fit `state`, the state dict of `scripted`, a TorchScript
        module loaded from this network's `original_file`."""
        raise NotImplementedError(f"{cls.name} has no file in the original tool")


@dataclass(frozen=True)
class Contract:
    """What the inference engine reads of a model."""

    sources: List[str]
    input_domain: InputDomain
    output_kind: OutputKind
    samplerate: int
    original_chunk_frames: Optional[int]


def contract_of(model: nn.Module) -> Contract:
    """The contract of one of our models, a TorchScript module of one, or any module that
    carries `sources`, `input_domain` and `output_kind` (`samplerate` defaults to the
    package's, `original_chunk_frames` to None)."""
    try:
        sources = list(model.sources)
        domain, kind = str(model.input_domain), str(model.output_kind)
    except AttributeError as exc:
        raise TypeError(f"{type(model).__name__} states no separation contract ({exc})") from None
    if domain not in INPUT_DOMAINS or kind not in OUTPUT_KINDS:
        raise TypeError(f"{type(model).__name__}: input {domain!r} / output {kind!r} is not a known contract")
    if kind == "magnitude" and len(sources) != 1:
        raise TypeError(f"{type(model).__name__}: a magnitude output is one target's, not {len(sources)}")
    chunk = getattr(model, "original_chunk_frames", None)
    return Contract(sources, domain, kind, int(getattr(model, "samplerate", SAMPLERATE)),  # type: ignore[arg-type]
                    None if chunk is None else int(chunk))


class TargetGroup(nn.ModuleList):
    """Single-target models of one network, one per source, run as one bundle member: the
    engine joins their magnitude estimates `(batch, channels, bins, frames)` each into
    `(batch, sources, channels, bins, frames)` before one Wiener filter.

    Not a network itself (nothing to call): `targets` are its models, `sources` theirs in order.
    """

    # A group has no file in the original tool (export_original asks).
    original_file: Optional[str] = None
    original_onnx: Optional[str] = None
    input_domain = "magnitude"
    output_kind = "magnitude"

    def __init__(self, targets: Sequence[SeparationModel]):
        super().__init__(targets)
        if not targets:
            raise ValueError("a target group needs at least one model")
        contracts = [contract_of(model) for model in targets]
        kinds = {(c.input_domain, c.output_kind) for c in contracts}
        if kinds != {("magnitude", "magnitude")}:
            raise ValueError("a target group joins single-target magnitude models only, not "
                             + ", ".join(f"{d} -> {k}" for d, k in sorted(kinds)))
        names = sorted({str(getattr(model, "name", type(model).__name__)) for model in targets})
        if len(names) != 1:
            raise ValueError(f"a target group holds one network, not {', '.join(names)}")
        self.name: str = names[0]
        self.sources: List[str] = [c.sources[0] for c in contracts]
        twice = sorted({s for s in self.sources if self.sources.count(s) > 1})
        if twice:
            raise ValueError(f"a target group holds one model per source; {', '.join(twice)} has several")
        rates = {c.samplerate for c in contracts}
        if len(rates) != 1:
            raise ValueError(f"a target group's models work at one sample rate, not {sorted(rates)}")
        self.samplerate: int = rates.pop()

    @property
    def targets(self) -> List[SeparationModel]:
        return list(self)
