"""X-UMX (CrossNet-Open-Unmix): four Open-Unmix branches joined by two averaging bridges.

The four per-source encoders and decoders are packed into grouped 1x1 convolutions
(`affine1`, `affine2`), with the parameter names of the Danna-Sep X-UMX, so that its
TorchScript state dict loads with `strict=True`.
"""

from typing import Any, Dict, List, Mapping

import torch
from torch import nn

from .base import SeparationModel
from .common import SAMPLERATE, SOURCES


class XUMX(SeparationModel):
    """Magnitude `(batch, channels, bins, frames)` -> masks `(batch, 4, channels, bins, frames)`.

    Sources in the order drums, bass, other, vocals. bins = n_fft // 2 + 1.
    """

    name = "xumx"
    network = "X-UMX (CrossNet-Open-Unmix)"
    input_domain = "magnitude"
    output_kind = "mask"
    takes_input_statistics = True
    original_file = "xumx_mwf.pth"
    original_onnx = "xumx.onnx"

    max_bins: int
    nb_output_bins: int
    hidden_channels: int
    nb_channels: int

    def __init__(
        self,
        n_fft: int = 4096,
        hidden_channels: int = 512,
        max_bins: int = 1487,
        nb_channels: int = 2,
        nb_layers: int = 3,
    ):
        super().__init__()
        n_src = len(SOURCES)
        self.nb_output_bins = n_fft // 2 + 1
        self.max_bins = max_bins
        self.hidden_channels = hidden_channels
        self.nb_channels = nb_channels
        self.sources: List[str] = list(SOURCES)
        self.samplerate = SAMPLERATE
        self.audio_channels = nb_channels
        self.input_bins = max_bins
        self.output_bins = self.nb_output_bins

        self.input_means = nn.Parameter(torch.zeros(n_src * max_bins))
        self.input_scale = nn.Parameter(torch.ones(n_src * max_bins))
        self.output_means = nn.Parameter(torch.ones(n_src * self.nb_output_bins))
        self.output_scale = nn.Parameter(torch.ones(n_src * self.nb_output_bins))

        self.affine1 = nn.Sequential(
            nn.Conv1d(nb_channels * max_bins * n_src, hidden_channels * n_src, 1, bias=False, groups=n_src),
            nn.BatchNorm1d(hidden_channels * n_src),
            nn.Tanh(),
        )
        self.drums_lstm = self._lstm(hidden_channels, nb_layers)
        self.bass_lstm = self._lstm(hidden_channels, nb_layers)
        self.other_lstm = self._lstm(hidden_channels, nb_layers)
        self.vocals_lstm = self._lstm(hidden_channels, nb_layers)
        self.affine2 = nn.Sequential(
            nn.Conv1d(hidden_channels * 2, hidden_channels * n_src, 1, bias=False),
            nn.BatchNorm1d(hidden_channels * n_src),
            nn.ReLU(),
            nn.Conv1d(
                hidden_channels * n_src,
                nb_channels * self.nb_output_bins * n_src,
                1,
                bias=False,
                groups=n_src,
            ),
            nn.BatchNorm1d(nb_channels * self.nb_output_bins * n_src),
        )

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Every source's branch reads the mixture normalised alike: -mean and 1/std."""
        n_src = len(self.sources)
        with torch.no_grad():
            self.input_means.copy_((-mean[: self.max_bins]).repeat(n_src))
            self.input_scale.copy_((1.0 / std[: self.max_bins]).repeat(n_src))

    def adopt_state(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """asteroid's X-UMX layout (the official `pretrained_xumx_musdb18HQ.pth`) is converted."""
        if any(key.startswith("layer_enc.") for key in state):
            from ..convert import xumx_from_asteroid  # the converters import this package

            return xumx_from_asteroid(state)[1]
        return dict(state)

    @classmethod
    def original_kwargs(cls, state: Mapping[str, torch.Tensor], scripted: Any) -> Dict[str, Any]:
        n_src = len(SOURCES)
        bins = state["output_means"].numel() // n_src
        max_bins = state["input_means"].numel() // n_src
        return {
            "n_fft": (bins - 1) * 2,
            "hidden_channels": state["affine1.1.weight"].numel() // n_src,
            "max_bins": max_bins,
            "nb_channels": state["affine1.0.weight"].shape[1] // max_bins,
            "nb_layers": len([k for k in state if k.startswith("drums_lstm.weight_ih_l") and "reverse" not in k]),
        }

    @staticmethod
    def _lstm(hidden: int, layers: int) -> nn.LSTM:
        return nn.LSTM(
            input_size=hidden,
            hidden_size=hidden // 2,
            num_layers=layers,
            bidirectional=True,
            batch_first=False,
            dropout=0.4 if layers > 1 else 0.0,
        )

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        batch, channels, bins, frames = mag.shape
        n_src = 4
        x = mag[:, :, : self.max_bins].unsqueeze(1)  # (batch, 1, channels, max_bins, frames)
        means = self.input_means.view(n_src, 1, self.max_bins, 1)
        scale = self.input_scale.view(n_src, 1, self.max_bins, 1)
        x = ((x + means) * scale).reshape(batch, n_src * channels * self.max_bins, frames)

        encoded = self.affine1(x)  # (batch, 4 * hidden, frames)
        cross_1 = encoded.view(batch, n_src, self.hidden_channels, frames).mean(dim=1)
        seq = cross_1.permute(2, 0, 1)  # time-major (frames, batch, hidden)
        lstm_sum = self.drums_lstm(seq)[0] + self.bass_lstm(seq)[0]
        lstm_sum = lstm_sum + self.other_lstm(seq)[0] + self.vocals_lstm(seq)[0]
        cross_2 = torch.cat([cross_1, (lstm_sum / n_src).permute(1, 2, 0)], dim=1)

        y = self.affine2(cross_2).view(batch, n_src, channels, self.nb_output_bins, frames)
        out_scale = self.output_scale.view(n_src, 1, self.nb_output_bins, 1)
        out_means = self.output_means.view(n_src, 1, self.nb_output_bins, 1)
        return torch.relu(y * out_scale + out_means)
