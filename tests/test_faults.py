"""The fault-and-bad-input matrix: each case exits 2 (or 130) with one line naming the file, key or
participant, and leaves what existed before unchanged."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest
from rich.console import Console

from medssl import cli

# The small AlexNet, one step and no evaluation keep each command-line run to seconds.
FAST = ["model.encoder=alexnet", "eval.after_pretrain=false", "train.max_steps_per_epoch=1"]


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    monkeypatch.setattr(cli, "console", Console(width=400, soft_wrap=True))


def run_main(monkeypatch, capsys, *arguments) -> tuple[int, str]:
    """Run ``medssl ARGUMENTS`` as the console script does; return (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["medssl", *map(str, arguments)])
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    code = exit_info.value.code
    return 0 if code is None else code, capsys.readouterr().err


def one_line_error(error: str) -> str:
    assert error.startswith("error: "), error
    assert error.strip().count("\n") == 0, error
    return error


def tree_digest(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, hidden ones included, by relative path."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished smoke run of simclr (one epoch), shared by the tests that try to reuse it."""
    from typer.testing import CliRunner

    run_dir = tmp_path_factory.mktemp("faults") / "run"
    result = CliRunner().invoke(cli.app, ["pretrain", "simclr", "--smoke", "--out", str(run_dir), *FAST])
    assert result.exit_code == 0, (result.output, result.exception)
    return run_dir


# ----------------------------------------------------------------------------- reusing a run folder
def test_pretrain_into_a_finished_run_folder_without_resume_exits_2_and_changes_nothing(
    finished_run, monkeypatch, capsys
):
    before = tree_digest(finished_run)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", finished_run, *FAST)
    assert code == 2
    assert str(finished_run) in one_line_error(error) and "--resume" in error and "--out" in error
    assert tree_digest(finished_run) == before


def test_pretrain_overwrite_replaces_a_finished_run(tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_dir, *FAST)[0] == 0
    (run_dir / "notes.txt").write_text("mine")  # not a medssl file: --overwrite keeps it
    code, _ = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_dir, "--overwrite", *FAST)
    assert code == 0
    assert len(list((run_dir / "tensorboard").iterdir())) == 1  # the first run's events are gone
    assert (run_dir / "notes.txt").read_text() == "mine"
    run_notes = (run_dir / "run_notes.txt").read_text()
    assert run_notes.count("embedded synthetic cohort") == 1  # the first run's notes went with it


def test_pretrain_resume_and_overwrite_together_exit_2(tmp_path, monkeypatch, capsys):
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path, "--resume", "--overwrite"
    )
    assert code == 2 and "--resume" in one_line_error(error) and "--overwrite" in error


def test_pretrain_resume_into_a_missing_folder_exits_2_in_one_line_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "recipes/yaware_age.yaml", "--out", "runs/nothing", "--resume"
    )
    assert code == 2 and "runs/nothing: no such folder, nothing to resume" in one_line_error(error)
    assert list(tmp_path.iterdir()) == []


def test_pretrain_resume_into_a_folder_without_a_checkpoint_exits_2_and_changes_nothing(tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    before = tree_digest(tmp_path)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path, "--resume", *FAST)
    assert code == 2 and "holds no checkpoint (checkpoints/last.pt)" in one_line_error(error)
    assert "without --resume" in error
    assert tree_digest(tmp_path) == before


def test_pretrain_resume_without_out_and_no_earlier_run_exits_2_and_creates_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--resume", *FAST)
    assert code == 2 and "no run of this recipe in runs/" in one_line_error(error) and "--out" in error
    assert list(tmp_path.iterdir()) == []


def test_finetune_resume_into_a_missing_folder_exits_2_and_creates_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ft"
    code, error = run_main(
        monkeypatch, capsys, "finetune", "finetune_diagnosis", "--smoke", "--encoder", "none", "--out", out, "--resume"
    )
    assert code == 2 and f"{out}: no such folder, nothing to resume" in one_line_error(error)
    assert not out.exists()


