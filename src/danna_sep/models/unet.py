"""The Danna-Sep U-Net: D3 blocks (multi-dilated dense convolutions) and 2D local attention.

Module and parameter names follow the original model so that the state dict of its
TorchScript file loads with `strict=True`.
"""

from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn
import torch.nn.functional as F

from .base import SeparationModel
from .common import SAMPLERATE, SOURCES
from .fusion import norm_scale_and_shift

# The original added -1e-9 (meant to be -1e9) to the logits of padded memory positions,
# and was trained that way; `UNetAttn(original_padding_bias=True)` keeps it.
PADDING_BIAS = -1e9
ORIGINAL_PADDING_BIAS = -1e-9


class D2Block(nn.Module):
    """L dilated 3x3 convolutions whose outputs feed every later layer.

    Conv i (dilation 2^i) produces k * (L - i) channels: the first k are layer i's own
    pre-activation, the others are added to the pending inputs of layers i+1 .. L-1.
    Input `(batch, in_channels, bins, frames)`, output `(batch, k * L, bins, frames)`.
    """

    num_layers: int

    def __init__(self, in_channels: int, k: int, num_layers: int):
        super().__init__()
        self.num_layers = num_layers
        self.out_channels = k * num_layers
        self.conv_layers = nn.ModuleList(
            [
                nn.Conv2d(
                    in_channels if i == 0 else k,
                    k * (num_layers - i),
                    3,
                    padding=2**i,
                    dilation=2**i,
                    bias=False,
                )
                for i in range(num_layers)
            ]
        )
        self.bn_layers = nn.ModuleList(
            [nn.Sequential(nn.BatchNorm2d(k), nn.ReLU(inplace=True)) for _ in range(num_layers)]
        )

    @torch.no_grad()
    def fold_batch_norms(self) -> int:
        """Fold each layer's batch norm into the convolutions whose outputs it normalises
        (see models/fusion.py): layer i's pre-activation is the sum of chunk i - m of conv m
        for m <= i, so those chunks' weights take its scale and conv i's own chunk its shift."""
        k = self.out_channels // self.num_layers
        folded = 0
        for i, layer in enumerate(self.bn_layers):
            norm = layer[0]
            if type(norm) is not nn.BatchNorm2d:
                continue  # already folded
            scale, shift = norm_scale_and_shift(norm)
            for m in range(i + 1):
                conv = self.conv_layers[m]
                rows = slice(k * (i - m), k * (i - m + 1))
                conv.weight[rows] *= scale.to(conv.weight.dtype)[:, None, None, None]
            own = self.conv_layers[i]
            if own.bias is None:
                own.bias = nn.Parameter(torch.zeros(own.out_channels, dtype=own.weight.dtype,
                                                    device=own.weight.device))
            own.bias[:k] += shift.to(own.bias.dtype)
            layer[0] = nn.Identity()
            folded += 1
        return folded

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: List[torch.Tensor] = []
        # The sums still to come for layers i .. L-1, as one tensor laid out like conv i's
        # output: one addition per layer rather than one per pending chunk, the same sums in
        # the same order. Strided k-channel slices of channels-last tensors are slow, so in
        # eval mode (norms folded: an in-place ReLU) the layer's own channels are copied
        # out dense for the ReLU, the next convolution and the concatenation. Together a
        # third off the default's U-Net in bfloat16, with identical output.
        pending: Optional[torch.Tensor] = None
        k = self.out_channels // self.num_layers
        h = x
        for conv, norm in zip(self.conv_layers, self.bn_layers):
            total = conv(h)
            if pending is not None:
                total += pending
            own = total[:, :k]
            if not self.training:
                own = own.clone(memory_format=torch.preserve_format)
            h = norm(own)
            pending = total[:, k:]
            outputs.append(h)
        return torch.cat(outputs, dim=1)


class D3Block(nn.Module):
    """M densely connected D2 blocks; output concat(input, d2_1, ..., d2_M)."""

    def __init__(self, in_channels: int, k: int, num_layers: int, num_blocks: int = 2):
        super().__init__()
        blocks = []
        channels = in_channels
        for _ in range(num_blocks):
            blocks.append(D2Block(channels, k, num_layers))
            channels += k * num_layers
        self.d2_layers = nn.ModuleList(blocks)
        self.out_channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for block in self.d2_layers:
            features.append(block(torch.cat(features, dim=1)))
        return torch.cat(features, dim=1)


