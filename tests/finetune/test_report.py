"""finetune.report: names and numbers whole in 80 columns, per-seed values listed under the table when they do not fit."""

from __future__ import annotations

import io
import re

from rich.console import Console

from medssl.finetune.protocol import finetune_encoder
from medssl.finetune.report import mean_std_text, print_finetune_report

from .helpers import tiny_recipe


def test_the_report_keeps_split_and_metric_names_whole_in_80_columns(tmp_path, tiny_cohort):
    results = finetune_encoder(tiny_recipe(tiny_cohort, seeds=[0, 1, 2]), None, tmp_path / "out")
    stream = io.StringIO()
    print_finetune_report(results, Console(file=stream, width=80), notes=False)
    lines = stream.getvalue().splitlines()
    assert max(len(line) for line in lines) <= 80
    for header in ("metric", "mean ± std", "(3 seeds)", "constant", "intensity", "per seed"):
        assert any(header in line for line in lines), header
    for split, entry in results["summary"].items():
        title = next(k for k, line in enumerate(lines) if line.startswith(f"{split} (n = {entry['n']})"))
        for metric in ("roc_auc", "balanced_accuracy"):
            row = next(line for line in lines[title:] if line.startswith(metric + " "))  # the name is never cut
            texts = [mean_std_text(entry[metric])]
            texts += [mean_std_text(results["baselines"][name][split][metric]) for name in ("constant", "intensity")]
            assert all(text in row for text in texts), (texts, row)  # "x.xxx ± y.yyy" whole, on its row
    # every number whole on one line: a cut one would leave a digit run without its three decimals
    numbers = [token for line in lines for token in re.findall(r"\d[\d.]*", line)]
    assert numbers and all(token.isdigit() or re.fullmatch(r"\d+\.\d{3}", token) for token in numbers), numbers


def test_per_seed_values_without_room_in_the_table_are_listed_under_it_not_cut():
    value = {"mean": -123.456, "std": 10.5, "n_seeds": 3}
    runs = [{"seed": seed, "internal_test": {"r2": -120.0 - seed, "n": 5}} for seed in range(3)]
    results = {
        "settings": {"target": "score", "task": "regression", "mode": "full", "encoder": None, "seeds": [0, 1, 2]},
        "summary": {"internal_test": {"r2": value, "n": 5}},
        "baselines": {name: {"internal_test": {"r2": value}} for name in ("constant", "intensity")},
        "runs": runs,
    }
    for width, listed_under in ((80, False), (72, True)):
        stream = io.StringIO()
        print_finetune_report(results, Console(file=stream, width=width), notes=False)
        lines = stream.getvalue().splitlines()
        assert max(len(line) for line in lines) <= width
        assert sum("-123.456 ± 10.500" in line for line in lines) == 1  # the row holds all three, whole
        assert any(line.count("-123.456 ± 10.500") == 3 for line in lines)
        assert any(line.startswith("r2 per seed: -120.000, -121.000, -122.000") for line in lines) == listed_under
