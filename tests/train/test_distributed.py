"""DDP on CPU (gloo, 2 processes): gathered negatives, the world-size factor, rank-0 artefacts, resume.

One pair of processes serves the whole module and writes what it measured to JSON files
that the tests check. They are forked, after the slow imports (torch._dynamo comes with
the first optimiser, matplotlib and TensorBoard with the first run folder), so that they
start in milliseconds; each sets one intra-op thread before touching torch (fork-safe).
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from tiny import assert_same_updates, initial_state, step_recipe, tiny_method, updates

WORLD = 2
LOCAL_SUBJECTS = 4


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- shared set-ups
def loss_cases() -> dict:
    from medssl.losses import (
        BarlowTwinsLoss,
        DecoupledNTXentLoss,
        EpsSupConLoss,
        EpsSupInfoNCELoss,
        ExponentialLoss,
        NTXentLoss,
        SupConLoss,
        ThresholdLoss,
        VICRegLoss,
        YAwareLoss,
    )

    return {  # name: (loss, label kind)
        "yaware": (YAwareLoss(sigma=5.0), "age"),
        "ntxent": (NTXentLoss(temperature=0.5), None),
        "threshold": (ThresholdLoss(sigma=5.0), "age"),
        "threshold_reference_code": (ThresholdLoss(sigma=5.0, reference_code=True), "age"),
        "exponential": (ExponentialLoss(sigma=5.0), "age"),
        "supcon": (SupConLoss(), "class"),
        "eps_supinfonce": (EpsSupInfoNCELoss(eps=0.1), "class"),
        "eps_supcon": (EpsSupConLoss(eps=0.1), "class"),
        "decoupled": (DecoupledNTXentLoss(), None),
        "barlow_twins": (BarlowTwinsLoss(), None),
        "vicreg": (VICRegLoss(), None),
    }


def global_batch() -> tuple[torch.Tensor, dict]:
    generator = torch.Generator().manual_seed(0)
    n = WORLD * LOCAL_SUBJECTS
    z = torch.randn(n, 2, 16, dtype=torch.float64, generator=generator)
    labels = {
        "age": torch.tensor([30, 30, 45, 50, 62, 80, 21, 33], dtype=torch.float64)[:n],
        "class": torch.tensor([0, 1, 0, 1, 1, 0, 2, 2], dtype=torch.float64)[:n],
        None: None,
    }
    return z, labels


def smoke_recipe_for(cohort: str, epochs: int):
    """``medssl pretrain yaware_age --smoke`` on the tiny cohort: 2 steps of batch 2 per process and epoch."""
    from medssl.recipe import load_recipe, smoke_recipe

    recipe = smoke_recipe(
        load_recipe(
            "yaware_age",
            [f"data.root={cohort}", "model.encoder=resnet18", "eval.after_pretrain=false", "train.device=cpu"],
        )
    )
    recipe.train.epochs = epochs
    recipe.train.batch_size = 2
    return recipe


# ----------------------------------------------------------------------------- the worker
def worker(rank: int, port: int, cohort: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD)
    )
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    from medssl.pipeline import pretrain
    from medssl.train.distributed import gather_with_grad

    out = Path(out)
    results: dict = {"losses": {}, "seconds": {}}
    started = time.perf_counter()
    z_full, labels = global_batch()
    rows = slice(rank * LOCAL_SUBJECTS, (rank + 1) * LOCAL_SUBJECTS)
    for name, (loss, kind) in loss_cases().items():
        y_full = labels[kind]
        single_z = z_full.clone().requires_grad_()
        single = loss(single_z, y_full)
        single.backward()
        local = z_full[rows].clone().requires_grad_()
        y_all = gather_with_grad(y_full[rows]) if y_full is not None else None
        gathered = loss(gather_with_grad(local), y_all)
        gathered.backward()
        results["losses"][name] = {
            "loss_gap": abs(gathered.item() - single.item()),
            # what each process holds: W x its rows' share of dL/dz (see medssl.train.distributed)
            "grad_gap": (local.grad - WORLD * single_z.grad[rows]).abs().max().item(),
            "grad_scale": single_z.grad[rows].abs().max().item(),
            "labels_gap": 0.0 if y_full is None else (y_all - y_full).abs().max().item(),
        }

    results["debias"] = debias_gaps(rows, z_full)
    results["seconds"]["losses"] = time.perf_counter() - started
    # The engine's DDP path with a small BatchNorm-free model (DenseNet121 on CPU would take
    # most of the time budget): one SGD step on the two halves of a batch of 8, then
    # `pretrain --smoke` for 1 epoch, resumed to 2, and 2 epochs uninterrupted.
    pretrain(step_recipe(cohort, LOCAL_SUBJECTS), out / "ddp_step", method=seeded_tiny_method())
    results["seconds"]["step"] = time.perf_counter() - started
    first = pretrain(smoke_recipe_for(cohort, 1), out / "resumed", method=seeded_tiny_method())
    second = pretrain(smoke_recipe_for(cohort, 2), out / "resumed", resume=True, method=seeded_tiny_method())
    pretrain(smoke_recipe_for(cohort, 2), out / "uninterrupted", method=seeded_tiny_method())
    results["notes"] = first.notes + second.notes
    results["seconds"]["smoke"] = time.perf_counter() - started
    (out / f"results_{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()


def debias_gaps(rows: slice, z_full: torch.Tensor) -> dict:
    """The bias labels (sites) gathered as the engine gathers them, and FairKL on gathered embeddings, against
    one process on the whole batch."""
    from medssl.losses import FairKLLoss
    from medssl.train.distributed import gather_with_grad

    sites = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1])[: len(z_full)]
    gathered_sites = gather_with_grad(sites[rows].float()).long()  # as EmbeddingLossMethod gathers batch["bias"]
    loss = FairKLLoss(reference_code=False)
    single_z = z_full.clone().requires_grad_()
    single = loss(single_z, None, sites)
    single.backward()
    local = z_full[rows].clone().requires_grad_()
    gathered = loss(gather_with_grad(local), None, gathered_sites)
    gathered.backward()
    return {
        "sites_equal": bool(torch.equal(gathered_sites, sites)),
        "loss_gap": abs(gathered.item() - single.item()),
        "grad_gap": (local.grad - WORLD * single_z.grad[rows]).abs().max().item(),
        "grad_scale": single_z.grad[rows].abs().max().item(),
    }


def seeded_tiny_method():
    """The tiny method with the weights a recipe of seed 0 starts from (see ``tiny.initial_state``)."""
    torch.manual_seed(0)
    return tiny_method(None)


@pytest.fixture(scope="module")
def ddp_run(tiny_cohort, tmp_path_factory) -> Path:
    from medssl.pipeline import pretrain

    out = tmp_path_factory.mktemp("ddp")
    pretrain(
        smoke_recipe_for(str(tiny_cohort), 1), out / "warm-up", method=seeded_tiny_method()
    )  # imports shared with the children
    context = mp.start_processes(
        worker, args=(free_port(), str(tiny_cohort), str(out)), nprocs=WORLD, join=False, start_method="fork"
    )
    deadline = time.monotonic() + 240
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("the 2-process DDP run did not finish within 240 s")
    return out


def results(out: Path, rank: int) -> dict:
    return json.loads((out / f"results_{rank}.json").read_text())


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("name", list(loss_cases()))
def test_gathered_loss_and_local_gradients_equal_one_process_on_the_concatenated_batch(ddp_run, name):
    for rank in range(WORLD):
        measured = results(ddp_run, rank)["losses"][name]
        assert measured["loss_gap"] < 1e-6
        assert measured["labels_gap"] == 0.0
        # Process r holds W * dL/dz_r; DDP's average over W processes then gives dL/dtheta exactly.
        assert measured["grad_gap"] < 1e-6 * max(1.0, measured["grad_scale"])
        assert measured["grad_scale"] > 1e-4  # a real gradient, not two zeros


def test_bias_labels_are_gathered_exactly_and_fairkl_on_gathered_embeddings_equals_one_process(ddp_run):
    for rank in range(WORLD):
        measured = results(ddp_run, rank)["debias"]
        assert measured["sites_equal"]
        assert measured["loss_gap"] < 1e-6
        assert measured["grad_gap"] < 1e-6 * max(1.0, measured["grad_scale"]) and measured["grad_scale"] > 1e-4


def test_ddp_training_step_updates_parameters_like_one_process_on_the_concatenated_batch(
    ddp_run, tiny_cohort, tmp_path, monkeypatch
):
    from medssl.pipeline import pretrain

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    pretrain(step_recipe(str(tiny_cohort), WORLD * LOCAL_SUBJECTS), tmp_path / "single", method=seeded_tiny_method())
    initial = initial_state()
    single = updates(torch.load(tmp_path / "single" / "checkpoints" / "last.pt", weights_only=True)["method"], initial)
    ddp = updates(torch.load(ddp_run / "ddp_step" / "checkpoints" / "last.pt", weights_only=True)["method"], initial)
    assert_same_updates(ddp, single)


def test_two_process_run_writes_one_set_of_rank0_artefacts(ddp_run):
    run = ddp_run / "resumed"
    assert sorted(path.name for path in run.iterdir()) == [
        "checkpoints",
        "encoder.json",
        "encoder.pt",
        "loss.png",
        "metrics.csv",
        "recipe.yaml",
        "run_notes.txt",
        "tensorboard",
    ]
    assert [path.name for path in (run / "checkpoints").iterdir()] == ["last.pt"]
    assert (run / "run_notes.txt").read_text().count("Resuming /") == 1  # written by rank 0 alone
    assert len(list((run / "tensorboard").iterdir())) == 2  # one events file per run (first + resumed), rank 0 only
    metrics = pd.read_csv(run / "metrics.csv")
    steps = metrics[metrics["kind"] == "step"]
    assert list(steps["step"]) == list(range(1, len(steps) + 1))  # no row written twice
    assert list(metrics[metrics["kind"] == "epoch"]["epoch"]) == [0, 1]


def test_two_process_run_resumes_to_the_weights_of_an_uninterrupted_run(ddp_run):
    assert any("Resuming" in note for note in results(ddp_run, 1)["notes"])  # every rank resumed
    resumed = torch.load(ddp_run / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    uninterrupted = torch.load(ddp_run / "uninterrupted" / "checkpoints" / "last.pt", weights_only=True)
    assert resumed["epochs_done"] == uninterrupted["epochs_done"] == 2
    for key, value in uninterrupted["method"].items():
        assert torch.allclose(resumed["method"][key].float(), value.float(), atol=1e-6), key
