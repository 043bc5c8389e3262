"""Throughput options of ``train:`` on CPU: accumulate, channels_last, bf16/fp16 autocast, compile."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny import assert_same_updates, initial_state, per_subject_method, step_recipe, tiny_method, updates
from torch import nn

from medssl.train.pretraining import Pretraining, build_pretraining, run_pretraining


def run_step(tmp_path, recipe, build=tiny_method) -> tuple[Pretraining, dict[str, torch.Tensor]]:
    """Train ``recipe`` with the method ``build`` makes (seeded as the recipe's would be); its update."""
    torch.manual_seed(recipe.train.seed)
    pretraining = build_pretraining(recipe, tmp_path / recipe.name, method=build(recipe))
    run_pretraining(pretraining)
    state = torch.load(tmp_path / recipe.name / "checkpoints" / "last.pt", weights_only=True)["method"]
    return pretraining, updates(state, initial_state(build))


def flat(update: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([value.flatten() for value in update.values()])


def test_accumulating_two_batches_of_b_updates_like_one_batch_of_2b(tiny_cohort, tmp_path):
    accumulated = step_recipe(str(tiny_cohort), 4, accumulate=2, max_steps_per_epoch=1)
    accumulated.name = "accumulated"
    pretraining, update_accumulated = run_step(tmp_path, accumulated, per_subject_method)
    assert pretraining.trainer.schedule.steps_per_epoch == 1 and pretraining.trainer.schedule.accumulate == 2
    _, update_whole = run_step(tmp_path, step_recipe(str(tiny_cohort), 8), per_subject_method)
    assert_same_updates(update_accumulated, update_whole)
    steps = pd.read_csv(tmp_path / "accumulated" / "metrics.csv").query("kind == 'step'")
    assert list(steps["step"]) == [1]  # one optimiser step logged for the two micro-batches


def test_channels_last_gives_the_update_of_the_default_memory_format(tiny_cohort, tmp_path):
    recipe = step_recipe(str(tiny_cohort), 8, channels_last=True)
    recipe.name = "channels_last"
    pretraining, update_channels_last = run_step(tmp_path, recipe)
    assert pretraining.method.encoder.network[0].weight.is_contiguous(memory_format=torch.channels_last_3d)
    _, update_default = run_step(tmp_path, step_recipe(str(tiny_cohort), 8))
    assert_same_updates(update_channels_last, update_default)


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_autocast_runs_and_follows_the_fp32_step(tiny_cohort, tmp_path, precision, monkeypatch):
    from medssl.train import setup

    # bf16 runs on any CPU (slowly without AVX512-BF16, where a run falls back to fp32 unless told otherwise)
    monkeypatch.setattr(setup, "cpu_has_native_bf16", lambda: True)
    recipe = step_recipe(str(tiny_cohort), 8, precision=precision)
    recipe.name = precision
    pretraining, update_reduced = run_step(tmp_path, recipe)
    assert pretraining.trainer.precision == precision  # no fp32 fall-back for this network
    _, update_fp32 = run_step(tmp_path, step_recipe(str(tiny_cohort), 8))
    loss_reduced, loss_fp32 = (
        pd.read_csv(tmp_path / name / "metrics.csv").query("kind == 'step'")["loss"].iloc[0]
        for name in (precision, "step")
    )
    assert (
        loss_reduced != loss_fp32 and abs(loss_reduced / loss_fp32 - 1) < 1e-2
    )  # autocast engaged, same loss to ~2 digits
    reduced, full = flat(update_reduced), flat(update_fp32)
    assert torch.isfinite(reduced).all()
    # Loose: this tiny model's embeddings differ little between subjects, so the contrastive
    # gradient is a small difference that 8-11 bit mantissas resolve only roughly.
    assert torch.nn.functional.cosine_similarity(reduced, full, dim=0) > 0.5


class TracedReLU(nn.ReLU):
    """A ReLU that records whether each call runs under torch.compile's tracing."""

    def __init__(self):
        super().__init__()
        self.compiling: list[bool] = []

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        self.compiling.append(torch.compiler.is_compiling())
        return super().forward(tensor)


def traced_method(recipe):
    method = tiny_method(recipe)
    method.encoder.network[1] = TracedReLU()
    return method


def test_compile_wraps_the_encoder_network_and_keeps_its_weight_names(tiny_cohort, tmp_path):
    recipe = step_recipe(str(tiny_cohort), 8, compile=True)
    recipe.name = "compiled"
    pretraining, update_compiled = run_step(tmp_path, recipe, traced_method)
    assert True in pretraining.method.encoder.network[1].compiling  # the training step ran the compiled graph
    saved = torch.load(tmp_path / "compiled" / "encoder.pt", weights_only=True)
    assert set(saved) == {"0.weight", "0.bias"}  # no "_orig_mod." prefix: encoder.pt stays loadable without medssl
    eager, update_eager = run_step(tmp_path, step_recipe(str(tiny_cohort), 8), traced_method)
    assert True not in eager.method.encoder.network[1].compiling
    assert_same_updates(update_compiled, update_eager)
