"""Score a table of age and site predictions with the OpenBHB challenge metrics.

Builds a small predictions table, writes it as CSV, then scores it exactly as
``medssl score predictions.csv`` does: MAE on the internal and external test sets, the
balanced accuracy of the site prediction, L_c = BAcc^0.3 * MAE_ext and the kit's
``ramp_combined``.

    python examples/score_a_submission.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from medssl.eval import challenge_score, read_predictions, score_predictions


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for split, sites in (
        ("train", ["a", "b", "c", "d"]),
        ("internal_test", ["a", "b", "c", "d"]),
        ("external_test", ["x"]),
    ):
        for index in range(40):
            site = sites[index % len(sites)]
            age = rng.uniform(10, 80)
            rows.append(
                {
                    "participant_id": f"{split}-{index}",
                    "split": split,
                    "site": site,
                    "age": age,
                    "age_pred": age + rng.normal(0, 3 if split != "external_test" else 5),
                    "site_pred": site if rng.random() < 0.4 else rng.choice(sites),
                }
            )
    path = Path(tempfile.mkdtemp()) / "predictions.csv"
    pd.DataFrame(rows).to_csv(path, index=False)

    scores = score_predictions(read_predictions(path))
    for key in ("mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"):
        print(f"{key:16s} {scores[key]:.3f}")
    # The published rows of Barbano et al. (ISBI 2023), as a check of the formula.
    print(f"L_c(BAcc 0.051, MAE_ext 3.76) = {challenge_score(mae_ext=3.76, bacc=0.051):.2f}")


if __name__ == "__main__":
    main()