@pytest.mark.parametrize("train_sizes", [[], ["--train-sizes", "8,all"]], ids=["finetune", "--train-sizes"])
def test_finetune_of_a_cohort_without_split_column_exits_2_naming_the_splits_and_creates_no_folder(
    finished_run, tiny_cohort, tmp_path, monkeypatch, capsys, train_sizes
):
    import shutil

    import pandas as pd

    root = shutil.copytree(tiny_cohort, tmp_path / "cohort")
    table = pd.read_csv(root / "participants.tsv", sep="\t")
    table.drop(columns="split").to_csv(root / "participants.tsv", sep="\t", index=False)
    out = tmp_path / "ft"
    encoder = ["--encoder", finished_run / "encoder.pt"] if train_sizes else ["--encoder", "none"]
    arguments = ["finetune", "finetune_diagnosis", f"data.root={root}", "--smoke", *encoder, "--out", out]
    code, error = run_main(monkeypatch, capsys, *arguments, *train_sizes)
    assert code == 2 and "no internal_test or external_test subject" in one_line_error(error)
    assert "add a split column" in error
    assert not out.exists()


def test_finetune_into_a_used_folder_exits_2_and_changes_nothing(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ft"
    out.mkdir()
    (out / "finetune.json").write_text("{}")
    before = tree_digest(out)
    code, error = run_main(
        monkeypatch, capsys, "finetune", "finetune_diagnosis", "--smoke", "--encoder", "none", "--out", out
    )
    assert code == 2 and str(out) in one_line_error(error) and "--overwrite" in error
    assert tree_digest(out) == before


# ----------------------------------------------------------------------------- truncated volumes
def truncated_cohort(tiny_cohort: Path, target: Path, suffix: str) -> tuple[Path, str, Path]:
    """A copy of the tiny cohort whose first training volume (as ``suffix``) is cut to half its size."""
    import shutil

    import nibabel as nib
    import pandas as pd

    shutil.copytree(tiny_cohort, target)
    table = pd.read_csv(target / "participants.tsv", sep="\t", dtype={"participant_id": str})
    participant = table.loc[table["split"] == "train", "participant_id"].iloc[0]
    (original,) = target.rglob(f"{participant}*.nii.gz")
    volume = original.with_name(original.name.replace(".nii.gz", suffix))
    if suffix == ".nii":
        nib.save(nib.load(original), volume)
        original.unlink()
        if "path" in table:
            table.loc[table["participant_id"] == participant, "path"] = str(volume.relative_to(target))
            table.to_csv(target / "participants.tsv", sep="\t", index=False)
    data = volume.read_bytes()
    volume.write_bytes(data[: len(data) // 2])
    return target, participant, volume


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_pretrain_refuses_a_half_truncated_volume_naming_participant_and_file(
    tiny_cohort, tmp_path, monkeypatch, capsys, suffix
):
    root, participant, volume = truncated_cohort(tiny_cohort, tmp_path / "cohort", suffix)
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run", f"data.root={root}", *FAST
    )
    assert code == 2
    assert participant in one_line_error(error) and f"{volume.name}:" in error and "truncated" in error


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_evaluate_refuses_a_half_truncated_volume(finished_run, tiny_cohort, tmp_path, monkeypatch, capsys, suffix):
    root, participant, volume = truncated_cohort(tiny_cohort, tmp_path / "cohort", suffix)
    code, error = run_main(
        monkeypatch,
        capsys,
        "evaluate",
        finished_run,
        "eval.baseline=false",
        "--cohort",
        root,
        "--out",
        tmp_path / "eval",
    )
    assert code == 2
    assert participant in one_line_error(error) and f"{volume.name}:" in error and "truncated" in error
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_data_cache_refuses_a_half_truncated_volume(tiny_cohort, tmp_path, monkeypatch, capsys, suffix):
    root, participant, volume = truncated_cohort(tiny_cohort, tmp_path / "cohort", suffix)
    code, error = run_main(monkeypatch, capsys, "data", "cache", root, tmp_path / "cache")
    assert code == 2
    assert participant in one_line_error(error) and f"{volume.name}:" in error and "truncated" in error
    assert not (tmp_path / "cache" / "participants.tsv").exists()


# ----------------------------------------------------------------------------- Ctrl-C
def test_ctrl_c_during_pretrain_prints_how_to_resume_and_exits_130(tmp_path, monkeypatch, capsys):
    import medssl.pipeline

    def interrupted(recipe, run_dir, **kwargs):
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "last.pt").touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(medssl.pipeline, "pretrain", interrupted)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run")
    assert code == 130
    assert error.strip().splitlines() == [
        "interrupted: continue from the last checkpoint with: "
        f"medssl pretrain simclr --smoke --resume --out {tmp_path / 'run'}"
    ]


def test_ctrl_c_before_the_first_checkpoint_prints_how_to_start_again_not_a_resume_that_would_fail(
    tmp_path, monkeypatch, capsys
):
    import medssl.pipeline

    def interrupted(recipe, run_dir, **kwargs):
        run_dir.mkdir()
        (run_dir / "recipe.yaml").touch()
        raise KeyboardInterrupt

    monkeypatch.setattr(medssl.pipeline, "pretrain", interrupted)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run")
    assert code == 130
    assert error.strip().splitlines() == [
        "interrupted before the first checkpoint: start again with: "
        f"medssl pretrain simclr --smoke --overwrite --out {tmp_path / 'run'}"
    ]


def test_the_resume_command_repeats_the_run_with_resume_instead_of_overwrite(tmp_path):
    from medssl.cli import resume_command

    argv = ["/venv/bin/medssl", "pretrain", "recipes/yaware_age.yaml", "train.epochs=80", "method={name: vicreg}"]
    argv += ["--out=old", "--overwrite", "--smoke"]
    assert resume_command(argv, tmp_path / "run") == (
        f"medssl pretrain recipes/yaware_age.yaml train.epochs=80 'method={{name: vicreg}}' --smoke --resume --out {tmp_path / 'run'}"
    )
    assert resume_command(["medssl", "finetune", "f", "--out", "a", "--resume"], tmp_path) == (
        f"medssl finetune f --resume --out {tmp_path}"
    )


def test_usage_errors_still_print_typer_usage_and_exit_2(monkeypatch, capsys):
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--no-such-option")
    assert code == 2 and "No such option" in error


@pytest.mark.parametrize(
    "arguments",
    [
        ["finetune", "finetune_diagnosis", "--encoder", "none", "--mode", "foo"],
        ["data", "cache", "nowhere", "out", "--dtype", "float64"],
    ],
    ids=["finetune --mode", "data cache --dtype"],
)
def test_an_option_with_fixed_choices_is_a_usage_error_listing_them(arguments, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, error = run_main(monkeypatch, capsys, *arguments)
    assert code == 2 and f"Invalid value for '{arguments[-2]}'" in error and "command-line override" not in error
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- resuming with other settings
@pytest.fixture()
def run_copy(finished_run, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def test_resume_with_a_changed_training_setting_is_refused_naming_the_key(run_copy, monkeypatch, capsys):
    before = tree_digest(run_copy)
    code, error = run_main(
        monkeypatch,
        capsys,
        "pretrain",
        "simclr",
        "--smoke",
        "--out",
        run_copy,
        "--resume",
        *FAST,
        "train.weight_decay=0.5",
        "train.seed=7",
    )
    assert code == 2
    assert "train.weight_decay" in one_line_error(error) and "train.seed" in error and "train.epochs" not in error
    assert tree_digest(run_copy) == before


def test_resume_with_more_epochs_trains_them_and_records_them_in_recipe_yaml(run_copy, monkeypatch, capsys):
    import pandas as pd

    from medssl.recipe import load_recipe

    code, _ = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_copy, "--resume", *FAST, "train.epochs=2"
    )
    assert code == 0
    assert load_recipe(run_copy / "recipe.yaml").train.epochs == 2
    table = pd.read_csv(run_copy / "metrics.csv")
    assert list(table[table["kind"] == "epoch"]["epoch"]) == [0, 1]


def test_resume_from_a_truncated_checkpoint_exits_2_and_changes_nothing(run_copy, monkeypatch, capsys):
    checkpoint = run_copy / "checkpoints" / "last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    before = tree_digest(run_copy)
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_copy, "--resume", *FAST)
    assert code == 2 and str(checkpoint) in one_line_error(error)
    assert tree_digest(run_copy) == before


# ----------------------------------------------------------------------------- read-only folders, full disks
def refuse_writes_under(folder: Path, monkeypatch) -> None:
    """Every Python-level way medssl creates files (open for writing, mkdir, mkstemp) raises
    ``OSError(EROFS)`` under ``folder``, as a read-only mount would."""
    import builtins
    import errno
    import os
    import pathlib
    import tempfile

    def check(target) -> None:
        path = Path(os.fspath(target)).absolute()
        if path == folder or folder in path.parents:
            raise OSError(errno.EROFS, "Read-only file system", str(path))

    real_open, real_mkdir, real_mkstemp = builtins.open, pathlib.Path.mkdir, tempfile.mkstemp

    def open_(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and any(flag in mode for flag in "wax+"):
            check(file)
        return real_open(file, mode, *args, **kwargs)

    def mkdir(self, *args, **kwargs):
        check(self)
        return real_mkdir(self, *args, **kwargs)

    def mkstemp(*args, dir=None, **kwargs):
        check(dir or tempfile.gettempdir())
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(pathlib.Path, "mkdir", mkdir)
    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


@pytest.fixture()
def read_only(monkeypatch):
    """Make a folder read-only: ``chmod 555`` where that blocks writes; as root, where it does
    not, :func:`refuse_writes_under` gives the error a read-only mount would."""

    def make(folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o555)
        try:
            (folder / ".probe").touch()
        except PermissionError:
            return folder  # the operating system refuses: test with the real error
        (folder / ".probe").unlink()
        folder.chmod(0o755)
        refuse_writes_under(folder.absolute(), monkeypatch)
        return folder

    return make


def assert_refused_naming(code: int, error: str, path: Path) -> None:
    assert code == 2
    assert str(path) in one_line_error(error)
    assert "read-only" in error.lower() or "permission" in error.lower()


def test_pretrain_into_a_read_only_out_is_one_line_naming_the_folder(read_only, tmp_path, monkeypatch, capsys):
    locked = read_only(tmp_path / "locked")
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", locked / "run", *FAST)
    assert_refused_naming(code, error, locked / "run")


def test_a_read_only_medssl_cache_is_one_line_naming_the_folder(read_only, tmp_path, monkeypatch, capsys):
    locked = read_only(tmp_path / "locked")
    monkeypatch.setenv("MEDSSL_CACHE", str(locked / "cache"))
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run", *FAST)
    assert_refused_naming(code, error, locked / "cache")


def test_evaluate_into_a_read_only_out_is_one_line(finished_run, read_only, tmp_path, monkeypatch, capsys):
    locked = read_only(tmp_path / "locked")
    code, error = run_main(
        monkeypatch, capsys, "evaluate", finished_run, "eval.baseline=false", "--out", locked / "eval"
    )
    assert_refused_naming(code, error, locked / "eval")


def test_data_synth_into_a_read_only_folder_is_one_line(read_only, tmp_path, monkeypatch, capsys):
    locked = read_only(tmp_path / "locked")
    code, error = run_main(
        monkeypatch, capsys, "data", "synth", locked / "cohort", "--subjects", "8", "--sites", "2", "--shape", "8"
    )
    assert_refused_naming(code, error, locked / "cohort")


def write_predictions(path: Path) -> Path:
    import pandas as pd

    pd.DataFrame(
        {
            "participant_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "internal_test", "external_test"],
            "site": ["A", "B", "A", "C"],
            "age": [20.0, 30.0, 40.0, 50.0],
            "age_pred": [21.0, 30.0, 41.0, 52.0],
            "site_pred": ["A", "B", "A", "A"],
        }
    ).to_csv(path, index=False)
    return path


def test_score_json_onto_a_folder_and_score_of_a_folder_are_one_line_each(tmp_path, monkeypatch, capsys):
    predictions = write_predictions(tmp_path / "predictions.csv")
    (tmp_path / "taken.json").mkdir()
    code, error = run_main(monkeypatch, capsys, "score", predictions, "--json", tmp_path / "taken.json")
    assert code == 2 and "taken.json: it is a folder" in one_line_error(error)
    assert not list(tmp_path.glob(".taken.json.*"))  # no temporary left behind
    for folder in ("folder.csv", "predictions"):
        (tmp_path / folder).mkdir()
        code, error = run_main(monkeypatch, capsys, "score", tmp_path / folder)
        assert code == 2 and f"{folder}: is a folder; expected a predictions file" in one_line_error(error)


def test_score_json_into_a_read_only_folder_is_one_line(read_only, tmp_path, monkeypatch, capsys):
    predictions = write_predictions(tmp_path / "predictions.csv")
    locked = read_only(tmp_path / "locked")
    code, error = run_main(monkeypatch, capsys, "score", predictions, "--json", locked / "out.json")
    assert_refused_naming(code, error, locked)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_the_previous_checkpoint_survives(
    run_copy, monkeypatch, capsys
):
    from medssl import files

    checkpoint = run_copy / "checkpoints" / "last.pt"
    before = checkpoint.read_bytes()
    monkeypatch.setattr(files, "open_for_writing", lambda path: open("/dev/full", "wb"))  # every write: ENOSPC
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_copy, "--resume", *FAST, "train.epochs=2"
    )
    assert code == 2
    assert one_line_error(error).startswith(f"error: no space left on device writing {checkpoint} (")
    assert checkpoint.read_bytes() == before
    assert not list(checkpoint.parent.glob(".*.tmp"))


def test_a_killed_checkpoint_write_leaves_a_temporary_file_that_the_next_run_removes(run_copy, monkeypatch, capsys):
    stale = run_copy / "checkpoints" / ".last.pt.abc123.tmp"
    stale.write_bytes(b"half a checkpoint")
    code, _ = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_copy, "--resume", *FAST, "train.epochs=2"
    )
    assert code == 0 and not stale.exists()


