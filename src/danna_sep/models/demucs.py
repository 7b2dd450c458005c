"""Waveform models: Demucs with four decoders (Danna-Sep) and Demucs v1.

Both pad the input to a length every strided convolution divides exactly and trim the
output back, so the output has exactly as many samples as the input.
"""

from typing import Any, Dict, List, Mapping, Tuple

import torch
from torch import nn
import torch.nn.functional as F

from .base import SeparationModel
from .common import SAMPLERATE, SOURCES, FractionalResample, center_trim, rescale_conv_weights, standardize


def _encoder_level(in_channels: int, channels: int, kernel_size: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(in_channels, channels, kernel_size, stride),
        nn.ReLU(),
        nn.Conv1d(channels, channels * 2, 1),
        nn.GLU(dim=1),
    )


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


class _Demucs(SeparationModel):
    """What both Demucs networks share: an encoder of strided levels, then a BLSTM with a
    linear projection (modules `encoder`, `lstm` and `lstm_linear`, built by each)."""

    input_domain = "waveform"
    output_kind = "waveform"

    def _encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """x `(batch, channels, time)` through the encoder and the BLSTM; and each level's
        output, for the decoder's skip connections."""
        saved: List[torch.Tensor] = []
        for encode in self.encoder:
            x = encode(x)
            saved.append(x)
        x = self.lstm(x.permute(2, 0, 1))[0]
        return self.lstm_linear(x).permute(1, 2, 0), saved


