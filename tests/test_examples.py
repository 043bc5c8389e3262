"""The scripts in examples/ run as documented (with tiny sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_training_loop_prints_a_finite_loss_per_step():
    out = run_example(
        "custom_training_loop.py", "--steps", "2", "--shape", "16", "--subjects", "16", "--batch-size", "4"
    )
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


def test_score_a_submission_reproduces_the_published_challenge_score():
    out = run_example("score_a_submission.py")
    assert "L_c(BAcc 0.051, MAE_ext 3.76) = 1.54" in out
    scores = dict(line.split() for line in out.splitlines() if not line.startswith("L_c"))
    expected = float(scores["bacc_site"]) ** 0.3 * float(scores["mae_external"])
    assert abs(float(scores["challenge_score"]) - expected) < 5e-3  # printed with 3 decimals


def fake_slurm(bin_dir: Path, record: Path) -> None:
    """srun runs its command once per node (SLURM_NODEID 0, 1); scontrol names two nodes; torchrun records its arguments."""
    bin_dir.mkdir()
    scripts = {
        "scontrol": 'printf "gpu-a\\ngpu-b\\n"',
        "srun": 'shift; for node in 0 1; do SLURM_NODEID=$node "$@" || exit 1; done',
        "torchrun": f'echo "$*" >> {record}',
    }
    for name, body in scripts.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)


def test_slurm_example_starts_one_c10d_torchrun_agent_per_node_with_the_recipe(tmp_path):
    import os

    record = tmp_path / "torchrun_calls"
    fake_slurm(tmp_path / "bin", record)
    env = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "gpu-[a-b]",
        "SLURM_JOB_NUM_NODES": "2",
        "SLURM_JOB_ID": "77",
        "SLURM_GPUS_ON_NODE": "4",
        "RECIPE": "recipes/simclr.yaml",
    }
    result = subprocess.run(
        ["bash", str(EXAMPLES / "slurm_pretrain.sbatch"), "train.epochs=3"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = record.read_text().splitlines()
    assert len(calls) == 2
    for node, call in enumerate(calls):
        assert (
            f"--nnodes 2 --nproc-per-node 4 --node-rank {node} --rdzv-backend c10d --rdzv-endpoint gpu-a:29500 "
            f"--rdzv-id 77 -m medssl pretrain recipes/simclr.yaml --out runs/simclr-77 data.root=/shared/openbhb "
            f"train.epochs=3"
        ) == call


@pytest.mark.parametrize("page", ["README.md", "docs/install-and-runs.md"])
def test_the_readme_monai_snippet_runs_as_written_on_a_saved_encoder(tmp_path, monkeypatch, page):
    # Every name it uses is defined in it or said in the sentence above it (runs/ya, volumes).
    import re

    from medssl.models import build_encoder, save_encoder

    readme = (EXAMPLES.parent / page).read_text()
    (snippet,) = [
        block for block in re.findall(r"```python\n(.*?)```", readme, re.S) if "runs/ya/encoder.json" in block
    ]
    save_encoder(build_encoder("resnet18", widths=[4, 8, 8, 8]), tmp_path / "runs" / "ya" / "encoder.pt")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(snippet, page, "exec"), namespace)
    assert tuple(namespace["features"].shape) == (2, namespace["spec"]["feature_dim"])