# ----------------------------------------------------------------------------- file modes
@pytest.fixture()
def group_umask():
    """umask 027: new files should be 0640 (group-readable), not mkstemp's 0600."""
    import os

    previous = os.umask(0o027)
    yield 0o640
    os.umask(previous)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_run_outputs_follow_the_umask(group_umask, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "run"
    assert run_main(monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", run_dir, *FAST)[0] == 0
    for name in ("encoder.pt", "encoder.json", "recipe.yaml", "checkpoints/last.pt"):
        assert mode(run_dir / name) == group_umask, name


def test_data_cache_and_score_json_follow_the_umask(group_umask, tiny_cohort, tmp_path, monkeypatch, capsys):
    assert run_main(monkeypatch, capsys, "data", "cache", tiny_cohort, tmp_path / "cache", "--shape", "8")[0] == 0
    for name in ("volumes.npy", "volumes.json", "participants.tsv"):
        assert mode(tmp_path / "cache" / name) == group_umask, name
    predictions = write_predictions(tmp_path / "predictions.csv")
    assert run_main(monkeypatch, capsys, "score", predictions, "--json", tmp_path / "out.json")[0] == 0
    assert mode(tmp_path / "out.json") == group_umask


def test_finetune_results_follow_the_umask(group_umask, tmp_path, monkeypatch, capsys):
    out = tmp_path / "ft"
    code, error = run_main(
        monkeypatch,
        capsys,
        "finetune",
        "finetune_diagnosis",
        "--smoke",
        "--encoder",
        "none",
        "--out",
        out,
        "model.encoder=alexnet",
        "finetune.seeds=[0]",
    )
    assert code == 0, error
    for name in ("finetune.json", "finetune.csv", "predictions.csv", "recipe.yaml"):
        assert mode(out / name) == group_umask, name


# ----------------------------------------------------------------------------- smaller bad inputs
def test_an_unknown_device_is_one_line_naming_train_device(tmp_path, monkeypatch, capsys):
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run", "train.device=tpu"
    )
    assert code == 2 and "train.device = 'tpu'" in one_line_error(error) and "cpu" in error


def test_volumes_of_different_shapes_name_a_file_and_suggest_data_volume_shape(
    tiny_cohort, tmp_path, monkeypatch, capsys
):
    import shutil

    import nibabel as nib
    import numpy as np
    import pandas as pd

    root = Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))
    table = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant_id": str})
    participant = table.loc[table["split"] == "train", "participant_id"].iloc[-1]
    (volume,) = root.rglob(f"{participant}*.nii.gz")
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((12, 16, 16), np.float32), np.eye(4)), volume)
    code, error = run_main(
        monkeypatch,
        capsys,
        "pretrain",
        "simclr",
        "--out",
        tmp_path / "run",
        f"data.root={root}",
        *FAST,
        "train.epochs=1",
    )
    assert code == 2
    assert volume.name in one_line_error(error) and participant in error and "data.volume_shape" in error


