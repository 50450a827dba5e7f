"""The minibatch training loop: KL warm-up, validation, early stopping, checkpoints."""

from .trainer import Trainer, TrainingPlan

__all__ = ["Trainer", "TrainingPlan"]
