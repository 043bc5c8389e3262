"""medssl: self-supervised pre-training of 3D encoders on medical images.

The data path, left to right: ``config`` (recipes) -> ``data`` (cohorts, synthetic
cohort, views) -> ``models`` (encoders, heads, feature extraction), ``losses`` ->
``methods`` -> ``train`` (the trainer, pre-training and fine-tuning objectives,
checkpoints, distributed) -> ``eval`` (probes, CV, challenge score, the fine-tuning
protocol) -> ``pipeline`` / ``cli``. A module imports only from modules to its left
(``tests/test_imports.py``).
"""

__version__ = "0.1.0"
