"""Training checkpoints: plain dicts of tensors, numbers and strings, written atomically;
and the weights files a run may start from.

A checkpoint is written with `torch.save` and read back with `torch.load(weights_only=True)`:
no class is ever pickled. Two kinds share one layout (`checkpoint_record`):

- `last.pt`, the full training state for an exact resume (model, optimiser, scheduler,
  gradient scaler, RNG states, data position, best-k table);
- `best-epochNNNN.pt`, the weights of a good epoch with the model's name, constructor
  arguments, training config and validation scores (what `danna-sep export` reads).
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple

import numpy as np
import torch

from .. import __version__, atomic
from ..errors import DannaSepError
from ..models import SeparationModel

log = logging.getLogger(__name__)

FORMAT = "danna-sep-checkpoint"
FORMAT_VERSION = 1


class CheckpointFileError(DannaSepError):
    """A checkpoint or weights file that cannot be read or used; the message starts with its path."""


def checkpoint_record(kind: str, model: SeparationModel, config: Dict[str, Any], **fields: Any) -> Dict[str, Any]:
    """A checkpoint of `kind` ("training-state" or "weights"): the model's registry name,
    constructor arguments and weights (on the CPU), the resolved `config`, versions, and
    `fields`."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": kind,
        "model": {"name": model.name, "kwargs": dict(model.config)},
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        **fields,
        "config": config,
        "versions": {"danna_sep": __version__, "torch": str(torch.__version__)},
    }


def save_checkpoint(record: Dict[str, Any], path: Path) -> Path:
    """`torch.save(record)` to `path`, whole or not at all (danna_sep.atomic)."""
    return atomic.write_with(path, lambda temporary: torch.save(record, temporary))


def load_checkpoint(path: str | os.PathLike) -> Dict[str, Any]:
    """Read one of our checkpoints (weights_only: no code runs); CheckpointFileError otherwise."""
    try:
        obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointFileError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        lines = str(exc).strip().splitlines() or [type(exc).__name__]
        # weights_only refusals explain themselves on their "Unsupported global" line
        reason = next((line.strip() for line in lines if "Unsupported global" in line), lines[0])
        raise CheckpointFileError(f"{path}: not a readable checkpoint ({reason})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointFileError(f"{path}: not a danna-sep training checkpoint")
    if not isinstance(obj.get("model"), dict) or "state_dict" not in obj:
        raise CheckpointFileError(f"{path}: checkpoint lacks the model's name or weights")
    return obj


def state_digest(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a state dict's names, dtypes, shapes and values: equal digests, equal weights."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def load_initial_weights(model: SeparationModel, path: str | os.PathLike) -> None:
    """Load `path` into `model`: our checkpoints, a training run folder (its best checkpoint
    by validation, else its last: what `export` takes from it), bundle safetensors, or a
    file in an upstream layout the model adopts (`SeparationModel.adopt_state`)."""
    from ..convert import CheckpointError, load_state_file

    path = Path(path)
    if path.is_dir():
        path, _ = pick_run_checkpoint(path)
    if not path.is_file():
        raise CheckpointFileError(f"{path}: no such weights file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise CheckpointFileError(f"{path}: unreadable safetensors file ({exc})") from None
    else:
        try:
            state = load_state_file(path)
        except CheckpointError as exc:
            raise CheckpointFileError(str(exc)) from None
    try:
        state = model.adopt_state(state)
    except CheckpointError as exc:
        raise CheckpointFileError(f"{path}: {exc}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointFileError(f"{path}: weights do not fit {model.name}({model.config}): {first}") from None
    log.info("%s: loaded into %s", path, model.name)


# --- random number generator states, as plain values -----------------------------------

def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states in a weights_only-loadable form."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state: Dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what `rng_state` saved."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["position"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = list(state["cuda"])
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# --- the run's best-k table ------------------------------------------------------------

def read_best_index(path: Path) -> list:
    """`checkpoints/best.json`: [{"file", "epoch", "step", "valid_sdr"}, ...], best first."""
    if not path.is_file():
        return []
    try:
        entries = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return [e for e in entries if isinstance(e, dict) and "file" in e and "valid_sdr" in e]


def pick_run_checkpoint(run_dir: Path) -> Tuple[Path, Optional[dict]]:
    """The run's best checkpoint by validation SDR, else its last one."""
    folder = run_dir / "checkpoints"
    for entry in read_best_index(folder / "best.json"):
        candidate = folder / entry["file"]
        if candidate.is_file():
            return candidate, entry
    last = folder / "last.pt"
    if last.is_file():
        return last, None
    raise CheckpointFileError(f"{run_dir}: no checkpoint in {folder} (not a training run folder?)")
