"""1D convolutions run as channels-last 2D ones, for inference on the CPU.

oneDNN convolves (batch, channels, 1, time) tensors in channels-last memory several times
faster than torch's `conv1d` on (batch, channels, time) (Demucs' 48 -> 192 channel conv
over 220,500 steps: 71 ms against 538 in bfloat16, 186 against 387 in float32, one
thread), and that layout is (batch, time, channels) in memory: the activations of a 1D
network stay in it from one convolution to the next, through its elementwise layers,
without copies. Only copies of models that separate are converted (`ModelRunner`); a
converted model computes the same function up to rounding, but its convolutions' weights
gain a dimension.

In bfloat16 each convolution first checks itself against float32 arithmetic on a small
random probe, and computes in float32 if it disagrees: oneDNN 3.12 (torch 2.13) returns
wrong results for strided bfloat16 convolutions of 16 or 24 input channels on CPUs with
AMX (the default Demucs' `Conv1d(16, 32, 8, stride=4)`: relative error 1.1, for
bfloat16's 0.002), in `conv1d` and channels-last `conv2d` alike.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


class ChannelsLastConv1d(nn.Module):
    """A `Conv1d` or `ConvTranspose1d` (its weights and settings) computed by the 2D
    convolution of height 1 in channels-last memory. Input `(batch, channels, time)` in
    any layout; output `(batch, out_channels, time')`, laid out time-major."""

    transposed: bool
    groups: int
    agrees: Optional[bool]

    def __init__(self, conv: Union[nn.Conv1d, nn.ConvTranspose1d]):
        super().__init__()
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros":
            raise ValueError("only zero padding given as a number converts")
        self.transposed = isinstance(conv, nn.ConvTranspose1d)
        weight = conv.weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias: Optional[nn.Parameter] = (
            None if conv.bias is None else nn.Parameter(conv.bias.detach().clone(), requires_grad=False))
        self.stride: Tuple[int, int] = (1, conv.stride[0])
        self.padding: Tuple[int, int] = (0, int(conv.padding[0]))
        self.dilation: Tuple[int, int] = (1, conv.dilation[0])
        self.output_padding: Tuple[int, int] = (0, conv.output_padding[0]) if self.transposed else (0, 0)
        self.groups = conv.groups
        self.agrees = None  # bfloat16 against float32 on a probe: checked at the first bfloat16 call

    def _convolve(self, planes: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(planes, weight, bias, self.stride, self.padding, self.output_padding,
                                      self.groups, self.dilation)
        return F.conv2d(planes, weight, bias, self.stride, self.padding, self.dilation, self.groups)

    def _in_float32(self, planes: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias.float()
        return self._convolve(planes.float(), self.weight.float(), bias).to(planes.dtype)

    def _check(self, like: torch.Tensor) -> bool:
        """Whether this convolution in bfloat16 matches float32 arithmetic on the same numbers."""
        generator = torch.Generator().manual_seed(0)
        steps = 64 * self.stride[1] + self.dilation[1] * (self.weight.shape[-1] - 1) + 1
        channels = self.weight.shape[0] if self.transposed else self.weight.shape[1] * self.groups
        probe = torch.randn((1, channels, 1, steps), generator=generator).to(like.device, like.dtype)
        probe = probe.contiguous(memory_format=torch.channels_last)
        got = self._convolve(probe, self.weight, self.bias).float()
        reference = self._convolve(probe.float(), self.weight.float(),
                                   None if self.bias is None else self.bias.float())
        error = torch.linalg.vector_norm(got - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-30)
        return bool(error < 2e-2)  # bfloat16 rounding alone gives about 3e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # no copy when time-major
        if planes.dtype == torch.bfloat16:
            if self.agrees is None:
                self.agrees = self._check(planes)
                if not self.agrees:
                    log.debug("a bfloat16 convolution (%s) disagrees with float32 here: computed in float32",
                             tuple(self.weight.shape))
            if not self.agrees:
                return self._in_float32(planes).squeeze(2)
        return self._convolve(planes, self.weight, self.bias).squeeze(2)


@torch.no_grad()
def conv1d_to_channels_last(model: nn.Module) -> int:
    """Replace, in place, every `Conv1d` and `ConvTranspose1d` of `model` by a
    `ChannelsLastConv1d`; returns how many. Convolutions called through `torch.nn.functional`
    (a resampler's fixed filter) are left as they are."""
    converted = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (nn.Conv1d, nn.ConvTranspose1d)):
                setattr(parent, name, ChannelsLastConv1d(child))
                converted += 1
    return converted
