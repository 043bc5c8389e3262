"""The training engine: a :class:`Trainer` handed its objective, optimiser, loader and schedule
(it knows no method by name) and handlers for what only some runs need (checkpoints, early
stopping, collapse diagnostics), resumable :class:`EpochLoader` batches, atomic checkpoints,
DistributedDataParallel under ``torchrun``, and the assembly of a recipe's pre-training.

Names are imported on first use, so importing one submodule does not load the others.

Example:
    >>> from medssl.train import Checkpointing, EpochLoader, Schedule, Trainer
    >>> loader = EpochLoader(dataset, batch_size=8, seed=0)
    >>> trainer = Trainer(objective, optimizer, loader, "runs/mine", Schedule(epochs=2, steps_per_epoch=len(loader)),
    ...                   handlers=[Checkpointing()])
    >>> result = trainer.run()
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medssl.lazy import lazy_exports

_MODULE_OF = {
    "Trainer": "trainer",
    "Schedule": "trainer",
    "EpochContext": "trainer",
    "RunResult": "trainer",
    "Runtime": "trainer",
    "Handler": "handlers",
    "Checkpointing": "handlers",
    "EarlyStopping": "handlers",
    "CollapseMonitor": "handlers",
    "TrainingFeatures": "handlers",
    "EpochLoader": "loading",
    "build_pretraining": "pretraining",
    "run_pretraining": "pretraining",
    "load_checkpoint": "checkpoint",
}

__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from medssl.train.checkpoint import load_checkpoint
    from medssl.train.handlers import Checkpointing, CollapseMonitor, EarlyStopping, Handler, TrainingFeatures
    from medssl.train.loading import EpochLoader
    from medssl.train.pretraining import build_pretraining, run_pretraining
    from medssl.train.trainer import EpochContext, RunResult, Runtime, Schedule, Trainer


__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF, globals())