def test_score_refuses_negative_true_ages_naming_the_participant(tmp_path, monkeypatch, capsys):
    import pandas as pd

    pd.DataFrame(
        {
            "participant_id": ["a", "b", "c", "d"],
            "split": ["train", "train", "internal_test", "external_test"],
            "site": ["A", "B", "A", "C"],
            "age": [20.0, 30.0, -40.0, 50.0],
            "age_pred": [21.0, 30.0, 41.0, 52.0],
            "site_pred": ["A", "B", "A", "A"],
        }
    ).to_csv(tmp_path / "predictions.csv", index=False)
    code, error = run_main(monkeypatch, capsys, "score", tmp_path / "predictions.csv")
    assert code == 2 and "-40" in one_line_error(error) and "participant c" in error


def test_a_missing_age_is_reported_without_a_numpy_repr(tiny_cohort, tmp_path, monkeypatch, capsys):
    import shutil

    import pandas as pd

    root = Path(shutil.copytree(tiny_cohort, tmp_path / "cohort"))
    table = pd.read_csv(root / "participants.tsv", sep="\t", dtype={"participant_id": str})
    table.loc[2, "age"] = float("nan")
    table.to_csv(root / "participants.tsv", sep="\t", index=False)
    code, error = run_main(monkeypatch, capsys, "data", "cache", root, tmp_path / "cache")
    assert (
        code == 2
        and "age is missing (empty, n/a or NA; line 4 of the table)" in one_line_error(error)
        and "np." not in error
    )