class LocalAttention2d(nn.Module):
    """Multi-head attention over blocks of `query_frames` frames x all bins.

    Each query block sees its own frames plus `memory_flange` frames on each side.
    q, k, v come from one 3x3 conv whose channels are laid out (heads, [q|k|v], depth);
    the heads' outputs go through a 3x3 conv. Input `(batch, in, bins, frames)`,
    output `(batch, out, bins, frames)`.
    """

    d_model: int
    n_heads: int
    query_frames: int
    memory_flange: int
    padding_bias: float

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        d_model: int = 128,
        n_heads: int = 8,
        query_frames: int = 2,
        memory_flange: int = 3,
        padding_bias: float = PADDING_BIAS,
    ):
        super().__init__()
        self.d_model = d_model
        self.n_heads = n_heads
        self.query_frames = query_frames
        self.memory_flange = memory_flange
        self.padding_bias = padding_bias
        self.qkv_conv = nn.Conv2d(in_channels, d_model * 3, 3, padding=1)
        self.out_conv = nn.Conv2d(d_model, out_channels, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, bins, frames = x.shape
        depth = self.d_model // self.n_heads
        qkv = self.qkv_conv(x)
        extra = (self.query_frames - frames % self.query_frames) % self.query_frames
        qkv = F.pad(qkv, [0, extra])
        blocks = (frames + extra) // self.query_frames
        qkv = qkv.view(batch, self.n_heads, 3 * depth, bins, frames + extra)
        q, k, v = qkv.chunk(3, dim=2)  # each (batch, heads, depth, bins, time)
        q = q * depth**-0.5
        k = F.pad(k, [self.memory_flange, self.memory_flange])
        v = F.pad(v, [self.memory_flange, self.memory_flange])
        span = self.query_frames + 2 * self.memory_flange

        # queries: (batch*heads*blocks, bins*query_frames, depth)
        q = q.reshape(batch, self.n_heads, depth, bins, blocks, self.query_frames)
        q = q.permute(0, 1, 4, 3, 5, 2).reshape(-1, bins * self.query_frames, depth)
        # memory: (batch*heads*blocks, depth, bins*span) and (..., bins*span, depth)
        k = k.unfold(-1, span, self.query_frames)  # (batch, heads, depth, bins, blocks, span)
        v = v.unfold(-1, span, self.query_frames)
        k = k.permute(0, 1, 4, 2, 3, 5).reshape(q.shape[0], depth, bins * span)
        v = v.permute(0, 1, 4, 3, 5, 2).reshape(q.shape[0], bins * span, depth)

        padded = (k.abs().sum(dim=1, keepdim=True) == 0).to(k.dtype)
        logits = q @ k + padded * self.padding_bias
        out = logits.softmax(dim=-1) @ v  # (batch*heads*blocks, bins*query_frames, depth)

        out = out.view(batch, self.n_heads, blocks, bins, self.query_frames, depth)
        out = out.permute(0, 1, 5, 3, 2, 4).reshape(batch, self.n_heads * depth, bins, -1)
        return self.out_conv(out[..., :frames])


class UNetAttn(SeparationModel):
    """Magnitude `(batch, 2, bins, frames)` -> sigmoid masks `(batch, 4, 2, bins, frames)`.

    Looks at the first `max_bins` bins; the mask of higher bins (and of the last frames
    the decoder cannot reach) is 0.25. Frames are padded to a multiple of 64 inside.
    """

    name = "unet_attn"
    network = "U-Net of D3 blocks, 2D local attention"
    input_domain = "magnitude"
    output_kind = "mask"
    original_file = "unet_attention.pth"
    # The original Danna-Sep tool ran the U-Net over a track in non-overlapping calls of
    # this many frames (engine's pipeline="original").
    original_chunk_frames = 2584

    max_bins: int
    time_multiple: int

    def __init__(self, max_bins: int = 1487, k: int = 12, original_padding_bias: bool = False,
                 attn_channels: int = 256, attn_d_model: int = 128, attn_heads: int = 8):
        super().__init__()
        levels = 6
        self.max_bins = max_bins
        self.input_bins = max_bins
        self.output_bins = max_bins  # masks above are the constant 0.25 (see forward)
        self.time_multiple = 2**levels
        self.sources: List[str] = list(SOURCES)
        self.samplerate = SAMPLERATE
        self.audio_channels = 2
        bias = ORIGINAL_PADDING_BIAS if original_padding_bias else PADDING_BIAS

        widths: List[int] = []
        in_channels = 2
        down = []
        for i in range(levels):
            block = D3Block(in_channels, k, max(2, levels - i - 1))
            down.append(nn.Sequential(block, nn.AvgPool2d(2, 2)))
            in_channels = block.out_channels
            widths.append(in_channels)
        self.down_convs = nn.ModuleList(down)

        # The paper's widths (256 channels, d_model 128, 8 heads) are the defaults; the
        # default bundle uses narrower ones.
        if attn_d_model % attn_heads:
            raise ValueError(f"attn_d_model ({attn_d_model}) must be a multiple of attn_heads ({attn_heads})")
        self.attn = nn.Sequential(
            LocalAttention2d(in_channels, attn_channels, attn_d_model, attn_heads, padding_bias=bias),
            nn.BatchNorm2d(attn_channels),
            nn.ReLU(inplace=True),
            LocalAttention2d(attn_channels, attn_channels, attn_d_model, attn_heads, padding_bias=bias),
            nn.BatchNorm2d(attn_channels),
            nn.ReLU(inplace=True),
        )

        up = []
        concat = attn_channels
        for i in range(levels - 2, -1, -1):
            block = D3Block(widths[i + 1] + concat, k, max(2, levels - i - 1))
            layers = [
                block,
                nn.ConvTranspose2d(block.out_channels, widths[i], 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(widths[i]),
                nn.ReLU(inplace=True),
            ]
            if i >= levels - 4:  # dropout on the three deepest decoder levels
                layers.append(nn.Dropout2d(0.4))
            up.append(nn.Sequential(*layers))
            concat = widths[i]
        self.up_convs = nn.ModuleList(up)

        self.end = nn.Sequential(
            nn.ConvTranspose2d(concat * 2, concat, 5, 2, 2, bias=False),
            nn.BatchNorm2d(concat),
            nn.ReLU(inplace=True),
            nn.Conv2d(concat, 8, 3, padding=2, dilation=2),
        )

    @classmethod
    def original_kwargs(cls, state: Mapping[str, torch.Tensor], scripted: Any) -> Dict[str, Any]:
        def first(attribute: str) -> Any:
            found = [getattr(m, attribute) for _, m in scripted.named_modules() if hasattr(m, attribute)]
            return found[0] if found else None

        # Files the original tool wrote carry no bias attribute and were trained with its
        # -1e-9; files we export carry ours, so a U-Net we trained keeps its -1e9.
        bias = first("padding_bias")
        heads = first("n_heads")  # the attention's widths: narrower in the default bundle
        return {
            "max_bins": int(getattr(scripted, "max_bins", 1487)),
            "k": state["down_convs.0.0.d2_layers.0.conv_layers.0.weight"].shape[0] // 5,
            "original_padding_bias": bias is None or float(bias) == ORIGINAL_PADDING_BIAS,
            "attn_channels": state["attn.0.out_conv.weight"].shape[0],
            "attn_d_model": state["attn.0.out_conv.weight"].shape[1],
            "attn_heads": 8 if heads is None else int(heads),
        }

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        batch, channels, bins, frames = mag.shape
        x = mag[:, :, : self.max_bins]
        x = F.pad(x, [0, (self.time_multiple - frames % self.time_multiple) % self.time_multiple])

        skips: List[torch.Tensor] = []
        for level in self.down_convs:
            x = level(x)
            skips.append(x)
        skips.pop()
        x = torch.cat([x, self.attn(x)], dim=1)

        for level in self.up_convs:
            skip = skips.pop()
            x = level(x)
            x = F.pad(x, [0, skip.shape[3] - x.shape[3], 0, skip.shape[2] - x.shape[2]])
            x = torch.cat([x, skip], dim=1)
        x = torch.sigmoid(self.end(x))[..., :frames]
        x = F.pad(x, [0, frames - x.shape[3], 0, bins - x.shape[2]], value=0.25)
        return x.view(batch, 4, 2, bins, frames)
