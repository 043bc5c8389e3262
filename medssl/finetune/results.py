"""The results of a fine-tuning over its seeds: the summary (mean +- std), the settings, and the
files written to the run folder (``finetune.json``, ``finetune.csv``, ``predictions.csv``,
``history.csv``, the ROC or prediction plots)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.eval.score import TEST_SPLITS, as_labels
from medssl.files import atomic_write_text, json_ready
from medssl.finetune.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, mean_std
from medssl.finetune.splits import count_subjects, training_pool
from medssl.finetune.state import TunerState
from medssl.finetune.target import Target, known_rows


class ResultWriting(TunerState):
    """The part of :class:`~medssl.finetune.protocol.FineTuner` that sums the seeds up and writes the files."""

    def summarise(self, runs: list[dict], seconds: float) -> dict:
        config = self.recipe.finetune
        metrics = CLASSIFICATION_METRICS if self.target.task == "classification" else REGRESSION_METRICS
        summary = {}
        for name in TEST_SPLITS:
            scored = [run[name] for run in runs if run.get(name)]
            if scored:
                summary[name] = {metric: mean_std([entry[metric] for entry in scored]) for metric in metrics}
                summary[name]["n"] = scored[0]["n"]
        baselines = {
            baseline: {
                name: {
                    metric: mean_std([run["baselines"][baseline][name][metric] for run in runs]) for metric in metrics
                }
                for name in TEST_SPLITS
                if all(name in run["baselines"][baseline] for run in runs)
            }
            for baseline in ("constant", "intensity")
        }
        self.say_baseline_notes(runs)
        for name, entry in summary.items():
            if entry.get("roc_auc", {}).get("n_seeds", 1) < len(runs):
                self.notes.append(f"{name}: ROC AUC undefined for some seeds (a single class among its subjects)")
        encoder_lr = {"linear": None, "lower_lr": config.lr * config.encoder_lr_factor}.get(self.mode, config.lr)
        used = self.subjects_used()
        settings = {
            "target": self.target.column,
            "task": self.target.task,
            "classes": self.target.classes,
            "positive_class": self.target.classes[-1] if len(self.target.classes) == 2 else None,
            "mode": self.mode,
            "encoder": str(self.encoder_source) if self.encoder_source else None,
            "architecture": self.recipe.model.encoder,
            "seeds": list(config.seeds),
            "epochs": config.epochs,
            "patience": config.patience,
            "lr": config.lr,
            "encoder_lr": encoder_lr,
            "batch_size": config.batch_size,
            "optimizer": self.recipe.train.optimizer,
            "weight_decay": self.recipe.train.weight_decay,
            "val_fraction": config.val_fraction,
            "train_size": config.train_size,
            "class_weighting": config.class_weighting,
            "augment": config.augment,
            "precision": self.precision,
            "device": str(self.device),
            "seconds": round(seconds, 1),
            "subjects": {split: count_subjects(part) for split, part in used.items()},
            "sites": {split: sorted(part["site"].astype(str).unique()) for split, part in used.items()},
            "cohort": str(self.cohort.root),
        }
        return json_ready(
            {"settings": settings, "summary": summary, "baselines": baselines, "runs": runs, "notes": self.notes}
        )

    def subjects_used(self) -> dict[str, pd.DataFrame]:
        """The rows the runs draw from, per split: the training pool (labelled, ``data.max_subjects``) and
        the labelled test subjects; subjects without a target value are left out everywhere."""
        table = self.cohort.table
        labelled = table[known_rows(table, self.target.column)]
        used = {"train": training_pool(self.cohort, self.target, self.recipe.data.max_subjects).table}
        return used | {split: labelled[labelled["split"] == split] for split in TEST_SPLITS}

    def say_baseline_notes(self, runs: list[dict]) -> None:
        """Each way the intensity baseline was regularised on a tiny training part, once, with its seeds."""
        seeds_of: dict[str, list[str]] = {}
        for run in runs:
            if run.get("baseline_note"):
                seeds_of.setdefault(run["baseline_note"], []).append(str(run["seed"]))
        for note, seeds in seeds_of.items():
            self.say(f"{note}, seed{'s' if len(seeds) > 1 else ''} {', '.join(seeds)}.")

    def write(self, out_dir: Path, results: dict, predictions: pd.DataFrame, history: pd.DataFrame) -> None:
        from medssl.eval.plots import plot_age_predictions, plot_roc_curves

        atomic_write_text(out_dir / "finetune.json", json.dumps(results, indent=2))
        atomic_write_text(out_dir / "finetune.csv", summary_table(results).to_csv(index=False))
        atomic_write_text(out_dir / "predictions.csv", predictions.to_csv(index=False))
        atomic_write_text(out_dir / "history.csv", history.to_csv(index=False))
        for split in TEST_SPLITS:
            rows = predictions[predictions["split"] == split] if len(predictions) else predictions
            if rows.empty:
                continue
            n_seeds = len(self.recipe.finetune.seeds)
            title = f"{split}: {self.target.column}, {self.mode} ({n_seeds} seed{'s' if n_seeds > 1 else ''})"
            if self.target.task == "classification":
                plot_roc_curves(roc_curves(rows, self.target), out_dir / f"roc_{split}.png", title=title)
            else:
                plot_age_predictions(
                    rows.assign(split=rows["split"] + " seed " + rows["seed"].astype(str)),
                    out_dir / f"predictions_{split}.png",
                    age_col=self.target.column,
                    age_pred_col="prediction",
                    split_col="split",
                    title=title,
                )


def roc_curves(predictions: pd.DataFrame, target: Target) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{label: (is_positive, score)}`` per seed: the positive class, or each class vs. the rest."""
    curves = {}
    for seed, rows in predictions.groupby("seed", sort=True):
        truth = as_labels(rows[target.column]).to_numpy()
        positives = target.classes[-1:] if len(target.classes) == 2 else target.classes
        for label in positives:
            name = f"seed {seed}" if len(target.classes) == 2 else f"seed {seed}, {label} vs rest"
            curves[name] = (truth == label, rows[f"prob_{label}"].to_numpy(dtype=float))
    return curves


def summary_table(results: dict) -> pd.DataFrame:
    """One row per seed and test split with its metrics, then a ``mean`` and a ``std`` row per split."""
    rows = []
    for run in results["runs"]:
        for split in TEST_SPLITS:
            if run.get(split):
                rows.append({"seed": str(run["seed"]), "split": split, **run[split]})
    for split, entry in results["summary"].items():
        metrics = {key: value for key, value in entry.items() if isinstance(value, dict)}
        rows.append(
            {
                "seed": "mean",
                "split": split,
                "n": entry.get("n"),
                **{key: value["mean"] for key, value in metrics.items()},
            }
        )
        rows.append(
            {
                "seed": "std",
                "split": split,
                "n": entry.get("n"),
                **{key: value["std"] for key, value in metrics.items()},
            }
        )
    table = pd.DataFrame(rows)
    table.insert(2, "n", table.pop("n"))
    settings = results["settings"]
    table.insert(0, "mode", settings["mode"])
    table.insert(1, "target", settings["target"])
    return table
