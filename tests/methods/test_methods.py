"""Methods inside the training engine: DeepCluster's epochs, EMA targets (BYOL, DINO), stop-gradients (SimSiam)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

import medssl.methods.bootstrap
import medssl.methods.dino
from medssl.losses import DINOLoss
from medssl.methods import build_method
from medssl.methods.clustering import ClusterUniformSampler
from medssl.methods.dino import DINO, teacher_temperature_schedule
from medssl.methods.ema import cosine_momentum
from medssl.models import build_encoder
from medssl.pipeline import pretrain
from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, smoke_recipe
from medssl.train.pretraining import build_pretraining, run_pretraining


def quick_recipe(name: str, *overrides: str):
    """A shipped recipe at smoke size on the small 3D AlexNet, without evaluation, then ``overrides``."""
    smoke = smoke_recipe(load_recipe(name)).model_dump(mode="json")
    return recipe_from_dict(apply_overrides(smoke, ["model.encoder=alexnet", "eval.after_pretrain=false", *overrides]))


def seeded_method(recipe):
    """The recipe's method as pretrain builds it (seeded, embedded budget applied), for recording hooks."""
    torch.manual_seed(recipe.train.seed)
    return build_method(recipe)


def epoch_rows(run_dir) -> pd.DataFrame:
    table = pd.read_csv(run_dir / "metrics.csv")
    return table[table["kind"] == "epoch"].reset_index(drop=True)


# ----------------------------------------------------------------------------- DeepCluster
@pytest.fixture(scope="module")
def deepcluster_run(tmp_path_factory):
    """Two DeepCluster epochs, recording what each epoch's preparation did to the classifier,
    the optimiser state and the sampler, and which subjects the steps trained on."""
    recipe = quick_recipe("deepcluster", "train.epochs=2")
    record = {"trained": [], "prepared": [], "optimizer_state": [], "samplers": [], "indices": []}
    method = seeded_method(recipe)
    prepare, training_loss = method.prepare_epoch, method.training_loss

    def recording_prepare(epoch, context):
        sampler = prepare(epoch, context)
        optimizer = context.trainer.optimizer
        record["prepared"].append(method.classifier.weight.detach().clone())
        record["optimizer_state"].append(
            {
                name: optimizer.state[parameter]
                for name, parameter in method.named_parameters()
                if optimizer.state.get(parameter)
            }
        )
        record["samplers"].append(sampler)
        record["indices"].append([])
        return sampler

    def recording_loss(batch):
        record["indices"][-1].extend(batch["index"].tolist())
        return training_loss(batch)

    method.prepare_epoch, method.training_loss = recording_prepare, recording_loss
    pretraining = build_pretraining(recipe, tmp_path_factory.mktemp("deepcluster") / "run", method=method)
    run_pretraining(
        pretraining, on_epoch_end=lambda epoch: record["trained"].append(method.classifier.weight.detach().clone())
    )
    return pretraining, record


def test_deepcluster_reinitialises_the_top_layer_at_every_epoch(deepcluster_run):
    _, record = deepcluster_run
    trained_epoch_1, prepared_epoch_2 = record["trained"][0], record["prepared"][1]
    assert not torch.equal(prepared_epoch_2, trained_epoch_1)
    assert not torch.equal(prepared_epoch_2, record["prepared"][0])  # a fresh draw, not the first initialisation again
    # nn.Linear's default init: uniform in +-1/sqrt(fan_in)
    assert prepared_epoch_2.abs().max() <= 1 / np.sqrt(prepared_epoch_2.shape[1])


def test_deepcluster_forgets_the_optimiser_state_of_the_top_layer_only(deepcluster_run):
    _, record = deepcluster_run
    assert record["optimizer_state"][0] == {}
    second = record["optimizer_state"][1]
    assert not any(name.startswith("classifier.") for name in second)
    assert any(name.startswith("encoder.") and "momentum_buffer" in state for name, state in second.items())


def test_deepcluster_logs_cluster_sizes_and_nmi_between_successive_assignments(deepcluster_run):
    pretraining, _ = deepcluster_run
    rows = epoch_rows(pretraining.trainer.run_dir)
    k = pretraining.recipe.method.clusters
    for column in ("clusters_min", "clusters_max", "clusters_mean", "clusters_empty"):
        assert rows[column].notna().all(), column
    assert (rows["clusters_empty"] == 0).all()  # empty clusters are re-filled before training
    assert (rows["clusters_mean"] == len(pretraining.data.train_cohort) / k).all()
    assert np.isnan(rows["nmi_previous"][0]) and 0.0 <= rows["nmi_previous"][1] <= 1.0
    steps = pd.read_csv(pretraining.trainer.run_dir / "metrics.csv").query("kind == 'step'")
    assert steps["cluster_accuracy"].between(0, 1).all()


