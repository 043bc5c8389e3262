"""``medssl benchmark --finetune``: the points planned, a killed curve resumed, the paired t-interval,
the baselines in the fine-tuning leaderboard, the options checked up front, one real smoke run."""

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

from medssl import cli
from medssl.benchmark import finetuning as finetuning_module
from medssl.benchmark import run_benchmark
from medssl.errors import BenchmarkError, RecipeError
from medssl.finetune.leaderboard import paired_t_interval

T_975_2 = 4.302652729911275  # Student t quantile, 2 degrees of freedom (3 seeds)
GAIN = {0: 0.10, 1: 0.20, 2: 0.30}  # linear minus scratch, per fine-tuning seed: mean 0.2, sd 0.1


def finished_pretraining(command: list[str], log: Path, env: dict) -> int:
    """Stands in for ``medssl pretrain``: leaves what the pre-training leaderboard and fine-tuning read."""
    run_dir = Path(command[command.index("--out") + 1])
    seed = int(run_dir.name.removeprefix("seed"))
    (run_dir / "eval").mkdir(parents=True, exist_ok=True)
    (run_dir / "encoder.pt").write_bytes(b"")
    entry = {"mae_internal": 5.0 + seed, "mae_external": 7.0, "bacc_site": 0.5, "challenge_score": 5.7}
    (run_dir / "eval" / "metrics.json").write_text(json.dumps({"pretrained": entry, "settings": {}}))
    table = pd.DataFrame(
        {
            "participant_id": [f"sub-{index}" for index in range(6)],
            "split": ["train", "train", "internal_test", "internal_test", "external_test", "external_test"],
            "site": ["s0", "s1", "s0", "s1", "s2", "s2"],
            "age": np.linspace(20, 70, 6),
        }
    )
    table["age_pred"] = np.where(table["split"] != "train", table["age"] + 3.0, np.nan)
    table["site_pred"] = np.where(table["split"] != "train", table["site"], None)
    table.to_csv(run_dir / "eval" / "predictions.csv", index=False)
    return 0


def scores(auc: float) -> dict:
    return {
        split: {"roc_auc": auc, "balanced_accuracy": auc - 0.05, "n": 10}
        for split in ("internal_test", "external_test")
    }


class FakeFinetune:
    """Stands in for ``medssl finetune``: writes a ``finetune.json`` whose per-seed ROC AUC is known.

    From scratch: 0.6 + 0.01 x seed; ``linear``: scratch + GAIN[seed]; ``lower_lr``: scratch + 0.05;
    baselines 0.5 (constant) and 0.55 (intensity). ``kill_at`` makes that call (0-based) behave like a
    process killed mid-way: a checkpoint left, KeyboardInterrupt raised as Ctrl-C would.
    """

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], log: Path, env: dict) -> int:
        run_dir = Path(command[command.index("--out") + 1])
        if len(self.commands) == self.kill_at:
            (run_dir / "seeds" / "seed0" / "checkpoints").mkdir(parents=True)
            (run_dir / "seeds" / "seed0" / "checkpoints" / "last.pt").write_bytes(b"")
            raise KeyboardInterrupt
        self.commands.append(command)
        mode = command[command.index("--mode") + 1] if "--mode" in command else "scratch"
        runs = []
        for seed in (0, 1, 2):
            scratch = 0.6 + 0.01 * seed
            auc = scratch + {"scratch": 0.0, "linear": GAIN[seed], "lower_lr": 0.05}[mode]
            baselines = {"constant": scores(0.5), "intensity": scores(0.55)}
            runs.append({"seed": seed, "n_fit": 6, "n_validation": 2, **scores(auc), "baselines": baselines})
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "finetune.json").write_text(json.dumps({"settings": {"mode": mode}, "runs": runs}))
        return 0

    def points(self) -> list[str]:
        return [str(Path(c[c.index("--out") + 1]).relative_to(self.root(c))) for c in self.commands]

    @staticmethod
    def root(command: list[str]) -> Path:
        out = Path(command[command.index("--out") + 1])
        return next(parent for parent in out.parents if parent.name == "finetune")

    def resumed(self) -> list[str]:
        return [point for point, command in zip(self.points(), self.commands) if "--resume" in command]


def bench(tmp_path, fake: FakeFinetune, **options):
    arguments = {"finetune": ["finetune_focal"], "train_sizes": "4,all", "smoke": True, **options}
    return run_benchmark(
        ["simclr"], [0, 1], tmp_path, n_resamples=20, run_one=finished_pretraining, finetune_run_one=fake, **arguments
    )


# ----------------------------------------------------------------------------- the interval
def test_the_paired_t_interval_of_known_differences():
    mean, low, high = paired_t_interval([0.1, 0.2, 0.3])
    half = T_975_2 * 0.1 / np.sqrt(3)
    assert mean == pytest.approx(0.2) and (low, high) == pytest.approx((0.2 - half, 0.2 + half))
    assert paired_t_interval([0.05, 0.05, np.nan]) == pytest.approx((0.05, 0.05, 0.05))  # NaN seeds are left out
    assert np.isnan(paired_t_interval([0.3])[1:]).all()  # one seed: no interval


