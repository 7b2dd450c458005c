"""Track sources, segment samplers and augmentations for training and evaluation."""