def test_deepcluster_trains_on_the_cluster_uniform_sampler_of_each_epoch(deepcluster_run):
    pretraining, record = deepcluster_run
    for sampler, seen in zip(record["samplers"], record["indices"]):
        assert isinstance(sampler, ClusterUniformSampler)
        assert seen == list(sampler)[: len(seen)]
        assert len(seen) == pretraining.trainer.schedule.steps_per_epoch * pretraining.data.loader.batch_size


def test_deepcluster_assignments_of_the_last_epoch_survive_a_checkpoint():
    recipe = quick_recipe("deepcluster")
    method = build_method(recipe)
    method.previous_assignments = np.array([2, 0, 1, 1])
    again = build_method(recipe)
    again.load_state_dict(method.state_dict())
    np.testing.assert_array_equal(again.previous_assignments, [2, 0, 1, 1])
    fresh = build_method(recipe)
    again.load_state_dict(fresh.state_dict())
    assert again.previous_assignments is None


# ----------------------------------------------------------------------------- EMA targets
def run_recording_targets(recipe, run_dir, monkeypatch, module, target_prefixes):
    """Run the engine; record every EMA momentum and, before each optimiser step, which
    parameters hold a gradient."""
    momenta, steps = [], []
    original_ema = module.ema_update

    def recording_ema(target, online, momentum):
        momenta.append(momentum)
        original_ema(target, online, momentum)

    monkeypatch.setattr(module, "ema_update", recording_ema)
    method = seeded_method(recipe)
    state = method.state_dict()
    # target_encoder.* / teacher_head.* start as copies of encoder.* / head.*
    assert all(
        torch.equal(value, state[name.split("_", 1)[1]])
        for name, value in state.items()
        if name.startswith(target_prefixes)
    )
    initial = {name: value.clone() for name, value in state.items() if name.startswith(target_prefixes)}

    def record_gradients(optimizer, args, kwargs):
        steps.append({name: parameter.grad is not None for name, parameter in method.named_parameters()})

    hook = register_optimizer_step_pre_hook(record_gradients)
    try:
        pretraining = build_pretraining(recipe, run_dir, method=method)
        run_pretraining(pretraining)
    finally:
        hook.remove()
    return pretraining, momenta, steps, initial


@pytest.mark.parametrize(
    "name, module, targets, onlines",
    [
        ("byol", medssl.methods.bootstrap, ("target_encoder.", "target_head."), ("encoder.", "head.", "predictor.")),
        ("dino", medssl.methods.dino, ("teacher_encoder.", "teacher_head."), ("encoder.", "head.")),
    ],
)
def test_target_network_gets_no_gradient_and_follows_the_cosine_momentum_schedule(
    tmp_path, monkeypatch, name, module, targets, onlines
):
    recipe = quick_recipe(name, "train.epochs=2", "method.momentum=0.5")
    pretraining, momenta, steps, initial = run_recording_targets(recipe, tmp_path / "run", monkeypatch, module, targets)
    total = 2 * pretraining.trainer.schedule.steps_per_epoch
    assert len(steps) == total == 4
    for grads in steps:
        assert not any(has_grad for param, has_grad in grads.items() if param.startswith(targets))
        assert all(has_grad for param, has_grad in grads.items() if param.startswith(onlines))
    # one update of the target encoder and one of the target head after every optimiser step, over the whole run
    expected = [cosine_momentum(step, total, 0.5) for step in range(1, total + 1)]
    assert momenta == pytest.approx([m for m in expected for _ in range(2)])
    assert momenta[-1] == 1.0 and momenta[0] > 0.5
    method = pretraining.method
    assert not any(p.requires_grad for n, p in method.named_parameters() if n.startswith(targets))
    optimised = {id(p) for group in pretraining.trainer.optimizer.param_groups for p in group["params"]}
    assert not any(id(p) in optimised for n, p in method.named_parameters() if n.startswith(targets))
    # the targets moved towards the online networks, which started from the same weights
    final = method.state_dict()
    assert initial
    moved = [key for key, value in initial.items() if key.endswith("weight") and not torch.equal(final[key], value)]
    assert moved


def test_dino_teacher_centre_is_updated_and_checkpointed(tmp_path):
    pretraining = build_pretraining(quick_recipe("dino", "train.max_steps_per_epoch=1"), tmp_path / "run")
    run_pretraining(pretraining)
    centre = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["method"]["loss.center"]
    assert centre.abs().sum() > 0
    assert torch.equal(centre, pretraining.method.loss.center)


def authors_teacher_temp_schedule(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs):
    """facebookresearch/dino main_dino.py, DINOLoss.__init__ at commit 7c446df, verbatim."""
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp,
        )
    )


