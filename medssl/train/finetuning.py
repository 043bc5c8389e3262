"""Fine-tuning as one more objective of the :class:`~medssl.train.trainer.Trainer`: a head on an encoder.

:class:`FinetuneModel` puts a linear head on an encoder (frozen or not), :class:`TargetLoss`
scores its outputs, :class:`HeadObjective` makes the two a training objective, and
:class:`EarlyStopping` validates after every epoch, ends the run after ``patience`` epochs
without improvement and restores the best epoch's weights. Fine-tuning thereby gets the
training step of pre-training: autocast, loss scaling, finiteness and gradient-norm checks,
metrics, checkpoints and resume. The protocol around it (splits, metrics, report) is
``medssl.eval.finetune``'s.

Example:
    >>> model = FinetuneModel(encoder, n_outputs=2, freeze_encoder=False)
    >>> objective = HeadObjective(model, TargetLoss("classification", class_weights(targets, 2)))
    >>> stopping = EarlyStopping(lambda: validation_loss(model, objective.loss, val_loader, device), model, patience=10)
    >>> Trainer(objective, finetune_optimizer(model, recipe, "full"), loader, run_dir, schedule,
    ...         early_stopping=stopping).run()
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.config import Recipe
from medssl.errors import RecipeError
from medssl.models import Encoder
from medssl.train.setup import autocast, make_optimizer

MODES = ("linear", "full", "lower_lr", "scratch")
IMPROVEMENT = 1e-6  # a validation loss must drop by more than this to count as better


class FinetuneModel(nn.Module):
    """An encoder with a linear head: (B, C, D, H, W) volumes -> (B, n_outputs) scores.

    With ``freeze_encoder`` the encoder gets no gradient and stays in eval mode even when
    the model trains, so its BatchNorm statistics do not move either: a linear probe.

    Example:
        >>> model = FinetuneModel(build_encoder("resnet18"), n_outputs=2, freeze_encoder=True)
        >>> model(torch.zeros(2, 1, 16, 16, 16)).shape
        torch.Size([2, 2])
    """

    def __init__(self, encoder: Encoder, n_outputs: int, freeze_encoder: bool = False):
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.feature_dim, n_outputs)
        self.freeze_encoder = freeze_encoder
        if freeze_encoder:
            encoder.requires_grad_(False)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            features = self.encoder(volumes)
        return self.head(features)

    def train(self, mode: bool = True) -> FinetuneModel:
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        return self


class TargetLoss(nn.Module):
    """Cross-entropy (optionally class-weighted) for classification; L1 for a (standardised) regression target.

    ``forward(outputs, targets)``: outputs (B, n_outputs); targets (B,) class indices or values.
    """

    weights: torch.Tensor | None  # a buffer (register_buffer in __init__)

    def __init__(self, task: str, weights: torch.Tensor | None = None):
        super().__init__()
        self.task = task
        self.register_buffer("weights", weights)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.task == "regression":
            return nn.functional.l1_loss(outputs[:, 0], targets)
        return nn.functional.cross_entropy(outputs, targets, weight=self.weights)


def class_weights(targets: torch.Tensor, n_classes: int) -> torch.Tensor:
    """scikit-learn's "balanced" weights n / (k n_c) of the classes present (King & Zeng, Political
    Analysis 2001); an absent class gets 1, which changes nothing: it has no term in the loss, and
    the weighted cross-entropy divides by the weights of the batch's targets."""
    labels = targets.cpu().numpy()
    present = np.unique(labels)
    weights = np.ones(n_classes)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(weights, dtype=torch.float32)


class HeadObjective(nn.Module):
    """A network and a :class:`TargetLoss` as a training objective: batches of ``{"inputs", "target"}``.

    ``network`` is the :class:`FinetuneModel` on volumes, or its head alone on cached features.
    """

    monitors_collapse = False

    def __init__(self, network: nn.Module, loss: TargetLoss):
        super().__init__()
        self.network = network
        self.loss = loss

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
        return self.loss(self.network(batch["inputs"]).float(), batch["target"]), {}

    def prepare_epoch(self, epoch: int, context) -> None:
        return None

    def after_step(self, step: int, total_steps: int) -> None:
        """Nothing to update between steps."""