# ----------------------------------------------------------------------------- plan, resume, leaderboard
def test_the_points_are_scratch_and_each_first_seed_encoder_in_both_modes_per_size(tmp_path):
    fake = FakeFinetune()
    result = bench(tmp_path, fake)
    # the smoke cohort has 8 training subjects: 4 stays, all; seed 1's encoder is not fine-tuned
    assert fake.points() == [
        "finetune_focal/scratch/n4",
        "finetune_focal/simclr-seed0/linear-n4",
        "finetune_focal/simclr-seed0/lower_lr-n4",
        "finetune_focal/scratch/nall",
        "finetune_focal/simclr-seed0/linear-nall",
        "finetune_focal/simclr-seed0/lower_lr-nall",
    ]
    scratch, linear = fake.commands[0], fake.commands[1]
    assert scratch[3:] == ["finetune", "finetune_focal", "finetune.train_size=4", "--encoder", "none"] + scratch[8:]
    assert linear[linear.index("--encoder") + 1] == str(tmp_path / "runs" / "simclr" / "seed0" / "encoder.pt")
    assert "--smoke" in linear and "--mode" in linear and "finetune.train_size=4" not in fake.commands[4]
    assert not result.any_failed and result.finetune is not None
    assert json.loads((tmp_path / "benchmark.json").read_text())["finetune"]["recipes"] == ["finetune_focal"]
    assert "--finetune finetune_focal --train-sizes 4,all" in (tmp_path / "finetune_leaderboard.md").read_text()

    every_seed = FakeFinetune()
    bench(tmp_path, every_seed, finetune_all_seeds=True)
    assert every_seed.points() == [
        f"finetune_focal/simclr-seed1/{mode}-n{size}" for size in (4, "all") for mode in ("linear", "lower_lr")
    ]


def test_a_killed_curve_resumes_without_repeating_the_finished_point(tmp_path, monkeypatch):
    killed = FakeFinetune(kill_at=1)
    monkeypatch.setattr(finetuning_module, "run_finetune_process", killed)
    with pytest.raises(KeyboardInterrupt):
        bench(tmp_path, None)
    assert killed.points() == ["finetune_focal/scratch/n4"]

    rerun = FakeFinetune()
    monkeypatch.setattr(finetuning_module, "run_finetune_process", rerun)
    result = bench(tmp_path, None)
    assert "finetune_focal/scratch/n4" not in rerun.points() and len(rerun.points()) == 5
    assert rerun.resumed() == ["finetune_focal/simclr-seed0/linear-n4"]  # from its checkpoint
    assert result.finetune is not None and result.finetune.leaderboard is not None
    times = json.loads((tmp_path / "finetune_times.json").read_text())
    assert len(times) == 6 and "scratch/n4" in next(iter(times))

    again = FakeFinetune()
    monkeypatch.setattr(finetuning_module, "run_finetune_process", again)
    bench(tmp_path, None)
    assert again.commands == []


def test_the_leaderboard_pairs_by_seed_and_holds_the_baselines(tmp_path):
    bench(tmp_path, FakeFinetune())
    table = pd.read_csv(tmp_path / "finetune_leaderboard.csv")
    auc = table[(table["metric"] == "roc_auc") & (table["split"] == "external_test") & (table["train_size"] == "4")]
    rows = auc.set_index("row")
    assert list(rows.index) == [
        "simclr linear",
        "simclr lower_lr",
        "from scratch",
        "constant predictor",
        "intensity probe",
    ]
    assert rows.loc["from scratch", "mean"] == pytest.approx(0.61) and rows.loc["from scratch", "n_values"] == 3
    half = T_975_2 * 0.1 / np.sqrt(3)
    linear = rows.loc["simclr linear"]
    assert linear["difference"] == pytest.approx(0.2) and linear["n_pairs"] == 3
    assert (linear["ci_low"], linear["ci_high"]) == pytest.approx((0.2 - half, 0.2 + half))
    assert not linear["excludes_zero"]  # 0.2 - 0.248 < 0: three seeds this spread do not settle it
    lower = rows.loc["simclr lower_lr"]
    assert (lower["difference"], lower["ci_low"], lower["ci_high"]) == pytest.approx((0.05, 0.05, 0.05))
    assert lower["excludes_zero"]
    assert rows.loc["intensity probe", "difference"] == pytest.approx(0.55 - 0.61)
    assert pd.isna(rows.loc["from scratch", "difference"])
    markdown = (tmp_path / "finetune_leaderboard.md").read_text()
    assert "## finetune_focal, external_test: roc auc (higher is better)" in markdown
    assert "| constant predictor | 0.500 ± 0.000 |" in markdown and "| intensity probe |" in markdown
    assert f"+0.200 [{0.2 - half:+.3f}, {0.2 + half:+.3f}] |" in markdown and "+0.050 [+0.050, +0.050]* |" in markdown
    assert (tmp_path / "finetune_leaderboard.png").stat().st_size > 0


