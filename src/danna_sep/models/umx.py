"""Open-Unmix: one target per model, a BLSTM over normalised magnitude frames.

Parameter names match the `openunmix` package (fc1, bn1, lstm, fc2, bn2, fc3, bn3,
input_mean, input_scale, output_mean, output_scale), so its state dicts load with
`strict=True`.
"""

from typing import Dict, List, Mapping

import torch
from torch import nn
import torch.nn.functional as F

from .base import SeparationModel
from .common import SAMPLERATE


class OpenUnmix(SeparationModel):
    """Magnitude `(batch, channels, bins, frames)` -> magnitude estimate of one target, same shape.

    The network predicts a non-negative mask internally and returns mask * input, as
    open-unmix does (`output_kind == "magnitude"`).
    """

    name = "umx"
    network = "Open-Unmix, one target"
    input_domain = "magnitude"
    output_kind = "magnitude"
    takes_input_statistics = True

    max_bin: int
    nb_bins: int
    hidden_size: int

    def __init__(
        self,
        nb_bins: int = 2049,
        nb_channels: int = 2,
        hidden_size: int = 512,
        nb_layers: int = 3,
        unidirectional: bool = False,
        max_bin: int = 1487,
        target: str = "vocals",
        samplerate: int = SAMPLERATE,
    ):
        super().__init__()
        self.nb_bins = nb_bins
        self.max_bin = max_bin if max_bin else nb_bins
        self.hidden_size = hidden_size
        self.sources: List[str] = [target]
        self.samplerate = samplerate
        self.audio_channels = nb_channels
        self.input_bins = self.max_bin
        self.output_bins = nb_bins

        self.fc1 = nn.Linear(self.max_bin * nb_channels, hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        lstm_hidden = hidden_size if unidirectional else hidden_size // 2
        self.lstm = nn.LSTM(
            input_size=hidden_size,
            hidden_size=lstm_hidden,
            num_layers=nb_layers,
            bidirectional=not unidirectional,
            batch_first=False,
            dropout=0.4 if nb_layers > 1 else 0.0,
        )
        self.fc2 = nn.Linear(hidden_size * 2, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size)
        self.fc3 = nn.Linear(hidden_size, nb_bins * nb_channels, bias=False)
        self.bn3 = nn.BatchNorm1d(nb_bins * nb_channels)

        # Stored as -mean and 1/std so that the forward pass is (x + mean) * scale.
        self.input_mean = nn.Parameter(torch.zeros(self.max_bin))
        self.input_scale = nn.Parameter(torch.ones(self.max_bin))
        self.output_scale = nn.Parameter(torch.ones(nb_bins))
        self.output_mean = nn.Parameter(torch.ones(nb_bins))

    def set_input_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        with torch.no_grad():
            self.input_mean.copy_(-mean[: self.max_bin])
            self.input_scale.copy_(1.0 / std[: self.max_bin])

    def adopt_state(self, state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """An `openunmix` target's file (umxhq, umxl) loses the keys that are not the network's."""
        if "fc1.weight" in state:
            from ..convert import umx_from_openunmix  # the converters import this package

            return umx_from_openunmix(state, target=self.sources[0])[1]
        return dict(state)

    def forward(self, mag: torch.Tensor) -> torch.Tensor:
        batch, channels, bins, frames = mag.shape
        mix = mag.permute(3, 0, 1, 2)  # (frames, batch, channels, bins)
        x = mix[..., : self.max_bin]
        x = (x + self.input_mean) * self.input_scale
        x = self.bn1(self.fc1(x.reshape(-1, channels * self.max_bin)))
        x = torch.tanh(x.reshape(frames, batch, self.hidden_size))
        lstm_out = self.lstm(x)[0]
        x = torch.cat([x, lstm_out], dim=-1)
        x = F.relu(self.bn2(self.fc2(x.reshape(-1, 2 * self.hidden_size))))
        x = self.bn3(self.fc3(x))
        x = x.reshape(frames, batch, channels, self.nb_bins)
        x = x * self.output_scale + self.output_mean
        x = F.relu(x) * mix
        return x.permute(1, 2, 3, 0)