def test_a_bad_override_is_blamed_on_the_command_line_not_the_recipe_file(monkeypatch, capsys):
    code, error = run_main(monkeypatch, capsys, "pretrain", "recipes/simclr.yaml", "train.epochs=abc")
    assert code == 2
    assert (
        one_line_error(error).startswith("error: command-line override train.epochs=abc:")
        and "simclr.yaml" not in error
    )


def test_an_override_that_makes_an_unknown_section_is_blamed_on_the_command_line(monkeypatch, capsys):
    code, error = run_main(monkeypatch, capsys, "pretrain", "recipes/simclr.yaml", "trian.epochs=3")
    assert code == 2
    assert one_line_error(error).strip() == (
        "error: command-line override trian.epochs=3: unknown key 'trian'; did you mean train.epochs?"
    )


def test_a_recipe_that_is_not_valid_yaml_is_one_line_naming_the_file_and_line(tmp_path, monkeypatch, capsys):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  epochs: 3\n   lr: 1\n")
    code, error = run_main(monkeypatch, capsys, "pretrain", recipe)
    assert code == 2 and len(error.strip().splitlines()) == 1
    assert f"{recipe}: not valid YAML (line 3, column 6:" in one_line_error(error)


def test_smoke_with_evaluation_prints_no_sklearn_warning(tmp_path, monkeypatch, capsys):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, error = run_main(
            monkeypatch, capsys, "pretrain", "simclr", "--smoke", "--out", tmp_path / "run", "model.encoder=alexnet"
        )
    assert code == 0, error
    sklearn = [str(warning.message) for warning in caught if "sklearn" in warning.filename]
    assert sklearn == []


