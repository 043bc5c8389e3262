"""finetune.results: the ROC curves it draws, whatever the classes of a seed's test subjects."""

from __future__ import annotations

import numpy as np
import pytest

from medssl.eval.plots import plot_roc_curves


def test_roc_plot_accepts_a_curve_without_both_classes(tmp_path):
    path = plot_roc_curves(
        {
            "seed 0": (np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])),
            "seed 1": (np.array([1, 1]), np.array([0.2, 0.3])),
        },
        tmp_path / "roc.png",
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "labels", [np.array(["0", "1", "0", "1"]), np.array(["control", "patient"] * 2), [-1, 1, -1, 1]]
)
def test_roc_plot_refuses_labels_that_would_all_read_as_positive(tmp_path, labels):
    from medssl.eval.score import EvaluationError

    with pytest.raises(EvaluationError, match="is_positive must be booleans or 0 / 1"):
        plot_roc_curves({"seed 0": (labels, np.array([0.1, 0.9, 0.2, 0.8]))}, tmp_path / "roc.png")
    assert not (tmp_path / "roc.png").exists()
