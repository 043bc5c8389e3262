"""Debiasing terms (``method.debias``): gradient reversal, the site head outside encoder.pt, the weight-0
control, resume, and a site signal that each term lowers."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from typer.testing import CliRunner

from medssl import cli
from medssl.errors import RecipeError
from medssl.losses import NTXentLoss
from medssl.methods import AdversarialDebias, FairKLDebias
from medssl.methods.debias import AdversarialSiteHead, FairKLTerm, ganin_schedule, reverse_gradient
from medssl.pipeline import pretrain
from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict, smoke_recipe


def quick(name: str, *overrides: str):
    """A shipped recipe at smoke size on the small 3D AlexNet, without evaluation (seconds)."""
    smoke = smoke_recipe(load_recipe(name)).model_dump(mode="json")
    return recipe_from_dict(apply_overrides(smoke, ["model.encoder=alexnet", "eval.after_pretrain=false", *overrides]))


def state(path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_gradient_reversal_is_the_identity_forward_and_minus_weight_times_the_gradient_backward():
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 3, dtype=torch.float64)
    y = reverse_gradient(x, 0.7)
    assert torch.equal(y, x)
    y.backward(upstream)
    assert torch.equal(x.grad, -0.7 * upstream)


def test_ganin_schedule_rises_from_zero_to_nearly_one():
    assert ganin_schedule(0.0) == 0.0 and 0.99 < ganin_schedule(1.0) < 1.0
    assert ganin_schedule(0.1) < ganin_schedule(0.5) < ganin_schedule(0.9)


@pytest.mark.parametrize("debias", ["fairkl", "adversarial"])
def test_weight_zero_trains_the_same_weights_as_the_base_recipe_bit_for_bit(tmp_path, debias):
    pretrain(quick("yaware_age"), tmp_path / "base")
    recipe = quick(f"yaware_age_{debias}", "method.debias.weight=0")
    pretrain(recipe, tmp_path / "zero")
    base, zero = state(tmp_path / "base" / "encoder.pt"), state(tmp_path / "zero" / "encoder.pt")
    assert base.keys() == zero.keys() and all(torch.equal(base[key], zero[key]) for key in base)
    # and the term did train: with weight 1 the encoder moves elsewhere
    pretrain(quick(f"yaware_age_{debias}"), tmp_path / "one")
    one = state(tmp_path / "one" / "encoder.pt")
    assert not all(torch.equal(base[key], one[key]) for key in base)


def test_the_site_classifier_is_checkpointed_with_the_method_but_never_in_encoder_pt(tmp_path):
    pretrain(quick("yaware_age_adversarial"), tmp_path / "run")
    method = state(tmp_path / "run" / "checkpoints" / "last.pt")["method"]
    assert any(key.startswith("debias.classifier.") for key in method)
    encoder = state(tmp_path / "run" / "encoder.pt")
    assert not any("debias" in key or "classifier" in key for key in encoder)
    assert set(encoder) == {
        key.removeprefix("encoder.network.") for key in method if key.startswith("encoder.network.")
    }
    logged = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert {"site_loss", "site_accuracy", "reversal_weight", "method_loss"} <= set(logged.columns)


def test_a_run_with_debiasing_resumes_to_the_weights_of_a_straight_run(tmp_path, straight_and_resumed):
    a, b = straight_and_resumed(quick("yaware_age_adversarial", "train.epochs=2"), tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    assert float(a["debias.progress"]) == 1.0  # the schedule ran to its end in both


def test_a_bias_column_with_one_value_or_none_is_refused(tmp_path):
    with pytest.raises(RecipeError, match="data.bias = 'handedness': no such column"):
        pretrain(quick("yaware_age_fairkl", "data.bias=handedness"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_debias_key_on_a_method_that_cannot_take_it_is_refused_in_one_line(tmp_path):
    result = CliRunner().invoke(
        cli.app, ["pretrain", "supervised_age", "method.debias.name=fairkl", "--smoke", "--out", str(tmp_path / "r")]
    )
    assert result.exit_code != 0
    assert "method 'supervised' cannot take a debiasing term" in str(result.exception)
    assert not (tmp_path / "r").exists()


# ----------------------------------------------------------------------------- each term lowers a site probe
def site_problem(seed: int = 0):
    """Inputs whose site shifts 4 of 16 directions, and an age that another 4 carry."""
    generator = torch.Generator().manual_seed(seed)
    n, sites = 240, 4
    site = torch.arange(n) % sites
    age = torch.rand(n, generator=generator) * 60 + 20
    x = torch.randn(n, 16, generator=generator)
    x[:, :4] += 3.0 * torch.nn.functional.one_hot(site, sites).float()
    x[:, 4:8] += (age[:, None] - 50) / 15
    return x, site, age


def site_bacc(features: torch.Tensor, site: torch.Tensor) -> float:
    half = len(site) // 2
    probe = LogisticRegression(max_iter=2000).fit(features[:half].numpy(), site[:half].numpy())
    return balanced_accuracy_score(site[half:].numpy(), probe.predict(features[half:].numpy()))


def train_encoder(term: str | None, steps: int = 300) -> float:
    """Site BAcc of a linear encoder's features after ``steps`` of NT-Xent on two noisy views plus the term."""
    torch.manual_seed(0)
    x, site, _ = site_problem()
    encoder, ntxent = torch.nn.Linear(16, 8), NTXentLoss(temperature=0.5)
    debias: torch.nn.Module = torch.nn.Identity()
    if term == "adversarial":
        debias = AdversarialSiteHead(AdversarialDebias(weight=1.0, hidden_dim=32), 8, 4)
    elif term == "fairkl":
        debias = FairKLTerm(FairKLDebias(weight=1.0))
    optimiser = torch.optim.Adam([*encoder.parameters(), *debias.parameters()], lr=1e-2)
    for step in range(steps):
        views = torch.stack([x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)], dim=1)
        z = encoder(views)
        loss = ntxent(z, None)
        if isinstance(debias, AdversarialSiteHead):
            loss = loss + debias(z[:, 0], site)[0]
            debias.set_progress(step + 1, steps)
        elif term == "fairkl":
            loss = loss + debias(z, site)[0]
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return site_bacc(encoder(x).detach(), site)


@pytest.mark.parametrize("term", ["adversarial", "fairkl"])
def test_each_term_lowers_a_logistic_site_probes_balanced_accuracy(term):
    control = train_encoder(None)  # the same losses without the term keep the site readable
    assert control > 0.6, control
    debiased = train_encoder(term)
    assert debiased < control - 0.15, (control, debiased)
