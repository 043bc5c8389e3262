"""Fine-tuning as one more objective of the :class:`~medssl.train.trainer.Trainer`: a head on an encoder.

:class:`FinetuneModel` puts a linear head on an encoder (frozen or not), :class:`TargetLoss`
scores its outputs and :class:`HeadObjective` makes the two a training objective; the trainer's
:class:`~medssl.train.handlers.EarlyStopping` handler validates after every epoch with
:func:`validation_loss`. Fine-tuning thereby gets the
training step of pre-training: autocast, loss scaling, finiteness and gradient-norm checks,
metrics, checkpoints and resume. The protocol around it (splits, metrics, report) is
``medssl.finetune``'s.

Example:
    >>> model = FinetuneModel(encoder, n_outputs=2, freeze_encoder=False)
    >>> objective = HeadObjective(model, TargetLoss("classification", class_weights(targets, 2)))
    >>> stopping = EarlyStopping(lambda: validation_loss(model, objective.loss, val_loader, device), model, patience=10)
    >>> Trainer(objective, finetune_optimizer(model, recipe, "full"), loader, run_dir, schedule,
    ...         handlers=[Checkpointing(), stopping]).run()
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.class_weight import compute_class_weight
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.errors import RecipeError
from medssl.models import Encoder
from medssl.recipe import Recipe
from medssl.train.setup import autocast, make_optimizer

MODES = ("linear", "full", "lower_lr", "scratch")


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