def test_a_setting_added_to_medssl_since_the_checkpoint_does_not_block_its_resume():
    from medssl.train.checkpoint import resume_differences

    saved = "train:\n  lr: 0.1\n"
    refused, allowed = resume_differences(saved, "train:\n  lr: 0.1\n  new_knob: 3\n")
    assert refused == [] and allowed == ["train.new_knob: null -> 3"]
    refused, _ = resume_differences(saved, "train:\n  lr: 0.2\n  new_knob: 3\n")
    assert refused == ["train.lr: 0.1 -> 0.2"]


def test_a_failed_write_names_the_file_asked_for_not_its_hidden_temporary(tmp_path):
    import errno

    from medssl.files import output_error

    target = tmp_path / "recipe.yaml"
    temporary = OSError(errno.EROFS, "Read-only file system", str(tmp_path / ".recipe.yaml.x1y2z3.tmp"))
    assert (
        str(output_error(temporary, target))
        == f"cannot write {target}: Read-only file system; choose a writable folder"
    )
    elsewhere = OSError(errno.EACCES, "Permission denied", str(tmp_path / "cache" / "volume.npy"))
    assert f"cannot write {tmp_path / 'cache' / 'volume.npy'}" in str(output_error(elsewhere, target))


def test_a_failed_write_to_a_relative_path_names_that_path_not_the_hidden_temporary(tmp_path, monkeypatch):
    import errno

    from medssl.files import output_error

    monkeypatch.chdir(tmp_path)  # the OS names the temporary by its absolute path, the user typed a relative one
    temporary = IsADirectoryError(errno.EISDIR, "Is a directory", str(tmp_path / "bad" / ".adir.lmym0nco.tmp"))
    assert str(output_error(temporary, "bad/adir")) == "cannot write bad/adir: it is a folder; give a file name"


