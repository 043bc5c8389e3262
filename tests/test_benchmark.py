"""``medssl benchmark``: runs planned and launched, resume of a killed benchmark, failures, refusals, one real smoke benchmark."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console
from typer.testing import CliRunner

from medssl import benchmark as benchmark_module
from medssl import cli
from medssl.benchmark import default_recipes, planned_runs, pretrain_command, run_benchmark
from medssl.errors import BenchmarkError, RecipeError
from medssl.recipe import list_recipe_names

RECIPES = ["simclr", "yaware_age"]


def finished_run(run_dir: Path, seed: int) -> None:
    """What a finished ``medssl pretrain --out RUN_DIR`` leaves for the leaderboard (pretrained + random init)."""
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    splits = ["train"] * 4 + ["internal_test"] * 4 + ["external_test"] * 2
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{index}" for index in range(10)],
            "split": splits,
            "site": ["s0", "s1"] * 4 + ["s2"] * 2,
            "age": np.linspace(20, 70, 10),
        }
    )
    entry = {
        "mae_internal": 5.0 + seed,
        "mae_external": 7.0,
        "bacc_site": 0.5,
        "challenge_score": 5.7,
        "ramp_combined": None,
        "site_stratified": {"age": {"mae": {"mean": 6.0, "std": 0.5, "n_folds": 2}}},
        "leave_site_out": {},
    }
    (eval_dir / "metrics.json").write_text(json.dumps({"pretrained": entry, "baseline": entry, "settings": {}}))
    test = table["split"] != "train"
    table["age_pred"] = np.where(test, table["age"] + 3.0 + seed, np.nan)
    table["site_pred"] = np.where(test, table["site"], None)
    table.to_csv(eval_dir / "predictions.csv", index=False)
    table.to_csv(eval_dir / "predictions_baseline.csv", index=False)


class FakePretrain:
    """Stands in for the ``medssl pretrain`` process: records each command and finishes the run.

    ``kill_at`` makes the call of that index (0-based) behave like a run killed mid-way: its folder
    holds a checkpoint but no evaluation, and KeyboardInterrupt goes up as Ctrl-C would.
    ``fail`` lists run folders (``recipe/seedK``) that exit with code 1.
    """

    def __init__(self, kill_at: int | None = None, fail: tuple[str, ...] = ()):
        self.kill_at, self.fail = kill_at, fail
        self.commands: list[list[str]] = []
        self.envs: list[dict] = []

    def __call__(self, command: list[str], log: Path, env: dict) -> int:
        run_dir = Path(command[command.index("--out") + 1])
        if len(self.commands) == self.kill_at:
            (run_dir / "checkpoints").mkdir(parents=True)
            (run_dir / "checkpoints" / "last.pt").write_bytes(b"")
            raise KeyboardInterrupt
        self.commands.append(command)
        self.envs.append(env)
        if f"{run_dir.parent.name}/{run_dir.name}" in self.fail:
            run_dir.mkdir(parents=True, exist_ok=True)
            return 1
        finished_run(run_dir, seed=int(run_dir.name.removeprefix("seed")))
        return 0

    def runs(self) -> list[str]:
        return [
            f"{Path(c[c.index('--out') + 1]).parent.name}/{Path(c[c.index('--out') + 1]).name}" for c in self.commands
        ]

    def resumed(self) -> list[str]:
        return [run for run, command in zip(self.runs(), self.commands) if "--resume" in command]


def recording_console() -> Console:
    return Console(record=True, width=400, soft_wrap=True)


# ----------------------------------------------------------------------------- planning
def test_default_recipes_are_the_pretraining_recipes():
    recipes = default_recipes()
    assert "simclr" in recipes and "yaware_age" in recipes
    assert not any(name.startswith("finetune") for name in recipes)
    assert len(recipes) == sum(not name.startswith("finetune") for name in list_recipe_names())


def test_runs_are_planned_seed_by_seed_under_runs_recipe_seed(tmp_path):
    runs = planned_runs(RECIPES, [0, 1], tmp_path)
    assert [run.name for run in runs] == ["simclr/seed0", "yaware_age/seed0", "simclr/seed1", "yaware_age/seed1"]
    assert runs[1].run_dir == tmp_path / "runs" / "yaware_age" / "seed0"


def test_the_pretrain_command_sets_the_seed_and_resumes_an_existing_folder(tmp_path):
    run = planned_runs(["simclr"], [3], tmp_path)[0]
    command = pretrain_command(run, ["train.epochs=1"], smoke=True)
    assert command[:5] == [sys.executable, "-m", "medssl", "pretrain", "simclr"]
    assert command[5:] == ["train.seed=3", "train.epochs=1", "--out", str(run.run_dir), "--smoke"]
    run.run_dir.mkdir(parents=True)
    assert "--resume" in pretrain_command(run)


# ----------------------------------------------------------------------------- resume
def test_a_killed_benchmark_resumes_without_repeating_finished_runs(tmp_path):
    killed = FakePretrain(kill_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(RECIPES, [0, 1], tmp_path, n_resamples=50, run_one=killed)
    assert killed.runs() == ["simclr/seed0", "yaware_age/seed0"]

    rerun = FakePretrain()
    result = run_benchmark(RECIPES, [0, 1], tmp_path, n_resamples=50, run_one=rerun)
    assert rerun.runs() == ["simclr/seed1", "yaware_age/seed1"]  # the finished seed-0 runs are not repeated
    assert rerun.resumed() == ["simclr/seed1"]  # the killed one continues from its checkpoint, the other starts
    assert not result.failed and result.leaderboard is not None
    leaderboard = pd.read_csv(result.leaderboard["csv"])
    assert list(leaderboard["method"]) == ["simclr", "yaware_age", "random init"]
    assert list(leaderboard["n_seeds"]) == [2, 2, 2]

    again = FakePretrain()
    run_benchmark(RECIPES, [0, 1], tmp_path, n_resamples=50, run_one=again)
    assert again.commands == []
    times = json.loads((tmp_path / "run_times.json").read_text())
    assert set(times) == {"simclr/seed0", "yaware_age/seed0", "simclr/seed1", "yaware_age/seed1"}


def test_a_failed_run_is_reported_in_one_line_and_the_others_go_on(tmp_path):
    fake = FakePretrain(fail=("simclr/seed1",))
    console = recording_console()
    result = run_benchmark(RECIPES, [0, 1], tmp_path, n_resamples=50, run_one=fake, console=console)
    assert len(fake.commands) == 4
    assert [run.name for run in result.failed] == ["simclr/seed1"]
    failure_lines = [line for line in console.export_text().splitlines() if line.startswith("failed")]
    assert failure_lines == [
        f"failed: simclr seed 1 (exit code 1); log: {tmp_path / 'runs' / 'simclr' / 'seed1' / 'log.txt'}"
    ]
    assert (tmp_path / "leaderboard.md").is_file()


def test_parallel_jobs_split_the_cpus_and_hand_out_devices_in_turn(tmp_path):
    fake = FakePretrain()
    run_benchmark(RECIPES, [0, 1], tmp_path, jobs=2, devices=["0", "1"], n_resamples=50, run_one=fake)
    assert sorted(fake.runs()) == ["simclr/seed0", "simclr/seed1", "yaware_age/seed0", "yaware_age/seed1"]
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert {(env["OMP_NUM_THREADS"], env["MKL_NUM_THREADS"]) for env in fake.envs} == {(threads, threads)}
    assert {env["CUDA_VISIBLE_DEVICES"] for env in fake.envs} == {"0", "1"}


# ----------------------------------------------------------------------------- refusals
def test_benchmark_json_records_the_request(tmp_path):
    run_benchmark(["simclr"], [0], tmp_path, overrides=["train.epochs=1"], n_resamples=50, run_one=FakePretrain())
    recorded = json.loads((tmp_path / "benchmark.json").read_text())
    assert (
        recorded["recipes"] == ["simclr"] and recorded["seeds"] == [0] and recorded["overrides"] == ["train.epochs=1"]
    )
    assert recorded["command"] == f"medssl benchmark --recipes simclr --seeds 0 --out {tmp_path} train.epochs=1"


def test_more_seeds_with_the_same_overrides_extend_the_benchmark(tmp_path):
    run_benchmark(["simclr"], [0], tmp_path, overrides=["train.epochs=1"], n_resamples=50, run_one=FakePretrain())
    fake = FakePretrain()
    run_benchmark(["simclr"], [0, 1], tmp_path, overrides=["train.epochs=1"], n_resamples=50, run_one=fake)
    assert fake.runs() == ["simclr/seed1"]
    assert json.loads((tmp_path / "benchmark.json").read_text())["seeds"] == [0, 1]


def test_a_rerun_with_other_overrides_is_refused_before_any_run(tmp_path):
    run_benchmark(["simclr"], [0], tmp_path, overrides=["train.epochs=1"], n_resamples=50, run_one=FakePretrain())
    fake = FakePretrain()
    with pytest.raises(BenchmarkError, match="overrides train.epochs=1, got train.epochs=2"):
        run_benchmark(["simclr"], [0, 1], tmp_path, overrides=["train.epochs=2"], run_one=fake)
    assert fake.commands == []


def test_the_cli_refuses_a_mismatching_rerun_with_exit_2_and_one_line(tmp_path, monkeypatch, capsys):
    run_benchmark(["simclr"], [0], tmp_path, overrides=["train.epochs=1"], n_resamples=50, run_one=FakePretrain())
    monkeypatch.setattr(
        sys,
        "argv",
        ["medssl", "benchmark", "--recipes", "simclr", "--seeds", "0", "--out", str(tmp_path), "train.epochs=2"],
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error:") and "benchmark.json" in error and len(error.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"recipes": ["simclr"], "seeds": [0], "overrides": ["train.seed=4"]}, BenchmarkError),
        ({"recipes": ["simclr"], "seeds": [0, 0]}, BenchmarkError),
        ({"recipes": ["no_such_recipe"], "seeds": [0]}, RecipeError),
        ({"recipes": ["simclr"], "seeds": [0], "overrides": ["train.epoks=1"]}, RecipeError),
        ({"recipes": ["simclr"], "seeds": [0], "overrides": ["eval.after_pretrain=false"]}, BenchmarkError),
    ],
)
def test_requests_every_run_would_fail_are_refused_up_front(tmp_path, arguments, error):
    fake = FakePretrain()
    with pytest.raises(error):
        run_benchmark(out_dir=tmp_path, run_one=fake, **arguments)
    assert fake.commands == [] and not (tmp_path / "benchmark.json").exists()


def test_the_cli_exits_1_when_a_run_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "console", recording_console())
    monkeypatch.setattr(benchmark_module, "run_pretrain_process", FakePretrain(fail=("simclr/seed0",)))
    result = CliRunner().invoke(
        cli.app, ["benchmark", "--recipes", "simclr,yaware_age", "--seeds", "0", "--out", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert "failed: simclr seed 0" in cli.console.export_text()


def test_the_cli_tells_how_to_continue_an_interrupted_benchmark(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(benchmark_module, "run_pretrain_process", FakePretrain(kill_at=0))
    monkeypatch.setattr(
        sys, "argv", ["medssl", "benchmark", "--recipes", "simclr", "--seeds", "0", "--out", str(tmp_path)]
    )
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 130
    assert "rerun the same command" in capsys.readouterr().err


def test_the_leaderboard_command_rebuilds_the_files_and_refuses_an_empty_folder(tmp_path, monkeypatch, capsys):
    run_benchmark(["simclr"], [0], tmp_path, n_resamples=50, run_one=FakePretrain())
    (tmp_path / "leaderboard.md").unlink()
    monkeypatch.setattr(cli, "console", recording_console())
    assert CliRunner().invoke(cli.app, ["leaderboard", str(tmp_path)]).exit_code == 0
    assert "| simclr | 1 |" in (tmp_path / "leaderboard.md").read_text()
    (tmp_path / "empty").mkdir()
    for folder, message in (("empty", "no finished run"), ("absent", "no such folder")):
        monkeypatch.setattr(sys, "argv", ["medssl", "leaderboard", str(tmp_path / folder)])
        with pytest.raises(SystemExit) as exit_info:
            cli.main()
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end
def test_a_real_smoke_benchmark_through_the_cli_writes_the_leaderboard(tmp_path, monkeypatch):
    """2 recipes x 2 seeds of real ``medssl pretrain --smoke`` processes (about a minute on 2 cores)."""
    monkeypatch.setattr(cli, "console", recording_console())
    out = tmp_path / "bench"
    result = CliRunner().invoke(
        cli.app, ["benchmark", "--recipes", ",".join(RECIPES), "--seeds", "0,1", "--out", str(out), "--smoke"]
    )
    logs = {path.parent.name: path.read_text()[-2000:] for path in out.glob("runs/*/seed*/log.txt")}
    assert result.exit_code == 0, (result.output, logs)
    for extension in ("md", "json", "csv", "png"):
        assert (out / f"leaderboard.{extension}").stat().st_size > 0
    table = pd.read_csv(out / "leaderboard.csv")
    assert {"simclr", "yaware_age", "random init"} <= set(table["method"])
    assert set(table["method"]) <= {"simclr", "yaware_age", "random init", "intensity statistics", "training mean"}
    assert (table["n_seeds"] == 2).all()
    assert table["mae_internal_mean"].notna().all()
    report = json.loads((out / "leaderboard.json").read_text())
    assert {(row["method"], row["reference"]) for row in report["differences"]} >= {
        ("yaware_age", "random init"),
        ("yaware_age", "simclr"),
    }

    rebuilt = CliRunner().invoke(cli.app, ["leaderboard", str(out)])
    assert rebuilt.exit_code == 0, rebuilt.output
    assert "--smoke" in (out / "leaderboard.md").read_text()  # the benchmark's command, kept by the rebuild


def test_the_cli_ends_with_a_summary_table_of_the_leaderboard_that_fits_80_columns(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "console", Console(record=True, width=80))
    monkeypatch.setattr(benchmark_module, "run_pretrain_process", FakePretrain())
    arguments = ["benchmark", "--recipes", "simclr,yaware_age", "--seeds", "0,1", "--out", str(tmp_path)]
    assert CliRunner().invoke(cli.app, arguments).exit_code == 0
    text = cli.console.export_text()
    lines = text.splitlines()
    start = next(index for index, line in enumerate(lines) if line.startswith("Leaderboard: lower is better"))
    end = next(index for index, line in enumerate(lines) if line.startswith(("note:", "Leaderboard written")))
    table = lines[start:end]
    for method in ("simclr", "yaware_age", "random init"):
        assert any(line.split()[: len(method.split())] == method.split() for line in table), method
    assert "5.500" in "\n".join(table) and "± 0.707" in "\n".join(table)  # mae_internal 5 and 6 over the seeds
    assert "L_c" in "\n".join(table) and "…" not in text and max(map(len, table)) <= 80
    assert text.index("Leaderboard written to") > text.index("random init")  # the table, then where the files are
