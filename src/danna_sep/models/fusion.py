"""Batch norms folded into the convolutions that feed them, for inference.

In eval mode a `BatchNorm2d` (or `BatchNorm1d`) is a fixed affine map per channel, so a convolution followed
by one is one convolution with scaled weights and a bias: a pass over the activations
less, which is most of what a batch norm costs on the CPU (memory, not arithmetic). Only
copies of models that separate are folded (`ModelRunner`); a folded model computes the same
function up to rounding, but its state dict no longer has the batch norms' entries.
"""

from __future__ import annotations

from typing import Tuple

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

# Not ConvTranspose2d: folding gives it a bias, and a transposed convolution with a bias
# takes a slow path in torch 2.13 on the CPU (an 84 -> 42 channel 5x5 one at 384 x 224:
# 81 ms without a bias, 530 ms with one, in bfloat16 channels-last), far more than the
# batch norm's pass it would save.
_FOLDABLE = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d))
"""(convolution, the batch norm after it) pairs that fold; X-UMX's 1D pairs, whose folding
makes the default's X-UMX 40% faster in bfloat16 on the CPU."""


def norm_scale_and_shift(norm: nn.BatchNorm2d) -> Tuple[torch.Tensor, torch.Tensor]:
    """(a, b) with norm(x) = a * x + b per channel, in eval mode."""
    scale = torch.rsqrt(norm.running_var + norm.eps)
    if norm.weight is not None:
        scale = scale * norm.weight
    shift = -norm.running_mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias
    return scale, shift


@torch.no_grad()
def fold_batch_norms(model: nn.Module) -> int:
    """Fold, in place, every batch norm of an eval-mode `model` that directly follows a
    `Conv2d` in an `nn.Sequential`, and those that the
    model's own modules fold through a `fold_batch_norms()` method of theirs. Each folded
    norm becomes an `nn.Identity`. Returns how many were folded (0 for a model in training
    mode, whose norms use the batch's statistics)."""
    if model.training:
        return 0
    folded = 0
    for module in list(model.modules()):
        own = getattr(module, "fold_batch_norms", None)
        if callable(own):
            folded += own()
        if not isinstance(module, nn.Sequential):
            continue
        for index in range(len(module) - 1):
            conv, norm = module[index], module[index + 1]
            if any(isinstance(conv, conv_type) and type(norm) is norm_type for conv_type, norm_type in _FOLDABLE) \
                    and norm.track_running_stats:
                module[index] = fuse_conv_bn_eval(conv, norm)
                module[index + 1] = nn.Identity()
                folded += 1
    return folded