def finetune_optimizer(model: FinetuneModel, recipe: Recipe, mode: str) -> torch.optim.Optimizer:
    """The recipe's optimiser (``train.optimizer``, weight decay...) with two parameter groups.

    ``param_groups[0]`` ("head") runs at ``finetune.lr``; ``param_groups[1]`` ("encoder")
    at the same rate in modes ``full`` and ``scratch``, at ``lr * encoder_lr_factor`` in
    ``lower_lr``, and does not exist in ``linear``.
    """
    if mode not in MODES:
        raise RecipeError(f"finetune.mode = {mode!r}: expected one of {', '.join(MODES)}")
    optimizer = make_optimizer(model.head.parameters(), recipe, lr=recipe.finetune.lr)
    optimizer.param_groups[0]["name"] = "head"
    if mode != "linear":
        factor = recipe.finetune.encoder_lr_factor if mode == "lower_lr" else 1.0
        optimizer.add_param_group(
            {
                "params": [p for p in model.encoder.parameters() if p.requires_grad],
                "lr": recipe.finetune.lr * factor,
                "name": "encoder",
            }
        )
    return optimizer


class LabelledInputs(Dataset):
    """``{"inputs", "target"}`` items from a volume dataset (its ``"volume"``) or a tensor (cached features)."""

    def __init__(self, inputs: Dataset | torch.Tensor, targets: torch.Tensor):
        if len(inputs) != len(targets):  # type: ignore[arg-type]
            raise ValueError(f"{len(inputs)} inputs but {len(targets)} targets")  # type: ignore[arg-type]
        self.inputs = inputs
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = self.inputs[index]
        return {"inputs": item["volume"] if isinstance(item, dict) else item, "target": self.targets[index]}


@torch.no_grad()
def predict(
    network: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32", with_targets: bool = False
):
    """Float32 outputs (n, n_outputs) of ``network`` over ``loader`` (and the targets, on the CPU)."""
    batch_outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    for batch in loader:
        with autocast(precision, device):
            batch_outputs.append(network(batch["inputs"].to(device, non_blocking=True)).float().cpu())
        targets.append(batch["target"])
    outputs = torch.cat(batch_outputs) if batch_outputs else torch.zeros(0, 1)
    return (outputs, torch.cat(targets)) if with_targets else outputs


def validation_loss(
    network: nn.Module, loss: nn.Module, loader: DataLoader, device: torch.device, precision: str = "fp32"
) -> float:
    """The loss of ``network`` in eval mode over ``loader``, as one batch."""
    was_training = network.training
    network.eval()
    outputs, targets = predict(network, loader, device, precision, with_targets=True)
    network.train(was_training)
    return float(loss(outputs.to(device), targets.to(device)))


class EarlyStopping:
    """Validate after every epoch; stop after ``patience`` epochs without a validation loss
    lower by more than ``improvement``; keep the weights of the best epoch.

    Its state (best loss and weights, waited epochs, history) goes into the trainer's
    checkpoints, so a resumed run stops where an uninterrupted one stops.

    Args:
        validation_loss: computes the current validation loss.
        module: whose weights are kept and restored (the network, not the loss).
        patience: epochs without improvement before stopping.
    """

    def __init__(
        self, validation_loss: Callable[[], float], module: nn.Module, patience: int, improvement: float = IMPROVEMENT
    ):
        self.validation_loss = validation_loss
        self.module = module
        self.patience = patience
        self.improvement = improvement
        self.best_loss, self.best_epoch, self.waited = math.inf, 0, 0
        self.best_state: dict[str, torch.Tensor] = {}
        self.history: list[dict] = []

    @property
    def stopped(self) -> bool:
        return self.waited >= self.patience

    def update(self, epoch: int, train_loss: float) -> dict[str, float]:
        """Validate after ``epoch`` (0-based); return what goes into the epoch's log row."""
        val_loss = self.validation_loss()
        self.history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss})
        if val_loss < self.best_loss - self.improvement:
            self.best_loss, self.best_epoch, self.waited = val_loss, epoch + 1, 0
            self.best_state = {key: value.detach().clone() for key, value in self.module.state_dict().items()}
        else:
            self.waited += 1
        return {"val_loss": val_loss, "best_epoch": self.best_epoch}

    def restore_best(self) -> None:
        if self.best_state:
            self.module.load_state_dict(self.best_state)

    def state_dict(self) -> dict:
        return {
            "best_loss": self.best_loss,
            "best_epoch": self.best_epoch,
            "waited": self.waited,
            "best_state": self.best_state,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        self.best_loss, self.best_epoch, self.waited = state["best_loss"], state["best_epoch"], state["waited"]
        self.best_state = {
            key: value.to(next(iter(self.module.state_dict().values())).device)
            for key, value in state["best_state"].items()
        }
        self.history = [dict(entry) for entry in state["history"]]
