"""The scripts in examples/ run as documented (with tiny sizes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run_example(name: str, *args: str) -> str:
    result = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_custom_training_loop_prints_a_finite_loss_per_step():
    out = run_example("custom_training_loop.py", "--steps", "2", "--shape", "16", "--subjects", "16", "--batch-size", "4")
    losses = [float(line.split()[-1]) for line in out.splitlines() if line.startswith("step")]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)


def test_score_a_submission_reproduces_the_published_challenge_score():
    out = run_example("score_a_submission.py")
    assert "L_c(BAcc 0.051, MAE_ext 3.76) = 1.54" in out
    scores = dict(line.split() for line in out.splitlines() if not line.startswith("L_c"))
    expected = float(scores["bacc_site"]) ** 0.3 * float(scores["mae_external"])
    assert abs(float(scores["challenge_score"]) - expected) < 5e-3  # printed with 3 decimals