@pytest.mark.parametrize("stderr_too", [False, True], ids=["stdout", "stdout-and-stderr"])
def test_a_pretrain_whose_output_reader_went_away_finishes_its_run(tmp_path, stderr_too):
    """``medssl pretrain ... | head`` (and ``2>&1 | head``): the run carries on to its encoder."""
    import os
    import subprocess

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before medssl writes its first line
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "medssl", "pretrain", "simclr", "--smoke", "--out", str(run_dir), *FAST]
    stderr = write_end if stderr_too else subprocess.PIPE
    try:
        finished = subprocess.run(command, stdout=write_end, stderr=stderr, text=True, timeout=600)
    finally:
        os.close(write_end)
    assert finished.returncode == 0, finished.stderr
    if not stderr_too:
        assert "Traceback" not in finished.stderr
        assert "standard output was closed (broken pipe)" in finished.stderr
    assert (run_dir / "encoder.pt").is_file()
    assert "embedded synthetic cohort" in (run_dir / "run_notes.txt").read_text()  # the notes it could not print


def test_output_without_reader_drops_output_once_and_says_so(tmp_path):
    import io
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    notes = io.StringIO()
    guarded = cli.OutputWithoutReader(stream, Console(file=notes, width=400))
    try:
        assert guarded.write("x" * 10) == 10
        guarded.flush()  # the write reaches the closed pipe here
        assert guarded.reader_gone
        assert guarded.write("more\n") == 5
        guarded.flush()  # now /dev/null: no error
        assert notes.getvalue().count("standard output was closed") == 1
        assert guarded.isatty() is False  # everything else is the stream's
    finally:
        stream.close()


