"""medssl: self-supervised pre-training of 3D encoders on medical images.

The data path, left to right: ``config`` (recipes) -> ``data`` (cohorts, synthetic
cohort, views) -> ``models`` (encoders, heads) -> ``losses`` -> ``methods`` ->
``train`` (engine, checkpoints, distributed) -> ``eval`` (probes, CV, challenge
score, fine-tuning) -> ``cli``.
"""

__version__ = "0.1.0"