def test_medssl_leaderboard_rebuilds_the_fine_tuning_leaderboard_from_the_finished_points(tmp_path):
    bench(tmp_path, FakeFinetune())
    written = pd.read_csv(tmp_path / "finetune_leaderboard.csv")
    for extension in ("csv", "md", "png"):
        (tmp_path / f"finetune_leaderboard.{extension}").unlink()
    result = CliRunner().invoke(cli.app, ["leaderboard", str(tmp_path)])
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "finetune_leaderboard.csv"), written)
    markdown = (tmp_path / "finetune_leaderboard.md").read_text()
    assert "--finetune finetune_focal" in markdown and "finished points: 6 of 6" in markdown
    assert (tmp_path / "finetune_leaderboard.png").stat().st_size > 0


def test_the_fine_tuning_leaderboard_is_rebuilt_from_the_points_on_disk_whatever_benchmark_json_says_now(tmp_path):
    bench(tmp_path, FakeFinetune())
    written = pd.read_csv(tmp_path / "finetune_leaderboard.csv")
    record = json.loads((tmp_path / "benchmark.json").read_text())
    del record["finetune"]  # as a later `medssl benchmark` without --finetune leaves it
    (tmp_path / "benchmark.json").write_text(json.dumps(record))
    (tmp_path / "finetune_leaderboard.csv").unlink()
    (tmp_path / "finetune" / "finetune_focal" / "notes").mkdir()  # not a point: ignored
    paths = finetuning_module.rebuild_finetune_leaderboard(tmp_path)
    assert paths is not None
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), written)
    assert "- command: `not recorded`" in paths["md"].read_text()


def test_medssl_leaderboard_of_a_benchmark_without_fine_tuning_writes_no_fine_tuning_leaderboard(tmp_path):
    run_benchmark(["simclr"], [0, 1], tmp_path, n_resamples=20, run_one=finished_pretraining, smoke=True)
    result = CliRunner().invoke(cli.app, ["leaderboard", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "leaderboard.md").is_file() and not (tmp_path / "finetune_leaderboard.md").exists()


def test_parallel_points_split_the_cpus_and_hand_out_devices_in_turn(tmp_path):
    fake = FakeFinetune()
    envs: list[dict] = []
    bench(tmp_path, lambda command, log, env: envs.append(env) or fake(command, log, env), jobs=2, devices=["0", "1"])
    assert len(fake.commands) == 6 and len({tuple(command) for command in fake.commands}) == 6
    threads = str(max(1, (os.cpu_count() or 1) // 2))
    assert {(env["OMP_NUM_THREADS"], env["CUDA_VISIBLE_DEVICES"]) for env in envs} == {(threads, "0"), (threads, "1")}


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"finetune": ["no_such_recipe"]}, RecipeError, "--finetune no_such_recipe: recipe 'no_such_recipe' not found"),
        ({"finetune": ["simclr"]}, BenchmarkError, "--finetune simclr: a pre-training recipe"),
        ({"finetune": ["finetune_ad", "finetune_ad"]}, BenchmarkError, "listed twice"),
        ({"train_sizes": "20,tiny"}, RecipeError, "--train-sizes"),
    ],
)
def test_bad_finetune_options_are_refused_before_any_run(tmp_path, options, error, message):
    fake = FakeFinetune()
    with pytest.raises(error, match=message):
        bench(tmp_path, fake, **options)
    assert fake.commands == [] and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--finetune", "finetune_ad,no_such_recipe"], "--finetune no_such_recipe: recipe 'no_such_recipe' not found"),
        (["--finetune-all-seeds"], "give --finetune too"),
    ],
)
def test_the_cli_refuses_bad_finetune_options_in_one_line_with_exit_2(tmp_path, monkeypatch, capsys, options, message):
    arguments = ["medssl", "benchmark", "--recipes", "simclr", "--seeds", "0", "--out", str(tmp_path), *options]
    monkeypatch.setattr(sys, "argv", arguments)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    error = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert error.startswith("error:") and message in error.replace("\n", " ") and len(error.strip().splitlines()) == 1


def test_the_cli_passes_the_options_and_exits_1_when_a_point_failed(tmp_path, monkeypatch):
    from medssl import benchmark as benchmark_module

    monkeypatch.setattr(cli, "console", Console(record=True, width=400, soft_wrap=True))
    monkeypatch.setattr(benchmark_module, "run_pretrain_process", finished_pretraining)
    monkeypatch.setattr(finetuning_module, "run_finetune_process", lambda command, log, env: 1)
    arguments = ["benchmark", "--recipes", "simclr", "--seeds", "0", "--out", str(tmp_path), "--smoke"]
    result = CliRunner().invoke(cli.app, [*arguments, "--finetune", "finetune_focal", "--train-sizes", "all"])
    assert result.exit_code == 1, result.output
    failed = [line for line in cli.console.export_text().splitlines() if line.startswith("failed: fine-tuning")]
    assert len(failed) == 3 and failed[0].startswith("failed: fine-tuning finetune_focal scratch nall (exit code 1)")
