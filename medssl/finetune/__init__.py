"""Fine-tuning a pre-trained encoder on a small labelled cohort: ``medssl finetune``.

The protocol of Dufumier et al. (MICCAI 2021): a head on the encoder, trained on the ``train``
split and tested on held-out subjects of the training sites (``internal_test``) and of unseen
sites (``external_test``), mean +- std over seeds, next to a from-scratch network and trivial
baselines. Training is the :class:`~medssl.train.trainer.Trainer`'s; this package is the
protocol around it, one idea a module:

- ``protocol``: :class:`FineTuner` and :func:`finetune_encoder`, the driver (see its docstring);
- ``target``, ``splits``: what is predicted, and the fit / validation / test parts of a run;
- ``encoder``, ``inputs``: the pre-trained encoder and what the network is shown;
- ``seeds``: one seed trained and tested; ``results``: the seeds summed up and written;
- ``metrics``, ``baselines``: how a run is scored; ``report``: the printed tables;
- ``label_efficiency``: scores against the number of labelled subjects (``--train-sizes``;
  its function shares the module's name, so it is imported from the module).

It sits above ``medssl.train`` and beside ``medssl.eval`` (whose probes and scores it uses);
``medssl.eval`` imports nothing from it. Names are imported on first use.

Example:
    >>> from medssl.recipe import load_recipe
    >>> from medssl.finetune import finetune_encoder
    >>> results = finetune_encoder(load_recipe("finetune_diagnosis"), "runs/yaware_age-20250101-120000", "runs/ft")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from medssl.lazy import lazy_exports

_MODULE_OF = {
    "FineTuner": "protocol",
    "finetune_encoder": "protocol",
    "print_finetune_report": "report",
}

__all__ = sorted(_MODULE_OF)

if TYPE_CHECKING:
    from medssl.finetune.protocol import FineTuner, finetune_encoder  # noqa: F401
    from medssl.finetune.report import print_finetune_report  # noqa: F401


__getattr__, __dir__ = lazy_exports(__name__, _MODULE_OF, globals())