def test_devices_with_a_one_process_method_is_refused_before_anything_is_launched(tmp_path, monkeypatch, capsys):
    launched = []
    monkeypatch.setattr(cli.pretrain, "_launch_torchrun", launched.append)  # the module of medssl pretrain
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    code, error = run_main(
        monkeypatch, capsys, "pretrain", "deepcluster", "--smoke", "--devices", "2", "--out", tmp_path / "r"
    )
    assert code == 2 and "'deepcluster' runs on one process: run it without --devices" in one_line_error(error)
    assert launched == [] and not (tmp_path / "r").exists()
    code, error = run_main(monkeypatch, capsys, "pretrain", "simclr", "trian.epochs=2", "--devices", "2")
    assert code == 2 and "trian" in one_line_error(error) and launched == []  # a bad recipe: refused before launch


# ----------------------------------------------------------------------------- several processes
def start_in_terminal_group(command: list[str], log: Path):
    """Start ``command`` as a terminal starts a foreground job: its own process group, SIGINT at
    its default action (a background job of a script would inherit SIGINT ignored); wide lines."""
    import os
    import signal
    import subprocess

    return subprocess.Popen(
        command,
        env={**os.environ, "COLUMNS": "1000"},
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_devices_2_with_a_refused_cohort_ends_with_one_error_line_and_exit_2(tmp_path):
    log = tmp_path / "log"
    process = start_in_terminal_group(
        [sys.executable, "-m", "medssl", "pretrain", "simclr", "--smoke", "--devices", "2",
         f"data.root={tmp_path / 'absent'}", "--out", str(tmp_path / "run")],
        log,
    )  # fmt: skip
    assert process.wait(timeout=300) == 2, log.read_text()
    lines = log.read_text().splitlines()
    assert lines[0].startswith("Launching 2 processes") and lines[1].startswith("Smoke run"), lines
    assert lines[2:] == [f"error: {tmp_path / 'absent'}: cohort folder does not exist"], lines


def test_ctrl_c_of_a_devices_2_run_prints_one_resume_line_with_devices_and_waits_for_its_processes(
    tiny_cohort, tmp_path
):
    import os
    import signal
    import time

    run_dir, log = tmp_path / "run", tmp_path / "log"
    command = ["pretrain", "simclr", "--smoke", "--devices", "2", f"data.root={tiny_cohort}", "train.epochs=500"]
    command += ["model.encoder=alexnet", "eval.after_pretrain=false", "--out", str(run_dir)]
    process = start_in_terminal_group([sys.executable, "-m", "medssl", *command], log)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: every process of the group gets it
    assert process.wait(timeout=120) == 130, log.read_text()
    output = log.read_text()
    with pytest.raises(ProcessLookupError):  # no rank left running once the command has returned
        os.killpg(process.pid, 0)
    assert "Traceback" not in output and "FAILED" not in output and "death signal" not in output, output
    interrupted = [line for line in output.splitlines() if line.startswith("interrupted")]
    assert interrupted == [
        f"interrupted: continue from the last checkpoint with: medssl {' '.join(command[:-2])} --resume --out {run_dir}"
    ], output
