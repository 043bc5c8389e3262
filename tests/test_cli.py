"""The ``medssl`` command line: recipes, pretrain (smoke, overrides, resume), evaluate, score, data synth and
cache, errors."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import nibabel as nib
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medssl import cli
from medssl.cli.common import choose_run_dir
from medssl.eval.report import report_notes
from medssl.recipe import field_docs, list_recipe_names, load_recipe

runner = CliRunner()
# The small AlexNet and no evaluation keep the command-line runs to seconds.
FAST = ["model.encoder=alexnet", "eval.after_pretrain=false"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    """Rich tables wrap long cells at 80 columns: print wide so names stay on one line."""
    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))


def invoke(*arguments: str):
    result = runner.invoke(cli.app, [str(argument) for argument in arguments])
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def run_main(monkeypatch, capsys, *arguments: str) -> tuple[int, str]:
    """Run ``medssl ARGUMENTS`` as the console script does; return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    return exit_info.value.code, capsys.readouterr().err


def run_main_output(monkeypatch, capsys, *arguments: str) -> tuple[int, str, str]:
    """Run ``medssl ARGUMENTS`` as the console script does; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    captured = capsys.readouterr()
    return exit_info.value.code or 0, captured.out, captured.err


def refusal(error: str) -> str:
    """The text of a one-line ``error:`` message."""
    assert error.startswith("error: ") and error.strip().count("\n") == 0, error
    return error.strip().removeprefix("error: ")


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def epochs_logged(run_dir) -> list[int]:
    table = pd.read_csv(run_dir / "metrics.csv")
    return list(table[table["kind"] == "epoch"]["epoch"])


# ----------------------------------------------------------------------------- recipes
def test_recipes_lists_every_shipped_recipe_with_its_description():
    output = invoke("recipes").output
    for name in list_recipe_names():
        assert name in output
    assert "Barlow Twins (Zbontar et al., ICML 2021)" in output
    assert "medssl pretrain <name>" in output and "medssl finetune <name> --encoder RUN" in output


def test_recipes_fields_lists_every_key_with_its_default():
    output = invoke("recipes", "--fields").output
    for key, _, _ in field_docs():
        assert key in output or key.startswith("method (")  # a method's keys: in its block (tests/test_config.py)
    assert "train.steps" in output and "profiles" in output and "Passes over the training cohort." in output


# ----------------------------------------------------------------------------- pretrain
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """`medssl pretrain simclr --smoke --out DIR train.epochs=2 ...`, run once for the module."""
    run_dir = tmp_path_factory.mktemp("cli") / "smoke"
    result = runner.invoke(
        cli.app,
        [
            "pretrain",
            "simclr",
            "--smoke",
            "--out",
            str(run_dir),
            "train.epochs=2",
            "train.max_steps_per_epoch=1",
            *FAST,
        ],
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return run_dir, result.output


def test_run_notes_hold_the_notes_of_loading_the_recipe_and_of_the_evaluation(tmp_path):
    run_dir = tmp_path / "run"
    result = invoke(
        "pretrain", "dino", "method.local_crops=1", "--smoke", "--out", str(run_dir), "model.encoder=alexnet"
    )
    assert result.exit_code == 0, result.output
    notes = (run_dir / "run_notes.txt").read_text()
    assert notes.count("method.local_crops is now method.n_local_crops: read as that") == 1
    assert result.output.count("method.local_crops is now method.n_local_crops") == 1
    evaluation = json.loads((run_dir / "eval" / "metrics.json").read_text())
    said = report_notes(evaluation)
    assert said and all(note in notes for note in said)
    # a note names the report's columns (random init, trained + ComBat ...), not the keys of metrics.json
    assert not any(note.startswith(("pretrained", "baseline", "combat")) for note in said)


def test_pretrain_smoke_writes_a_run_folder_in_out(smoke_run):
    run_dir, output = smoke_run
    assert "Smoke run" in output and f"Run folder: {run_dir}" in output.replace("\n", "")
    # the closing line reports epoch means, which metrics.csv holds; the progress bar the last step's
    epochs = pd.read_csv(run_dir / "metrics.csv").query("kind == 'epoch'")["loss"]
    assert (
        f"Done: mean loss {epochs.iloc[0]:.4f} -> {epochs.iloc[-1]:.4f} (first -> last epoch), encoder alexnet."
        in output
    )
    assert "step loss " in output
    for artefact in ("recipe.yaml", "metrics.csv", "checkpoints/last.pt", "encoder.pt", "encoder.json", "loss.png"):
        assert (run_dir / artefact).is_file(), artefact


def test_pretrain_smoke_applies_the_command_line_overrides(smoke_run):
    run_dir, _ = smoke_run
    assert epochs_logged(run_dir) == [0, 1]  # train.epochs=2 wins over the smoke budget of 1 epoch
    recipe = load_recipe(run_dir / "recipe.yaml")
    assert recipe.train.epochs == 2 and recipe.model.encoder == "alexnet" and recipe.train.max_steps_per_epoch == 1
    assert recipe.data.synthetic.subjects == 16  # the rest of the smoke budget is kept


def test_evaluate_on_a_smoke_run_writes_eval_metrics(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    out = tmp_path / "eval"
    invoke("evaluate", run_dir, "eval.baseline=false", "--out", out)
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"} <= set(
        metrics["pretrained"]
    )


def test_pretrain_resume_without_out_continues_the_latest_run_of_the_recipe(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    arguments = ["pretrain", "simclr", "--smoke", "train.max_steps_per_epoch=1", *FAST]
    invoke(*arguments)
    (first,) = (tmp_path / "runs").iterdir()
    assert first.name.startswith("simclr-smoke-")
    output = invoke(*arguments, "train.epochs=2", "--resume").output
    assert list((tmp_path / "runs").iterdir()) == [first]
    assert "Resuming" in output and "after epoch 1" in output
    assert epochs_logged(first) == [0, 1]


def test_resume_picks_the_latest_run_of_that_recipe_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in (
        "simclr-20250101-120000",
        "simclr-20250102-120000",
        "simclr-smoke-20250103-120000",
        "simclr_v2-20250104-120000",
    ):
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / name / "checkpoints" / "last.pt").touch()
    (tmp_path / "runs" / "simclr-20250105-120000").mkdir()  # no checkpoint: not resumable
    assert choose_run_dir("simclr", None, resume=True).name == "simclr-20250102-120000"
    assert choose_run_dir("simclr-smoke", None, resume=True).name == "simclr-smoke-20250103-120000"
    assert choose_run_dir("byol", None, resume=True).name.startswith("byol-2")
    assert choose_run_dir("simclr", tmp_path / "mine", resume=True) == tmp_path / "mine"


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["pretrain", "simclr", "train.epochs=abc"], "'train.epochs' = 'abc'"),
        (["pretrain", "simclr", "train.epochz=2"], "unknown key 'train.epochz'"),
        (["pretrain", "simclr", "train.epochs"], "override 'train.epochs': expected KEY.PATH=VALUE"),
        (["pretrain", "simclr", "--smoke", "true"], "switches such as --smoke or --resume take no value"),
        (["pretrain", "no/such/recipe.yaml"], "recipe 'no/such/recipe.yaml' not found"),
        (["pretrain", "/"], "recipe '/' is a folder"),
        (["pretrain", "finetune_diagnosis", "--smoke"], "runs with medssl finetune"),
        (["pretrain", "simclr", "--smoke", "method.name=mocov9"], "'method.name' = 'mocov9'"),
        (["pretrain", "simclr", "train.lr=.inf"], "'train.lr' = inf: Input should be a finite number"),
        (
            ["pretrain", "simclr", "train.epochs=true"],
            "'train.epochs' = True: Input should be an integer, not a boolean",
        ),
    ],
)
def test_bad_recipe_input_exits_with_code_2_and_a_one_line_error(monkeypatch, capsys, arguments, message):
    code, output, error = run_main_output(monkeypatch, capsys, *arguments)
    assert code == 2
    assert error.startswith("error: ") and message in error
    assert error.strip().count("\n") == 0 and output == ""  # refused before anything else is said


@pytest.mark.parametrize("override", ["train.epochs=3", "method.temperature=0.5", "model.encoder=resnet50"])
def test_evaluate_refuses_an_override_it_would_not_read(monkeypatch, capsys, tmp_path, override):
    code, error = run_main(monkeypatch, capsys, "evaluate", tmp_path, override)
    assert code == 2
    assert error.startswith("error: ") and f"evaluation does not read {override.split('=')[0]}" in error
    assert error.strip().count("\n") == 0


def test_a_recipe_with_a_key_written_twice_is_refused_before_a_run_folder_is_made(monkeypatch, capsys, tmp_path):
    recipe = tmp_path / "twice.yaml"
    recipe.write_text("train:\n  epochs: 3\ntrain:\n  lr: 0.1\n")
    code, error = run_main(monkeypatch, capsys, "pretrain", recipe, "--out", tmp_path / "run", *FAST)
    assert code == 2 and error.strip().count("\n") == 0
    assert error.startswith(f"error: {recipe}: not valid YAML (line 3, column 1: key 'train' appears twice")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("rank, lines", [("0", 1), ("1", 0)])
def test_a_refusal_under_torchrun_is_printed_by_rank_0_only(monkeypatch, capsys, rank, lines):
    monkeypatch.setenv("RANK", rank)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "train.epochz=2")
    assert code == 2
    assert error.count("unknown key 'train.epochz'") == lines


# ----------------------------------------------------------------------------- score
def test_score_writes_the_challenge_metrics_to_json(tmp_path):
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{i:02d}" for i in range(7)],
            "split": [
                "train",
                "train",
                "internal_test",
                "internal_test",
                "internal_test",
                "external_test",
                "external_test",
            ],
            "site": ["A", "B", "A", "B", "B", "C", "C"],
            "age": [25.0, 35.0, 20.0, 30.0, 40.0, 50.0, 70.0],
            "age_pred": [25.0, 35.0, 22.0, 30.0, 40.0, 53.0, 70.0],
            "site_pred": ["A", "B", "A", "A", "B", "A", "B"],
        }
    )
    table.to_csv(tmp_path / "predictions.csv", index=False)
    out = tmp_path / "scores" / "out.json"
    output = invoke("score", tmp_path / "predictions.csv", "--json", out).output
    metrics = json.loads(out.read_text())
    assert {"mae_internal", "mae_external", "bacc_site", "challenge_score", "ramp_combined"} <= set(metrics)
    assert metrics["mae_internal"] == pytest.approx(2 / 3)
    assert metrics["mae_external"] == pytest.approx(1.5)
    assert "challenge_score" in output


def write_challenge_predictions(path: Path, *, repeat_last: bool = False) -> Path:
    table = pd.DataFrame(
        {
            "participant_id": ["s1", "s2", "s3", "s4", "s5", "s6"],
            "split": ["train", "train", "internal_test", "internal_test", "external_test", "external_test"],
            "site": ["A", "B", "A", "B", "C", "C"],
            "age": [25.0, 35.0, 20.0, 30.0, 50.0, 70.0],
            "age_pred": [25.0, 35.0, 22.0, 30.0, 53.0, 70.0],
            "site_pred": ["A", "B", "A", "A", "A", "B"],
        }
    )
    if repeat_last:
        table = pd.concat([table, table.iloc[[-1]]])
    table.to_csv(path, index=False)
    return path


def test_score_refuses_a_repeated_participant_naming_the_file_and_the_participant(tmp_path, monkeypatch, capsys):
    predictions = write_challenge_predictions(tmp_path / "predictions.csv", repeat_last=True)
    code, error = run_main(monkeypatch, capsys, "score", predictions)
    assert code == 2
    assert refusal(error) == (
        f"{predictions}: duplicate participant_id 's6' (data rows 6, 7); expected one row per participant"
    )


def test_score_refuses_an_id_column_the_table_does_not_have(tmp_path, monkeypatch, capsys):
    predictions = write_challenge_predictions(tmp_path / "predictions.csv")
    code, error = run_main(monkeypatch, capsys, "score", predictions, "--id-col", "pid")
    assert code == 2 and refusal(error).startswith(f"{predictions}: missing column 'pid' (columns: participant_id,")


@pytest.mark.parametrize("json_name", ["bad/adir", "adir_json/"], ids=["existing folder", "trailing slash"])
def test_score_json_naming_a_folder_is_refused_before_scoring_naming_the_path_given(
    json_name, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)  # a relative --json, as typed
    (tmp_path / "bad" / "adir").mkdir(parents=True)
    predictions = write_challenge_predictions(tmp_path / "predictions.csv")
    code, out, error = run_main_output(monkeypatch, capsys, "score", predictions, "--json", json_name)
    assert code == 2 and refusal(error).startswith(f"cannot write {json_name}: ")
    assert f"give a file name, e.g. {Path(json_name) / 'scores.json'}" in error
    assert "mae_external" not in out  # refused before the table is printed
    assert not (tmp_path / "adir_json").exists()
    assert [path.name for path in (tmp_path / "bad").iterdir()] == ["adir"]  # no temporary left either


def test_score_json_inside_a_file_is_refused_naming_the_file(tmp_path, monkeypatch, capsys):
    predictions = write_challenge_predictions(tmp_path / "predictions.csv")
    code, error = run_main(monkeypatch, capsys, "score", predictions, "--json", predictions / "scores.json")
    assert (
        code == 2
        and refusal(error) == f"cannot write {predictions / 'scores.json'}: {predictions} is a file, not a folder"
    )


# ----------------------------------------------------------------------------- data synth
def test_data_synth_writes_nifti_volumes_and_a_participants_table(tmp_path):
    invoke("data", "synth", tmp_path / "cohort", "--subjects", "8", "--sites", "2", "--shape", "16")
    table = pd.read_csv(tmp_path / "cohort" / "participants.tsv", sep="\t")
    assert len(table) == 8 and table["site"].nunique() == 2
    assert set(table["split"]) >= {"train", "external_test"}  # one of the 2 sites is held out
    volumes = sorted((tmp_path / "cohort").rglob("*.nii.gz"))
    assert len(volumes) == 8
    assert nib.load(volumes[0]).shape == (16, 16, 16)


def test_data_synth_with_every_site_external_exits_with_code_2(tmp_path, monkeypatch, capsys):
    code, error = run_main(
        monkeypatch,
        capsys,
        "data",
        "synth",
        tmp_path / "cohort",
        "--subjects",
        "8",
        "--sites",
        "2",
        "--external-sites",
        "2",
        "--shape",
        "16",
    )
    assert code == 2 and "--external-sites 2: expected 0 to 1" in error
    assert not (tmp_path / "cohort").exists()


def test_data_synth_names_the_option_the_user_typed_not_a_recipe_key(tmp_path, monkeypatch, capsys):
    arguments = ["data", "synth", tmp_path / "synth2", "--subjects", "4", "--sites", "6", "--shape", "16"]
    code, error = run_main(monkeypatch, capsys, *arguments)
    assert code == 2
    assert refusal(error) == "--subjects 4: expected at least 2 subjects per site (>= 12 for --sites 6)"
    assert not (tmp_path / "synth2").exists()


def test_data_synth_into_a_folder_holding_a_cohort_is_refused_and_changes_nothing(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "cohort"
    invoke("data", "synth", folder, "--subjects", "8", "--sites", "2", "--shape", "8")
    before = tree_digest(folder)
    code, error = run_main(
        monkeypatch, capsys, "data", "synth", folder, "--subjects", "4", "--sites", "2", "--shape", "8"
    )
    assert code == 2
    assert refusal(error) == (
        f"{folder}: the folder already holds a cohort (cohort.json, participants.tsv, sub-0000_T1w.nii.gz and 7 more); "
        "choose another folder, or add --overwrite to replace it"
    )
    assert tree_digest(folder) == before
    own = tmp_path / "own"  # the user's cohort, not one medssl wrote
    own.mkdir()
    (own / "participants.csv").write_text("participant_id,age,sex,site\nsub-01,30,F,A\n")
    code, error = run_main(monkeypatch, capsys, "data", "synth", own, "--subjects", "4", "--sites", "2", "--shape", "8")
    assert code == 2 and "already holds a cohort (participants.csv)" in refusal(error)


def test_data_synth_into_a_file_is_refused_naming_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "afile").write_text("mine")
    arguments = ["data", "synth", tmp_path / "afile", "--subjects", "4", "--sites", "2", "--shape", "8", "--overwrite"]
    code, error = run_main(monkeypatch, capsys, *arguments)
    assert (
        code == 2 and refusal(error) == f"{tmp_path / 'afile'}: is a file; expected a folder to write the cohort into"
    )
    assert (tmp_path / "afile").read_text() == "mine"


def test_data_synth_overwrite_replaces_the_cohort_and_keeps_other_files(tmp_path):
    folder = tmp_path / "cohort"
    invoke("data", "synth", folder, "--subjects", "8", "--sites", "2", "--shape", "8")
    (folder / "notes.txt").write_text("mine")
    invoke("data", "synth", folder, "--subjects", "4", "--sites", "2", "--shape", "8", "--overwrite")
    assert len(pd.read_csv(folder / "participants.tsv", sep="\t")) == 4
    assert len(list(folder.glob("*.nii.gz"))) == 4  # the first cohort's other 4 volumes are gone
    assert (folder / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    invoke("data", "synth", empty, "--subjects", "4", "--sites", "2", "--shape", "8")  # an empty folder is fine
    assert (empty / "participants.tsv").is_file()


def test_data_cache_into_a_folder_holding_a_cache_is_refused_unless_overwrite(
    tiny_cohort, tmp_path, monkeypatch, capsys
):
    cache = tmp_path / "cache"
    invoke("data", "cache", tiny_cohort, cache, "--shape", "8")
    before = tree_digest(cache)
    code, error = run_main(monkeypatch, capsys, "data", "cache", tiny_cohort, cache, "--shape", "12")
    assert code == 2
    assert refusal(error) == (
        f"{cache}: the folder already holds a cohort (participants.tsv, volumes.json, volumes.npy); "
        "choose another folder, or add --overwrite to replace it"
    )
    assert tree_digest(cache) == before
    invoke("data", "cache", tiny_cohort, cache, "--shape", "12", "--overwrite")
    assert json.loads((cache / "volumes.json").read_text())["shape"] == [1, 12, 12, 12]


def test_data_cache_overwrite_onto_its_own_source_is_refused_and_changes_nothing(tiny_cohort, monkeypatch, capsys):
    before = tree_digest(tiny_cohort)
    code, error = run_main(monkeypatch, capsys, "data", "cache", tiny_cohort, tiny_cohort, "--overwrite")
    assert code == 2 and "the cache must be written to another folder than its source" in refusal(error)
    assert tree_digest(tiny_cohort) == before


@pytest.mark.parametrize("command", [["pretrain"], ["finetune"], ["data", "synth"], ["recipes"], ["benchmark"]])
def test_help_lists_switches_without_a_value_type(command):
    # typer 0.29 would show "--smoke <bool>", which reads as "--smoke true"
    from typer.testing import CliRunner

    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    switches = [
        line for line in result.output.splitlines() if "--overwrite" in line or "--smoke" in line or "--fields" in line
    ]
    assert switches and not any("<bool>" in line for line in switches)


@pytest.mark.parametrize("command", [[], ["data"], ["weights"], ["pretrain"], ["data", "cache"], ["score"]])
def test_help_shows_the_help_switch_without_a_value_type(command):
    # typer 0.29 shows "--help <bool>" in every panel, the top-level one included
    result = CliRunner().invoke(cli.app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    (line,) = [line for line in result.output.splitlines() if "--help" in line]
    assert "<bool>" not in line and "Show this message and exit." in line


@pytest.mark.parametrize(
    "override, suggestion",
    [
        ("trian.epochs=3", "did you mean train.epochs?"),
        ("train.epochz=3", "did you mean train.epochs?"),
        ("data.openbhb_modalty=vbm", "did you mean data.openbhb_modality?"),
        ("method.temperatur=0.1", "did you mean method.temperature?"),
        ("eval.after_pretrian=false", "did you mean eval.after_pretrain?"),
    ],
)
def test_a_mistyped_key_is_refused_with_the_closest_key_in_the_same_line(monkeypatch, capsys, override, suggestion):
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", override)
    assert code == 2 and refusal(error).endswith(suggestion), error


def test_a_key_close_to_none_is_refused_without_a_suggestion(monkeypatch, capsys):
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "zzzz.qqqq=3")
    assert code == 2 and "unknown key 'zzzz'" in refusal(error) and "did you mean" not in error