@pytest.mark.parametrize("warmup_epochs, epochs", [(30, 100), (30, 300), (1, 5), (0, 7), (4, 4)])
def test_dino_teacher_temperature_schedule_is_the_authors(warmup_epochs, epochs):
    ours = teacher_temperature_schedule(0.04, 0.07, warmup_epochs, epochs)
    np.testing.assert_array_equal(ours, authors_teacher_temp_schedule(0.04, 0.07, warmup_epochs, epochs))
    assert len(ours) == epochs and ours[-1] == (0.07 if warmup_epochs != 1 or epochs > 1 else 0.04)


def test_dino_teacher_temperature_schedule_warms_up_linearly():
    schedule = teacher_temperature_schedule(0.04, 0.07, 4, 6)
    assert schedule == pytest.approx([0.04, 0.05, 0.06, 0.07, 0.07, 0.07])
    with pytest.raises(ValueError, match="warmup_teacher_temperature_epochs=7"):
        teacher_temperature_schedule(0.04, 0.07, 7, 6)


def test_dino_uses_the_scheduled_teacher_temperature_at_every_step(monkeypatch):
    torch.manual_seed(0)
    method = DINO(
        build_encoder("alexnet"),
        hidden_dim=16,
        out_dim=8,
        n_local_crops=0,
        teacher_temperature=0.07,
        warmup_teacher_temperature=0.04,
        warmup_teacher_temperature_epochs=3,
        epochs=4,
    )
    used = []
    original = DINOLoss.forward
    monkeypatch.setattr(
        DINOLoss, "forward", lambda self, *args: used.append(self.teacher_temperature) or original(self, *args)
    )
    batch = {"views": torch.randn(2, 2, 1, 16, 16, 16)}
    steps_per_epoch, total = 2, 8
    for step in range(total):
        method.training_loss(batch)
        method.after_step(step + 1, total)
    schedule = [0.04, 0.055, 0.07, 0.07]
    assert used == pytest.approx([schedule[step // steps_per_epoch] for step in range(total)], abs=1e-15)
    assert used[1] != used[2]  # the warm-up did move the temperature


def test_dino_teacher_temperature_resumes_from_the_checkpoint(tmp_path, monkeypatch):
    recipe = quick_recipe(
        "dino",
        "train.epochs=3",
        "train.max_steps_per_epoch=1",
        "method.teacher_temperature=0.07",
        "method.warmup_teacher_temperature_epochs=3",
    )
    used = []
    original = DINOLoss.forward
    monkeypatch.setattr(
        DINOLoss, "forward", lambda self, *args: used.append(self.teacher_temperature) or original(self, *args)
    )
    pretrain(recipe, tmp_path / "straight")
    straight, used[:] = list(used), []

    def stop_after_first_epoch(epoch):
        if epoch == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path / "killed", on_epoch_end=stop_after_first_epoch)
    checkpoint = torch.load(tmp_path / "killed" / "checkpoints" / "last.pt", weights_only=True)
    assert checkpoint["method"]["scheduled_teacher_temperature"].item() == pytest.approx(0.055, abs=1e-15)
    pretrain(recipe, tmp_path / "killed", resume=True)
    assert straight == pytest.approx([0.04, 0.055, 0.07], abs=1e-15)
    assert used == pytest.approx(straight, abs=1e-15)


def test_dino_loads_a_checkpoint_written_before_the_temperature_schedule():
    method = DINO(
        build_encoder("alexnet"), hidden_dim=16, out_dim=8, teacher_temperature=0.06, warmup_teacher_temperature=0.06
    )
    older = {key: value for key, value in method.state_dict().items() if key != "scheduled_teacher_temperature"}
    method.load_state_dict(older)
    assert method.scheduled_teacher_temperature.item() == pytest.approx(0.06, abs=1e-15)


class DetachedPredictor(nn.Module):
    def __init__(self, predictor: nn.Module):
        super().__init__()
        self.predictor = predictor

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.predictor(z).detach()


def test_simsiam_reaches_the_encoder_only_through_the_predictor():
    torch.manual_seed(0)
    method = build_method(quick_recipe("simsiam"))
    batch = {"views": torch.randn(4, 2, 1, 16, 16, 16), "label": torch.zeros(4), "index": torch.arange(4)}
    loss, _ = method.training_loss(batch)
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.encoder.parameters())

    method.zero_grad(set_to_none=True)
    method.predictor = DetachedPredictor(method.predictor)
    loss, _ = method.training_loss(batch)
    assert not loss.requires_grad  # the other branch is a stop-gradient: nothing left to differentiate


# ----------------------------------------------------------------------------- VICReg
@pytest.mark.parametrize("overrides, form", [((), "authors"), (("method.form=paper_sum",), "paper_sum")])
def test_vicreg_recipe_chooses_the_form_of_the_loss(overrides, form):
    method = build_method(quick_recipe("vicreg", *overrides))
    assert method.loss.form == form
    assert (method.loss.sim_weight, method.loss.var_weight, method.loss.cov_weight) == (25.0, 25.0, 1.0)