class DemucsSplit(_Demucs):
    """Waveform `(batch, 2, time)` -> sources `(batch, 4, 2, time)`.

    One shared encoder and LSTM; each source owns a decoder of width C/2 per level.
    Input is normalised by its mono mean and std inside, resampled x2 before the encoder
    and back after the decoder.
    """

    name = "demucs_split"
    network = "Demucs, one decoder per source"
    original_file = "demucs_4_decoders.pth"

    depth: int
    kernel_size: int
    stride: int
    resample_factor: int
    decoders: int
    decoder_inputs: List[int]

    def __init__(
        self,
        channels: int = 48,
        depth: int = 6,
        rescale: float = 0.1,
        resample: bool = True,
        kernel_size: int = 8,
        stride: int = 4,
        lstm_layers: int = 2,
    ):
        super().__init__()
        self.depth = depth
        self.kernel_size = kernel_size
        self.stride = stride
        self.resample_factor = 2 if resample else 1
        self.sources: List[str] = list(SOURCES)
        self.samplerate = SAMPLERATE
        self.audio_channels = 2
        n_src = len(SOURCES)
        self.decoders = n_src
        # The LSTM's output channels the decoders read, in order, once `keep_decoders` has
        # dropped some (empty: all of them). Not a buffer, so never in a state dict.
        self.decoder_inputs = []

        self.up_sample: nn.Module = FractionalResample(1, 2) if resample else nn.Identity()
        self.down_sample: nn.Module = FractionalResample(2, 1) if resample else nn.Identity()

        encoder, convs_1x1, dec_pre_convs, decoder = [], [], [], []
        in_channels = 2
        for index in range(depth):
            encoder.append(_encoder_level(in_channels, channels, kernel_size, stride))
            out_channels = in_channels * 2 if index > 0 else n_src * 2
            convs_1x1.insert(0, nn.Conv1d(channels, channels * 4, 3, padding=1, bias=False))
            dec_pre_convs.insert(0, nn.Conv1d(channels * 2, channels * 4, 3, padding=1, groups=n_src))
            layers: List[nn.Module] = [
                nn.ConvTranspose1d(channels * 2, out_channels, kernel_size, stride, groups=n_src)
            ]
            if index > 0:
                layers.append(nn.ReLU())
            decoder.insert(0, nn.Sequential(*layers))
            in_channels = channels
            channels *= 2
        self.encoder = nn.ModuleList(encoder)
        self.convs_1x1 = nn.ModuleList(convs_1x1)
        self.dec_pre_convs = nn.ModuleList(dec_pre_convs)
        self.decoder = nn.ModuleList(decoder)

        self.lstm = nn.LSTM(in_channels, in_channels, lstm_layers, bidirectional=True)
        self.lstm_linear = nn.Linear(in_channels * 2, in_channels * 2)
        rescale_conv_weights(self, rescale)

    @classmethod
    def original_kwargs(cls, state: Mapping[str, torch.Tensor], scripted: Any) -> Dict[str, Any]:
        return {
            "channels": state["encoder.0.0.weight"].shape[0],
            "depth": len({k.split(".")[1] for k in state if k.startswith("encoder.")}),
            "resample": "up_sample.kernel" in state,
            "kernel_size": state["encoder.0.0.weight"].shape[-1],
            "stride": int(getattr(scripted, "stride", 4)),
            "lstm_layers": len([k for k in state if k.startswith("lstm.weight_ih_l") and "reverse" not in k]),
        }

    def valid_length(self, length: int) -> int:
        """Smallest input length >= `length` that every strided convolution divides exactly."""
        n = length * self.resample_factor
        for _ in range(self.depth):
            n = max(1, _ceil_div(n - self.kernel_size, self.stride) + 1)
        for _ in range(self.depth):
            n = (n - 1) * self.stride + self.kernel_size
        return _ceil_div(n, self.resample_factor)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, _, length = wav.shape
        x, mean, std = standardize(wav)
        x = F.pad(x, [0, self.valid_length(length) - length])
        x, saved = self._encode(self.up_sample(x))
        if len(self.decoder_inputs) > 0:
            x = x.index_select(1, torch.tensor(self.decoder_inputs, dtype=torch.long, device=x.device))

        for decode, pre_conv, skip_conv in zip(self.decoder, self.dec_pre_convs, self.convs_1x1):
            skip = saved.pop()
            x = pre_conv(x) + skip_conv(skip[..., : x.shape[2]])
            steps = x.shape[2]
            value, gate = x.view(batch, self.decoders, -1, steps).chunk(2, dim=2)
            x = decode((value * torch.sigmoid(gate)).reshape(batch, -1, steps))

        x = self.down_sample(x)[..., :length]
        x = x * std + mean
        return x.reshape(batch, self.decoders, 2, length)

    @torch.no_grad()
    def keep_decoders(self, sources: List[str]) -> int:
        """Drop, in place, the decoders of the sources not in `sources`, for inference: the
        model then outputs only those (in its order), with the same values, and skips the
        others' decoding (the decoders are grouped convolutions, one group per source, so
        the kept groups' weights are sliced out). Returns how many decoders remain."""
        keep = [index for index, name in enumerate(self.sources) if name in sources]
        if not keep:
            raise ValueError(f"none of {sources} is among {self.sources}")
        if len(keep) == self.decoders:
            return self.decoders
        groups = self.decoders

        def rows(total: int) -> torch.Tensor:  # the kept groups' slices of `total` channels
            size = total // groups
            return torch.cat([torch.arange(g * size, (g + 1) * size) for g in keep])

        inputs = rows(self.dec_pre_convs[0].in_channels).tolist()
        self.decoder_inputs = [self.decoder_inputs[i] for i in inputs] if self.decoder_inputs else inputs
        for level in range(len(self.decoder)):
            skip = self.convs_1x1[level]
            skip.weight = nn.Parameter(skip.weight[rows(skip.out_channels)])
            skip.out_channels = skip.weight.shape[0]
            pre = self.dec_pre_convs[level]
            out_rows = rows(pre.out_channels)
            pre.weight = nn.Parameter(pre.weight[out_rows])
            if pre.bias is not None:
                pre.bias = nn.Parameter(pre.bias[out_rows])
            pre.in_channels, pre.out_channels, pre.groups = (
                pre.in_channels // groups * len(keep), pre.weight.shape[0], len(keep))
            up = self.decoder[level][0]
            up.weight = nn.Parameter(up.weight[rows(up.in_channels)])
            if up.bias is not None:
                up.bias = nn.Parameter(up.bias[rows(up.out_channels)])
            up.in_channels, up.out_channels, up.groups = (
                up.weight.shape[0], up.out_channels // groups * len(keep), len(keep))
        self.sources = [self.sources[index] for index in keep]
        self.decoders = len(keep)
        return self.decoders


class DemucsV1(_Demucs):
    """Demucs v1: waveform `(batch, channels, time)` -> sources `(batch, sources, channels, time)`.

    Encoder Conv1d(k, s) -> ReLU -> Conv1d(1x1, 2C) -> GLU; a 2-layer BLSTM with a linear
    projection; decoder blocks add the centre-trimmed encoder skip, then Conv1d(context,
    unpadded, 2C) -> GLU -> ConvTranspose1d(k, s) (+ReLU except last). The input is padded
    to a valid length (centred) and the output centre-trimmed to the input length.
    With `normalize=True` the input is standardised by its mono mean and std inside
    (so the model can be used on raw audio); the v1 recipe also z-scores each song.
    """

    name = "demucs_v1"
    network = "Demucs v1"

    depth: int
    kernel_size: int
    stride: int
    context: int
    normalize: bool
    n_sources: int
    n_channels: int

    def __init__(
        self,
        sources: List[str] = SOURCES,
        audio_channels: int = 2,
        channels: int = 64,
        depth: int = 6,
        rescale: float = 0.1,
        kernel_size: int = 8,
        stride: int = 4,
        context: int = 3,
        growth: float = 2.0,
        lstm_layers: int = 2,
        normalize: bool = True,
    ):
        super().__init__()
        self.depth = depth
        self.kernel_size = kernel_size
        self.stride = stride
        self.context = context
        self.normalize = normalize
        self.sources: List[str] = list(sources)
        self.n_sources = len(sources)
        self.n_channels = audio_channels
        self.samplerate = SAMPLERATE
        self.audio_channels = audio_channels

        encoder, decoder = [], []
        in_channels = audio_channels
        for index in range(depth):
            encoder.append(_encoder_level(in_channels, channels, kernel_size, stride))
            out_channels = in_channels if index > 0 else self.n_sources * audio_channels
            layers: List[nn.Module] = [
                nn.Conv1d(channels, channels * 2, context),
                nn.GLU(dim=1),
                nn.ConvTranspose1d(channels, out_channels, kernel_size, stride),
            ]
            if index > 0:
                layers.append(nn.ReLU())
            decoder.insert(0, nn.Sequential(*layers))
            in_channels = channels
            channels = int(growth * channels)
        self.encoder = nn.ModuleList(encoder)
        self.decoder = nn.ModuleList(decoder)
        self.lstm = nn.LSTM(in_channels, in_channels, lstm_layers, bidirectional=True)
        self.lstm_linear = nn.Linear(2 * in_channels, in_channels)
        rescale_conv_weights(self, rescale)

    def output_length(self, length: int) -> int:
        """Number of samples the network returns for an input of `length` samples."""
        n = length
        for _ in range(self.depth):
            n = (n - self.kernel_size) // self.stride + 1
        for _ in range(self.depth):
            n = (n - self.context) * self.stride + self.kernel_size
        return n

    def valid_length(self, length: int) -> int:
        """Smallest input length whose convolutions divide exactly and whose output covers `length`."""
        n = length
        for _ in range(self.depth):
            n = max(1, _ceil_div(n - self.kernel_size, self.stride) + 1) + self.context - 1
        for _ in range(self.depth):
            n = (n - 1) * self.stride + self.kernel_size
        step = 1
        for _ in range(self.depth):
            step *= self.stride
        while self.output_length(n) < length:
            n += step
        return n

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        batch, _, length = wav.shape
        x = wav
        mean = torch.zeros(1, dtype=wav.dtype, device=wav.device)
        std = torch.ones(1, dtype=wav.dtype, device=wav.device)
        if self.normalize:
            x, mean, std = standardize(wav)
        delta = self.valid_length(length) - length
        x, saved = self._encode(F.pad(x, [delta // 2, delta - delta // 2]))
        for decode in self.decoder:
            skip = saved.pop()
            x = decode(x + center_trim(skip, x.shape[-1]))

        x = center_trim(x, length) * std + mean
        return x.reshape(batch, self.n_sources, self.n_channels, length)
