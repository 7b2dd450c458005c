"""Training: JSON configs, the recipes' losses, and the trainer (AMP, accumulation, DDP, exact resume).

Rooms: `config` (the recipes' dataclasses), `inputs` (tracks, segments, statistics),
`objective` (the loss through the model's contract), `run` (the run folder), `checkpoint`
(checkpoint records, starting weights), `trainer` (the loop). Inference never imports this package. `train(load_config(path), run_dir)` runs a config;
`danna-sep train CONFIG.json` does the same from the command line (and under torchrun).
"""

from .config import Config, ConfigError, config_from_dict, config_to_dict, load_config
from .trainer import Trainer, TrainError, TrainSummary, train

__all__ = ["Config", "ConfigError", "Trainer", "TrainError", "TrainSummary",
           "config_from_dict", "config_to_dict", "load_config", "train"]
