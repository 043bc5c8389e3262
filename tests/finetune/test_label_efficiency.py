"""finetune.label_efficiency: --train-sizes parsed and checked first, the curve written, resumed, printed and drawn."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medssl.cli import app, main
from medssl.data.cohort import load_cohort
from medssl.errors import CheckpointError, RecipeError
from medssl.finetune.protocol import finetune_encoder
from medssl.models import build_encoder, save_encoder

from .helpers import tiny_recipe


def test_the_train_size_note_and_the_curve_count_the_same_subjects(tmp_path, tiny_cohort):
    from medssl.finetune.label_efficiency import curve_rows

    recipe = tiny_recipe(tiny_cohort, seeds=[0, 1], train_size=20)
    recipe.data.max_subjects = 8  # as --smoke sets it: fewer subjects than the train split holds
    results = finetune_encoder(recipe, None, tmp_path / "run")
    n_split = len(load_cohort(tiny_cohort).subset("train"))
    assert n_split > 8
    assert (
        f"finetune.train_size = 20 is more than the 8 training subjects ({n_split} in the train split; "
        "data.max_subjects = 8): all 8 are used (fit and validation parts together)." in results["notes"]
    )
    assert all(run["n_fit"] + run["n_validation"] == 8 for run in results["runs"])
    assert {row["n_train"] for row in curve_rows(results, "scratch", 20)} == {8}
    assert results["settings"]["subjects"]["train"] == 8  # finetune.json counts the subjects the runs drew from
    assert len(results["settings"]["sites"]["train"]) <= 8


def test_train_sizes_refuse_a_size_given_twice():
    from medssl.finetune.label_efficiency import parse_train_sizes

    assert parse_train_sizes("20,50,all") == [20, 50, None]
    with pytest.raises(RecipeError, match="appears twice"):
        parse_train_sizes("20,20")


def test_train_sizes_not_below_the_training_subjects_are_one_run_with_all_of_them():
    from medssl.finetune.label_efficiency import sizes_below

    assert sizes_below([4, 20, 50, None], available=30) == ([4, 20, None], [50])
    assert sizes_below([4, 20, 50], available=20) == ([4, None], [20, 50])
    assert sizes_below([4, 20, None], available=100) == ([4, 20, None], [])


def test_label_efficiency_cli_writes_the_curve_resumes_without_refitting_and_refuses_other_settings(tmp_path):
    save_encoder(build_encoder("resnet18"), tmp_path / "run" / "encoder.pt")
    out = tmp_path / "curve"
    command = [
        "finetune",
        "finetune_diagnosis",
        "model.encoder=resnet18",
        "--encoder",
        str(tmp_path / "run"),
        "--train-sizes",
        "4,1000",  # the smallest size the command accepts, and one above the smoke run's 8 subjects
        "--smoke",
        "--out",
        str(out),
    ]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, result.output
    assert "--train-sizes 1000: not below the 8 training subjects, trained once with all of them" in " ".join(
        result.output.split()
    )
    assert not (out / "scratch-n1000").exists()
    table = pd.read_csv(out / "label_efficiency.csv")
    assert set(table["encoder"]) == {"pretrained", "scratch", "constant baseline", "intensity baseline"}
    assert set(table["train_size"].astype(str)) == {"4", "all"}
    assert set(table["split"]) == {"internal_test", "external_test"}
    four = table[(table["train_size"].astype(str) == "4")]
    assert (four["n_train"] == 4).all()
    assert (out / "label_efficiency.png").read_bytes()[:4] == b"\x89PNG"
    stamp = (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns
    again = CliRunner().invoke(app, command)
    assert again.exit_code == 0, again.output
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns == stamp
    assert pd.read_csv(out / "label_efficiency.csv").equals(table)
    # the same encoder named by its file is the same run
    by_file = [str(tmp_path / "run" / "encoder.pt") if part == str(tmp_path / "run") else part for part in command]
    assert CliRunner().invoke(app, by_file).exit_code == 0
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns == stamp
    # other settings are refused, not answered with the old results; --overwrite fine-tunes again
    refused = CliRunner().invoke(app, [*command, "--mode", "full"])
    assert isinstance(refused.exception, CheckpointError)
    assert "finetune.mode" in str(refused.exception) and "--overwrite" in str(refused.exception)
    only_four = ["4" if part == "4,1000" else part for part in command]  # one size is enough here
    again = CliRunner().invoke(app, [*only_four, "--mode", "full", "--overwrite"])
    assert again.exit_code == 0, again.output
    assert (out / "scratch-n4" / "finetune.json").stat().st_mtime_ns != stamp
    assert json.loads((out / "pretrained-n4" / "finetune.json").read_text())["settings"]["mode"] == "full"
    assert not (out / "scratch-nall").exists()  # the earlier run's folders went with --overwrite


def test_label_efficiency_cli_ends_with_the_curve_as_a_table(tmp_path, monkeypatch, capsys):
    import medssl.finetune.label_efficiency as module
    from medssl import cli

    rows = [
        {"encoder": encoder, "train_size": size, "n_train": n, "split": split, "metric": metric}
        | {"mean": mean + (0.1 if encoder == "pretrained" else 0.0) + n / 1000, "std": 0.05, "n_seeds": 3}
        for size, n in (("20", 20), ("all", 64))
        for split in ("internal_test", "external_test")
        for encoder in ("pretrained", "scratch", "constant baseline", "intensity baseline")
        for metric, mean in (("roc_auc", 0.6), ("balanced_accuracy", 0.55))
    ]
    monkeypatch.setattr(module, "label_efficiency", lambda *args, **kwargs: pd.DataFrame(rows))
    monkeypatch.setattr(cli, "console", Console(width=80))
    arguments = ["finetune", "finetune_diagnosis", "--encoder", tmp_path / "run", "--train-sizes", "20,all"]
    monkeypatch.setattr("sys.argv", ["medssl", *map(str, [*arguments, "--out", tmp_path / "curve"])])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code in (0, None)
    output = capsys.readouterr().out
    assert "Label efficiency: roc auc ↑ (mean ± sd over seeds)" in output
    internal = [line for line in output.splitlines() if line.strip().startswith("internal_test")]
    assert [line.split()[1:] for line in internal] == [
        ["20", "0.720", "0.620", "0.620", "0.620"],
        ["64", "0.764", "0.664", "0.664", "0.664"],
    ]
    assert "…" not in output and max(len(line) for line in output.splitlines()) <= 80
    assert output.index("Label-efficiency curve written to") > output.index("internal_test")


def test_train_sizes_are_checked_before_any_work(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(
        "sys.argv",
        [
            "medssl",
            "finetune",
            "finetune_diagnosis",
            "--encoder",
            str(tmp_path),
            "--train-sizes",
            "3,all",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--train-sizes '3,all'" in lines[0]
    assert not (tmp_path / "x").exists()


def test_label_efficiency_figure_keeps_auc_axes_within_0_and_1_and_its_legend_off_the_panels():
    import matplotlib.text

    from medssl.finetune.label_efficiency import label_efficiency_figure

    rows = [
        {"encoder": encoder, "n_train": n, "split": split, "metric": "roc_auc", "mean": mean, "std": 0.7}
        for encoder, mean in (("pretrained", 0.6), ("scratch", 0.5))
        for n in (4, 8)
        for split in ("internal_test", "external_test")
    ]
    figure = label_efficiency_figure(pd.DataFrame(rows), title="finetune_diagnosis: linear fine-tuning of run")
    for axis in figure.axes:
        low, high = axis.get_ylim()
        assert 0.0 <= low and high <= 1.02  # a spread of 0.7 would reach -0.1 and 1.3
    assert figure.axes[0].get_legend() is None and figure.axes[-1].get_legend() is not None
    texts = [text.get_text() for text in figure.findobj(matplotlib.text.Text)]  # get_suptitle needs matplotlib 3.8
    assert "finetune_diagnosis: linear fine-tuning of run" in texts
