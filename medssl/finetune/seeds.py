"""One seed of a fine-tuning: its split, model and inputs, its :class:`~medssl.train.trainer.Trainer`
(the head objective, early stopping on the validation part), its test metrics and predictions,
kept in ``seeds/seed<k>/result.json``."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from medssl.eval.score import TEST_SPLITS
from medssl.files import atomic_write_text, json_ready
from medssl.finetune.baselines import baseline_metrics
from medssl.finetune.inputs import make_loader, standardize_features, volume_dataset
from medssl.finetune.metrics import classification_metrics, regression_metrics
from medssl.finetune.splits import Parts, count_subjects, split_cohort
from medssl.finetune.state import TunerState
from medssl.methods import build_encoder_for
from medssl.train.finetuning import (
    FinetuneModel,
    HeadObjective,
    LabelledInputs,
    TargetLoss,
    class_weights,
    finetune_optimizer,
    predict,
    validation_loss,
)
from medssl.train.handlers import Checkpointing, EarlyStopping
from medssl.train.loading import EpochLoader
from medssl.train.setup import check_input_size, seed_everything
from medssl.train.trainer import Runtime, Schedule, Trainer

SEEDS_FOLDER = "seeds"  # <out>/seeds/seed<k>/: metrics.csv, tensorboard/, checkpoints/, result.json
SEED_RESULT = "result.json"  # a finished seed's run, predictions and history, read back on --resume


@dataclass
class SeedRun:
    """What one seed trains and tests on: its parts, targets (standardised for regression, with the
    ``scale`` undoing it), the model and the network the objective calls (the model, or its head on
    cached features), and the inputs of every part."""

    seed: int
    parts: Parts
    model: FinetuneModel
    network: nn.Module
    targets: dict[str, torch.Tensor]
    scale: tuple[float, float]
    inputs: Mapping[str, Dataset | torch.Tensor]
    loaders: dict[str, DataLoader] = field(default_factory=dict)


class SeedTraining(TunerState):
    """The part of :class:`~medssl.finetune.protocol.FineTuner` that trains and tests one seed."""

    def new_model(self, seed: int) -> FinetuneModel:
        """The pre-trained encoder (a fresh copy) or a new one seeded by ``seed``, with a head seeded by ``seed``."""
        torch.manual_seed(seed)
        encoder = (
            copy.deepcopy(self.pretrained) if self.pretrained is not None else build_encoder_for(self.recipe.model)
        )
        model = FinetuneModel(encoder, self.target.n_outputs, freeze_encoder=self.mode == "linear")
        return model.to(self.device)

    def loss_function(self, fit_targets: torch.Tensor) -> TargetLoss:
        weighted = self.target.task == "classification" and self.recipe.finetune.class_weighting
        return TargetLoss(self.target.task, class_weights(fit_targets, self.target.n_outputs) if weighted else None)

    def prepare_seed(self, seed: int) -> SeedRun:
        """Split, model, targets and inputs of one seed (every draw seeded by ``seed``)."""
        config = self.recipe.finetune
        seed_everything(seed)
        parts = split_cohort(
            self.cohort,
            self.target,
            config.val_fraction,
            seed,
            self.recipe.data.max_subjects,
            train_size=config.train_size,
        )
        model = self.new_model(seed)
        targets = {name: self.target.encode(part.table) for name, part in parts.as_dict().items()}
        scale = (0.0, 1.0)
        if self.target.task == "regression":
            fit_values = targets["fit"]
            scale = (
                float(fit_values.mean()),
                float(fit_values.std()) if len(fit_values) > 1 and float(fit_values.std()) > 0 else 1.0,
            )
            targets = {name: (values - scale[0]) / scale[1] for name, values in targets.items()}
        if self.features is not None:  # frozen encoder, no augmentation: train the head on cached features
            features = {
                name: self.features[[self.position_of[pid] for pid in part.table["participant_id"]]]
                for name, part in parts.as_dict().items()
            }
            return SeedRun(seed, parts, model, model.head, targets, scale, standardize_features(features))
        inputs = {
            name: volume_dataset(part, self.recipe, augment=config.augment and name == "fit")
            for name, part in parts.as_dict().items()
        }
        if not self.input_checked:
            check_input_size(
                model.encoder, inputs["validation"][0]["volume"][None].to(self.device), self.recipe.model.encoder
            )
            self.input_checked = True
        return SeedRun(seed, parts, model, model, targets, scale, inputs)

    def seed_trainer(self, run: SeedRun, seed_dir: Path) -> Trainer:
        """The trainer of one seed: the head objective on the fit part, early stopping on the validation part."""
        config = self.recipe.finetune
        datasets = {
            name: LabelledInputs(run.inputs[name], run.targets[name])
            for name, part in run.parts.as_dict().items()
            if len(part)
        }
        fit_part, batch_size = datasets.pop("fit"), min(config.batch_size, len(run.parts.fit))
        # A last batch of one subject breaks BatchNorm in training: drop it (shuffled, so a different one each epoch).
        loader = EpochLoader(
            fit_part,
            batch_size,
            seed=run.seed,
            num_workers=self.recipe.data.num_workers,
            pin_memory=self.device.type == "cuda",
            drop_last=len(fit_part) % batch_size == 1 and len(fit_part) > 1,
        )
        run.loaders = {
            name: make_loader(dataset, config.batch_size, self.recipe.data, self.device)
            for name, dataset in datasets.items()
        }
        loss = self.loss_function(run.targets["fit"]).to(self.device)
        stopping = EarlyStopping(
            partial(validation_loss, run.network, loss, run.loaders["validation"], self.device, self.precision),
            run.network,
            config.patience,
        )
        steps = len(loader) if config.max_steps_per_epoch is None else min(len(loader), config.max_steps_per_epoch)
        schedule = Schedule(
            epochs=config.epochs,
            steps_per_epoch=steps,
            grad_clip=self.recipe.train.grad_clip,
            seed=run.seed,
            lr_key="finetune.lr",
            label=f"seed {run.seed}, ",
        )
        checkpointing = Checkpointing(self.settings_yaml, name=f"{self.recipe.model.encoder} fine-tuning")
        return Trainer(
            HeadObjective(run.network, loss),
            finetune_optimizer(run.model, self.recipe, self.mode),
            loader,
            seed_dir,
            schedule,
            runtime=Runtime(device=self.device, precision=self.precision, console=self.console),
            handlers=[checkpointing, stopping],
        )

    def run_seed(
        self,
        seed: int,
        seed_dir: Path,
        resume_from: dict | None = None,
        on_epoch_end: Callable[[int], None] | None = None,
    ) -> tuple[dict, pd.DataFrame, list[dict]]:
        """Train and test one seed in ``seed_dir`` (from a checkpoint state if given); keep its results there."""
        run = self.prepare_seed(seed)
        trainer = self.seed_trainer(run, seed_dir)
        result = trainer.run(resume_from, on_epoch_end)
        stopping = trainer.handler(EarlyStopping)
        assert stopping is not None, "seed_trainer hands the trainer early stopping"
        summary = {
            "seed": seed,
            "best_epoch": stopping.best_epoch,
            "epochs_run": result.epochs_done,
            "best_val_loss": stopping.best_loss if stopping.best_epoch else float("nan"),
            "n_fit": len(run.parts.fit),
            "n_validation": len(run.parts.validation),
            "n_train_subjects": count_subjects(pd.concat([run.parts.fit.table, run.parts.validation.table])),
            "learning_rates": {
                group.get("name", str(k)): group["lr"] for k, group in enumerate(trainer.optimizer.param_groups)
            },
        }
        summary, predictions = self.test_seed(run, summary)
        history = [{"seed": seed, **entry} for entry in stopping.history]
        atomic_write_text(
            seed_dir / SEED_RESULT,
            json.dumps(
                json_ready(
                    {
                        "settings": self.settings_yaml,
                        "run": summary,
                        "predictions": predictions.to_dict("records"),
                        "dtypes": predictions.dtypes.astype(str).to_dict(),
                        "history": history,
                    }
                )
            ),
        )
        # The results are kept: the checkpoint (weights, optimiser, best weights) is no longer needed.
        trainer.checkpoint_path.unlink(missing_ok=True)
        return summary, predictions, history

    def test_seed(self, run: SeedRun, summary: dict) -> tuple[dict, pd.DataFrame]:
        """Metrics of the kept model on both test splits, its predictions, and the baselines on the same splits."""
        predictions = []
        for name in TEST_SPLITS:
            part = getattr(run.parts, name)
            if not len(part):
                summary[name] = None
                continue
            outputs = predict(run.network, run.loaders[name], self.device, self.precision).numpy()
            rows = part.table[["participant_id", "site", "split", self.target.column]].copy()
            rows.insert(0, "seed", run.seed)
            truth = self.target.values(part.table)
            if self.target.task == "classification":
                probabilities = torch.softmax(torch.from_numpy(outputs), dim=1).numpy()
                summary[name] = classification_metrics(truth, probabilities, self.target.classes)
                rows["prediction"] = np.asarray(self.target.classes, dtype=object)[probabilities.argmax(axis=1)]
                for column, label in enumerate(self.target.classes):
                    rows[f"prob_{label}"] = probabilities[:, column]
            else:
                predicted = outputs[:, 0] * run.scale[1] + run.scale[0]
                summary[name] = regression_metrics(truth, predicted)
                rows["prediction"] = predicted
            predictions.append(rows)
        summary["baselines"], note = baseline_metrics(self.intensity, self.position_of, run.parts, self.target)
        if note:
            summary["baseline_note"] = note
        return summary, pd.concat(predictions, ignore_index=True) if predictions else pd.DataFrame()
