"""1D convolutions run as channels-last 2D ones, for inference on the CPU.

oneDNN convolves (batch, channels, 1, time) tensors in channels-last memory several times
faster than torch's `conv1d` on (batch, channels, time) (Demucs' 48 -> 192 channel conv
over 220,500 steps: 71 ms against 538 in bfloat16, 186 against 387 in float32, one
thread), and that layout is (batch, time, channels) in memory: the activations of a 1D
network stay in it from one convolution to the next, through its elementwise layers,
without copies. Only copies of models that separate are converted (`ModelRunner`); a
converted model computes the same function up to rounding, but its convolutions' weights
gain a dimension.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn


class ChannelsLastConv1d(nn.Module):
    """A `Conv1d` or `ConvTranspose1d` (its weights and settings) computed by the 2D
    convolution of height 1 in channels-last memory. Input `(batch, channels, time)` in
    any layout; output `(batch, out_channels, time')`, laid out time-major."""

    transposed: bool
    groups: int

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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        planes = x.unsqueeze(2).contiguous(memory_format=torch.channels_last)  # no copy when time-major
        if self.transposed:
            out = F.conv_transpose2d(planes, self.weight, self.bias, self.stride, self.padding,
                                     self.output_padding, self.groups, self.dilation)
        else:
            out = F.conv2d(planes, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return out.squeeze(2)


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
