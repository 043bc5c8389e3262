"""Fine-tuning a pre-trained encoder on a small labelled (clinical) cohort: ``medssl finetune``.

The protocol of the fine-tuning tables of Dufumier et al., "Contrastive learning with
continuous proxy meta-data for 3D MRI classification" (MICCAI 2021): an encoder
pre-trained on a large healthy cohort gets a linear head and is trained to classify
patients vs. controls (or to regress a score); it is tested on held-out subjects of the
training sites (**internal** test, split ``internal_test``) and on sites never seen in
training (**external** test, split ``external_test``), and every number is the mean +- std
over repeated runs. A randomly initialised encoder trained with the same recipe
(``--encoder none``) is the baseline pre-training must beat.

One run, for one seed:

1. the ``train`` split is cut into a *fit* part and a *validation* part
   (:func:`~medssl.finetune.splits.validation_split`: stratified on site and class, a subject never in both);
2. the head (and, by ``finetune.mode``, the encoder) is trained on the fit part with a
   class-weighted cross-entropy (or an L1 loss on the standardised target for regression);
   the epoch of lowest validation loss is kept (early stopping with ``finetune.patience``);
3. the kept model predicts both test splits: ROC AUC and balanced accuracy for
   classification, MAE and R^2 for regression;
4. the trivial baselines are scored on the same splits
   (:func:`~medssl.finetune.baselines.baseline_metrics`): the constant predictor and a
   linear probe on intensity percentiles.

Modes: ``linear`` (frozen encoder in eval mode, so not even BatchNorm statistics move: a
linear probe), ``full`` (everything at ``finetune.lr``), ``lower_lr`` (the encoder at
``finetune.lr * finetune.encoder_lr_factor``, the head at ``finetune.lr``) and ``scratch``
(no pre-trained encoder: a fresh one, seeded, trained like ``full``). In mode ``linear``
without augmentation the features are computed once, standardised with the fit part's
statistics (as the probes of ``medssl evaluate`` are) and only the head is trained on them:
seconds instead of minutes on a CPU.

Training is pre-training's :class:`~medssl.train.trainer.Trainer` with a head objective
(``medssl.train.finetuning``): the same autocast, loss scaling, finiteness and gradient-norm
checks, progress bars, ``metrics.csv`` and atomic checkpoints. This module is the protocol
around it; its parts are the other modules of ``medssl.finetune``: splits, targets, metrics,
baselines, the seeds, the results and the report.

Files written to the run folder: ``finetune.json`` (settings, summary, baselines, every run, notes),
``finetune.csv`` (one row per seed and test split, then ``mean`` and ``std`` rows),
``predictions.csv`` (every test subject, every seed), ``history.csv`` (losses per epoch),
``roc_internal_test.png`` / ``roc_external_test.png`` (``predictions_<split>.png`` for
regression), the resolved ``recipe.yaml``, and per seed ``seeds/seed<k>/`` (``metrics.csv``,
``tensorboard/``, ``checkpoints/last.pt`` while it trains, ``result.json`` once done). A run
interrupted at any point continues with ``resume=True`` (``medssl finetune ... --resume``)
and ends with the results of an uninterrupted one.

Example:
    >>> from medssl.recipe import load_recipe
    >>> recipe = load_recipe("finetune_diagnosis", ["finetune.mode=linear"])
    >>> results = finetune_encoder(recipe, "runs/yaware_age-20250101-120000", "runs/finetune")
    >>> results["summary"]["external_test"]["roc_auc"]
    {'mean': ..., 'std': ..., 'n_seeds': 3}
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from rich.console import Console

from medssl.errors import CheckpointError
from medssl.eval.features import IntensityStatistics
from medssl.files import atomic_write_text
from medssl.finetune.encoder import load_pretrained_encoder, pretraining_differences
from medssl.finetune.inputs import volume_dataset
from medssl.finetune.report import print_finetune_report
from medssl.finetune.results import ResultWriting
from medssl.finetune.seeds import SEED_RESULT, SEEDS_FOLDER, SeedTraining
from medssl.finetune.splits import check_test_subjects, count_subjects, training_pool
from medssl.finetune.target import known_rows, resolve_target
from medssl.methods import build_encoder_for
from medssl.models import Encoder
from medssl.models.features import extract_features
from medssl.models.weights import input_note
from medssl.recipe import Recipe, dump_recipe
from medssl.train.checkpoint import resumable_checkpoint, resume_differences
from medssl.train.setup import check_input_size, open_cohort, resolve_device, safe_precision

# Settings a resumed fine-tuning may change: how far to go, how many seeds, how to read the data.
FINETUNE_RESUMABLE = (
    "name",
    "description",
    "data.num_workers",
    "eval.",
    "method.",
    "train.epochs",
    "train.steps",
    "train.embedded.",  # medssl before profiles: its budget's values are compared one by one
    "train.checkpoint_every",
    "finetune.epochs",
    "finetune.embedded.epochs",
    "finetune.seeds",
    "profile",
)


class FineTuner(SeedTraining, ResultWriting):
    """Runs the protocol of the module docstring for one recipe and one encoder. Use :func:`finetune_encoder`."""

    def __init__(self, recipe: Recipe, encoder_source: str | Path | None, console: Console | None = None):
        self.console = console
        self.notes: list[str] = []
        self.encoder_source = (
            None if encoder_source is None or str(encoder_source).lower() == "none" else Path(encoder_source)
        )
        if self.encoder_source is not None and self.encoder_source.is_dir():  # one name for one encoder
            self.encoder_source = self.encoder_source / "encoder.pt"
        self.recipe = recipe
        self.say_cohort()
        # checked next: a wrong encoder should fail before any cohort is generated or read
        self.pretrained: Encoder | None = None
        if self.encoder_source is not None:
            self.pretrained, self.recipe, notes = load_pretrained_encoder(self.encoder_source, self.recipe)
            for note in notes:
                self.say(note)
        for note in pretraining_differences(self.encoder_source, self.recipe) if self.encoder_source else []:
            self.say(note)
        config = self.recipe.finetune
        self.mode = "scratch" if self.encoder_source is None else config.mode
        if self.encoder_source is None and config.mode != "full":
            self.say(
                f"--encoder none: training from scratch (every weight at finetune.lr); finetune.mode = {config.mode!r} is ignored."
            )
        self.device = resolve_device(self.recipe.train.device)
        self.precision: str = self.recipe.train.precision  # safe_precision may fall back to fp32
        # What a seed's checkpoint must agree with to be resumed: the recipe and the encoder trained.
        self.settings_yaml = dump_recipe(self.recipe) + yaml.safe_dump({"encoder": str(self.encoder_source or "none")})

    def say_cohort(self) -> None:
        """What a fine-tuning without ``data.root`` runs on: the embedded cohort, with the profile's budget."""
        recipe = self.recipe
        if not recipe.uses_embedded_cohort:
            return
        synthetic, config = recipe.data.synthetic, recipe.finetune
        self.say(
            f"data.root not set: using the embedded synthetic cohort ({synthetic.subjects} subjects, {synthetic.sites} sites, "
            f"{synthetic.external_sites} external, {synthetic.shape}^3 voxels{', with diagnosis' if synthetic.diagnosis else ''}) "
            f"with profile {recipe.profile} ({config.epochs} epoch{'s' if config.epochs != 1 else ''}, batch {config.batch_size})."
        )

    # -------------------------------------------------------------- all seeds
    def resumable_seeds(self, out_dir: Path) -> dict[int, dict]:
        """Per seed, what an earlier run left: ``{"result": ...}`` of a finished seed or ``{"checkpoint": state}``;
        refused (before anything is written) when it was trained with other settings."""
        found = {}
        for seed in self.recipe.finetune.seeds:
            seed_dir = out_dir / SEEDS_FOLDER / f"seed{seed}"
            if (seed_dir / SEED_RESULT).is_file():
                saved = json.loads((seed_dir / SEED_RESULT).read_text())
                refused, _ = resume_differences(saved["settings"], self.settings_yaml, FINETUNE_RESUMABLE)
                if refused:
                    raise CheckpointError(
                        f"{seed_dir / SEED_RESULT}: was fine-tuned with other settings ({'; '.join(refused)}); "
                        "resume with that run's recipe and --encoder, start a new --out, or add --overwrite"
                    )
                found[seed] = {"result": saved}
            elif (seed_dir / "checkpoints" / "last.pt").is_file():
                state, _ = resumable_checkpoint(
                    seed_dir / "checkpoints" / "last.pt",
                    self.settings_yaml,
                    self.recipe.finetune.epochs,
                    "finetune.epochs",
                    FINETUNE_RESUMABLE,
                )
                found[seed] = {"checkpoint": state}
        return found

    def prepare(self) -> None:
        """Open the cohort, resolve the target, score intensities once; cache frozen features in mode linear."""
        recipe, config = self.recipe, self.recipe.finetune
        self.cohort = open_cohort(recipe, self.console)
        self.target = resolve_target(self.cohort.table, config)
        check_test_subjects(self.cohort, self.target)
        dropped = int((~known_rows(self.cohort.table, self.target.column)).sum())
        if dropped:
            self.say(f"{dropped} subject(s) without a value in {self.target.column!r} are left out.")
        if not len(self.cohort.subset("external_test")):
            self.say("the cohort has no external_test subjects: only the internal test is reported.")
        if config.train_size is not None:
            self.check_train_size(config.train_size)
        self.position_of = {pid: position for position, pid in enumerate(self.cohort.table["participant_id"])}
        self.features, self.input_checked = None, False
        if self.pretrained is not None and self.pretrained.spec.input:
            sample = volume_dataset(self.cohort.head(1), recipe, augment=False)[0]["volume"]
            note = input_note(self.pretrained.spec, tuple(sample.shape[1:]), recipe)
            if note:
                self.say(note)
        self.intensity = extract_features(
            IntensityStatistics(), self.cohort, recipe, description="intensity statistics", console=self.console
        ).astype(np.float64)
        self.check_precision()
        if self.mode == "linear" and not config.augment:
            assert self.pretrained is not None, "mode linear is set only with a pre-trained encoder"
            encoder = self.pretrained.to(self.device)
            check_input_size(
                encoder,
                volume_dataset(self.cohort.head(1), recipe, augment=False)[0]["volume"][None].to(self.device),
                recipe.model.encoder,
            )
            self.input_checked = True
            self.features = torch.from_numpy(
                extract_features(
                    encoder,
                    self.cohort,
                    recipe,
                    device=self.device,
                    batch_size=config.batch_size,
                    description="frozen features",
                    console=self.console,
                )
            )

    def check_train_size(self, train_size: int) -> None:
        """Say so when ``finetune.train_size`` exceeds the training subjects there are to draw from, counted
        as the runs count them (fit and validation parts together), and why fewer than the train split holds."""
        train = self.cohort.subset("train").table
        available = count_subjects(training_pool(self.cohort, self.target, self.recipe.data.max_subjects).table)
        if train_size <= available:
            return
        reasons = []
        unlabelled = count_subjects(train[~known_rows(train, self.target.column)])
        if unlabelled:
            reasons.append(f"{unlabelled} without a {self.target.column!r} value")
        labelled_rows = int(known_rows(train, self.target.column).sum())
        if self.recipe.data.max_subjects is not None and self.recipe.data.max_subjects < labelled_rows:
            reasons.append(f"data.max_subjects = {self.recipe.data.max_subjects}")
        total = count_subjects(train)
        detail = f" ({total} in the train split; {', '.join(reasons)})" if available < total else ""
        self.say(
            f"finetune.train_size = {train_size} is more than the {available} training subjects{detail}: "
            f"all {available} are used (fit and validation parts together)."
        )

    def run(self, out_dir: Path, resume: bool = False, on_epoch_end: Callable[[int], None] | None = None) -> dict:
        """Every seed (finished ones of a resumed run are read back), then the summary and the files."""
        out_dir = Path(out_dir)
        earlier = self.resumable_seeds(out_dir) if resume else {}
        self.prepare()
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "recipe.yaml", dump_recipe(self.recipe))
        runs, predictions, history = [], [], []
        started = time.perf_counter()
        for seed in self.recipe.finetune.seeds:
            saved = earlier.get(seed, {}).get("result")
            if saved is not None:  # in its own column types: float32 probabilities print as they did
                rows = pd.DataFrame(saved["predictions"], columns=list(saved["dtypes"])).astype(saved["dtypes"])
                run, steps = saved["run"], saved["history"]
            else:
                run, rows, steps = self.run_seed(
                    seed, out_dir / SEEDS_FOLDER / f"seed{seed}", earlier.get(seed, {}).get("checkpoint"), on_epoch_end
                )
            runs.append(run)
            predictions.append(rows)
            history.extend(steps)
        results = self.summarise(runs, time.perf_counter() - started)
        self.write(out_dir, results, pd.concat(predictions, ignore_index=True), pd.DataFrame(history))
        return results

    def check_precision(self) -> None:
        if self.precision != "bf16" or self.device.type != "cpu" or self.mode == "linear":
            return
        encoder = self.pretrained if self.pretrained is not None else build_encoder_for(self.recipe.model)
        sample = volume_dataset(self.cohort.head(1), self.recipe, augment=False)[0]["volume"][None]
        self.precision, note = safe_precision(self.precision, self.device, encoder, sample)
        if note:
            self.say(note)


def finetune_encoder(
    recipe: Recipe,
    encoder: str | Path | None,
    out_dir: str | Path,
    console: Console | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int], None] | None = None,
) -> dict:
    """Fine-tune ``encoder`` (an ``encoder.pt``, a run folder, or None/"none" for from scratch)
    with the recipe's ``finetune`` section; write and return the results (see the module docstring).

    With ``resume``, seeds finished in ``out_dir`` are read back and an interrupted one continues
    from its last checkpoint: the results equal those of an uninterrupted run. ``on_epoch_end(epoch)``
    runs after every epoch of every seed."""
    tuner = FineTuner(recipe, encoder, console=console)
    results = tuner.run(Path(out_dir), resume=resume, on_epoch_end=on_epoch_end)
    if console is not None:
        print_finetune_report(results, console, notes=False)
        console.print(f"Fine-tuning results written to {out_dir}")
    return results
