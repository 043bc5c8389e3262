"""FairKL (Barbano et al., ICLR 2023): the authors' code, the paper's formula, and what it is for."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from torch import Tensor

from medssl.losses import FairKLLoss, LossInputError, NTXentLoss
from medssl.losses.fairkl import AUTHORS_COMMIT

from .checks import assert_same_value_and_gradient, embeddings
from .reference import Rows

# Three classes spread over three sites: all four pair sets (positive/negative x aligned/conflicting)
# are non-empty, with one view as with two.
CLASSES = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
SITES = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2])


def fairkl_authors_code(feat: Tensor, labels: Tensor, bias_labels: Tensor, temperature=1.0, kld=0.0) -> Tensor:
    """EIDOSLAB/unbiased-contrastive-learning, commit 25b39810f4a01e65d28fbeb856648041a7a4b6e2,
    ``debiasing/losses.py`` ``fairkl``, transcribed line by line (its prints and input checks left out)."""
    similarity = torch.div(torch.matmul(feat, feat.T), temperature)
    labels = labels.view(-1, 1)
    positive_mask = torch.eq(labels, labels.T)
    bias_labels = bias_labels.view(-1, 1)
    aligned_mask = torch.eq(bias_labels, bias_labels.T)
    conflicting_mask = ~aligned_mask
    pos_conflicting = positive_mask * conflicting_mask
    conflicting_sim = similarity * pos_conflicting
    mu_conflicting = conflicting_sim.sum() / max(pos_conflicting.sum(), 1)
    pos_aligned = positive_mask * aligned_mask
    aligned_sim = similarity * pos_aligned
    mu_aligned = aligned_sim.sum() / max(pos_aligned.sum(), 1)
    neg_aligned = (~positive_mask) * aligned_mask
    neg_aligned_sim = similarity * neg_aligned
    mu_neg_aligned = neg_aligned_sim.sum() / max(neg_aligned.sum(), 1)
    neg_conflicting = (~positive_mask) * conflicting_mask
    neg_conflicting_sim = similarity * neg_conflicting
    mu_neg_conflicting = neg_conflicting_sim.sum() / max(neg_conflicting.sum(), 1)
    mu_loss = torch.pow(mu_conflicting - mu_aligned, 2)
    mu_loss += torch.pow(mu_neg_aligned - mu_neg_conflicting, 2)
    var_aligned = torch.std(aligned_sim)
    var_conflicting = torch.std(conflicting_sim)
    kld_loss = torch.pow(var_aligned - var_conflicting, 2)
    var_neg_aligned = torch.std(neg_aligned_sim)
    var_neg_conflicting = torch.std(neg_conflicting_sim)
    kld_loss += torch.pow(var_neg_aligned - var_neg_conflicting, 2)
    return mu_loss + kld * kld_loss - mu_conflicting + mu_neg_aligned


def authors_code_on_views(z: Tensor, y: Tensor, bias: Tensor, temperature: float, kld: float) -> Tensor:
    """Their function on the view-major rows, normalised as their training scripts do (``F.normalize``)."""
    n_views = z.shape[1]
    feat = F.normalize(torch.cat(torch.unbind(z, dim=1), dim=0))
    return fairkl_authors_code(feat, y.repeat(n_views), bias.repeat(n_views), temperature, kld)


def fairkl_paper_loop(z: Tensor, y: Tensor | None, bias: Tensor, temperature=1.0, variance_eps=1e-6) -> Tensor:
    """R = KL(B+,a || B+,c) + KL(B-,a || B-,c) of Gaussians fitted to each pair set, pair by pair."""
    rows = Rows(z, y, temperature)
    n_subjects = z.shape[0]
    site = [int(bias[r % n_subjects]) for r in range(rows.n)]
    group = rows.labels if y is not None else rows.subjects
    pairs: dict[tuple[bool, bool], list[Tensor]] = {(p, a): [] for p in (True, False) for a in (True, False)}
    for i in range(rows.n):
        s = rows.similarities_of(i)
        for j in range(rows.n):
            if j != i:
                pairs[(group[i] == group[j], site[i] == site[j])].append(s[j])
    total = torch.zeros((), dtype=z.dtype)
    for positive in (True, False):
        aligned, conflicting = pairs[(positive, True)], pairs[(positive, False)]
        if not aligned or not conflicting:
            continue
        mu_a, mu_c = sum(aligned) / len(aligned), sum(conflicting) / len(conflicting)
        var_a = sum((v - mu_a) ** 2 for v in aligned) / len(aligned) + variance_eps
        var_c = sum((v - mu_c) ** 2 for v in conflicting) / len(conflicting) + variance_eps
        total = total + 0.5 * ((var_a + (mu_a - mu_c) ** 2) / var_c - torch.log(var_a / var_c) - 1)
    return total


def test_the_authors_code_is_named_by_its_full_commit():
    assert AUTHORS_COMMIT.startswith("25b3981") and len(AUTHORS_COMMIT) == 40


@pytest.mark.parametrize("n_views", [1, 2])
@pytest.mark.parametrize("temperature, std_weight", [(1.0, 1.0), (1.0, 0.0), (0.5, 2.0)])
def test_reference_code_equals_authors_fairkl_at_25b3981_in_value_and_gradient(n_views, temperature, std_weight):
    # n_views=1, tau=1, kld=1 is their training call: fairkl(F.normalize(feats[:, 0]), labels, bias, 1.0, kld=1).
    z = embeddings(8, n_views=n_views, seed=3)
    loss = FairKLLoss(reference_code=True, temperature=temperature, std_weight=std_weight)
    assert_same_value_and_gradient(
        lambda z: loss(z, CLASSES, SITES),
        lambda z: authors_code_on_views(z, CLASSES, SITES, temperature, std_weight),
        z,
    )


def test_reference_code_equals_authors_fairkl_when_no_positive_pair_is_bias_conflicting():
    # Each class at one site: their code takes the empty set's mean and std as 0, and so does medssl's.
    z, y = embeddings(6, seed=4), torch.tensor([0, 0, 1, 1, 2, 2])
    loss = FairKLLoss(reference_code=True)
    assert_same_value_and_gradient(
        lambda z: loss(z, y, y), lambda z: authors_code_on_views(z, y, y, temperature=1.0, kld=1.0), z
    )


@pytest.mark.parametrize(
    "n_views, labels, temperature",
    [(2, CLASSES, 1.0), (1, CLASSES, 1.0), (2, CLASSES, 0.1), (2, None, 1.0), (3, None, 0.5)],
    ids=["classes", "classes-one-view", "classes-tau-0.1", "views-of-one-subject", "views-of-one-subject-3-views"],
)
def test_paper_form_equals_loop_transcription_of_the_gaussian_kl_in_value_and_gradient(n_views, labels, temperature):
    # labels=None: positives are the views of one subject, all bias-aligned, so only the negatives' KL is left.
    z = embeddings(8, n_views=n_views, seed=5)
    loss = FairKLLoss(reference_code=False, temperature=temperature)
    assert_same_value_and_gradient(
        lambda z: loss(z, labels, SITES), lambda z: fairkl_paper_loop(z, labels, SITES, temperature), z
    )


def test_paper_form_does_not_depend_on_the_temperature_beyond_the_variance_floor():
    # The KL of two Gaussians is unchanged by an affine map of both: s, -s, 1 - cos all give one value.
    z = embeddings(8, seed=6).detach()
    values = [FairKLLoss(reference_code=False, temperature=t, variance_eps=1e-12)(z, CLASSES, SITES) for t in (0.1, 1)]
    assert values[0].item() > 1e-3
    torch.testing.assert_close(values[0], values[1], rtol=1e-9, atol=0)


def test_paper_form_on_a_single_site_batch_is_a_zero_connected_to_z():
    z = embeddings(6)
    loss = FairKLLoss(reference_code=False)(z, None, torch.zeros(6, dtype=torch.long))
    (gradient,) = torch.autograd.grad(loss, z)
    assert loss.item() == 0.0 and loss.grad_fn is not None
    assert torch.equal(gradient, torch.zeros_like(z))


@pytest.mark.parametrize("reference_code", [True, False])
def test_bfloat16_input_gives_a_float32_value_close_to_float32_input(reference_code):
    z = embeddings(16, dim=32, dtype=torch.float32, seed=7).detach()
    y, site = torch.arange(16) % 3, torch.arange(16) // 6
    loss = FairKLLoss(reference_code=reference_code)
    low = loss(z.bfloat16(), y, site)
    assert low.dtype == torch.float32 and low.shape == ()
    assert low.item() == pytest.approx(loss(z, y, site).item(), rel=5e-2, abs=5e-3)


BAD_INPUTS = {
    "nan label": (False, torch.tensor([0.0, 1.0, float("nan"), 1.0]), torch.tensor([0, 0, 1, 1]), "finite"),
    "age as label": (False, torch.tensor([31.5, 40.0, 52.2, 60.0]), torch.tensor([0, 0, 1, 1]), "y=None"),
    "3 labels for 4 subjects": (False, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 1, 1]), "y has 3 labels"),
    "3 sites for 4 subjects": (False, None, torch.tensor([0, 0, 1]), "bias has 3 labels"),
    "nan site": (False, None, torch.tensor([0.0, float("nan"), 1.0, 1.0]), "integer codes.*index 1"),
    "inf site": (False, None, torch.tensor([0.0, 1.0, float("inf"), 1.0]), "integer codes.*index 2"),
    "fractional site": (False, None, torch.tensor([0.0, 0.5, 1.0, 1.0]), "integer codes"),
    "2-d sites": (False, None, torch.tensor([[0, 0, 1, 1]]), r"bias must have shape \(N,\)"),
    "no sites": (False, None, None, "needs bias labels"),
    "reference code without labels": (True, None, torch.tensor([0, 0, 1, 1]), "reference_code=False for y=None"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_labels_or_bias_are_refused_with_a_value_error_naming_them(case):
    reference_code, y, bias, message = BAD_INPUTS[case]
    with pytest.raises(ValueError, match=message) as raised:
        FairKLLoss(reference_code=reference_code)(embeddings(4), y, bias)
    assert isinstance(raised.value, LossInputError) and "FairKLLoss" in str(raised.value)


@pytest.mark.parametrize("settings", [{"temperature": 0.0}, {"reference_code": False, "variance_eps": 0.0}])
def test_non_positive_temperature_or_variance_floor_is_refused(settings):
    with pytest.raises(LossInputError):
        FairKLLoss(**settings)


# --- What FairKL is for: a site shift that a linear probe reads is no longer readable. ---------------


def sites_with_offsets(n_per_site: int, offsets: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """16-d features: noise, a class signal on dimension 0, and a per-site offset (linearly readable)."""
    site = torch.arange(len(offsets)).repeat_interleave(n_per_site)
    y = torch.randint(0, 2, (len(site),), generator=generator)
    x = torch.randn(len(site), offsets.shape[1], generator=generator) + offsets[site]
    x[:, 0] += 2.0 * (2 * y - 1)
    return x, y, site


def site_probe_balanced_accuracy(weights: Tensor, x: Tensor, site: Tensor) -> float:
    """A logistic probe fitted on half of held-out subjects' embeddings, scored on the other half."""
    features = F.normalize(x @ weights, dim=1).detach().numpy()
    order = np.random.default_rng(0).permutation(len(features))
    fit, scored = order[: len(order) // 2], order[len(order) // 2 :]
    probe = LogisticRegression(max_iter=1000).fit(features[fit], site[fit].numpy())
    return float(balanced_accuracy_score(site[scored].numpy(), probe.predict(features[scored])))


def train_linear_map(debias: FairKLLoss | None, use_labels: bool, steps: int = 300) -> tuple[float, float]:
    """NT-Xent on two noisy views (alignment without collapse) + FairKL on the site, 300 Adam steps
    of a 16 -> 8 linear map; the site probe's balanced accuracy before and after (chance 1/3)."""
    generator = torch.Generator().manual_seed(0)
    offsets = 1.5 * torch.randn(3, 16, generator=generator)
    x, y, site = sites_with_offsets(30, offsets, generator)
    held_out_x, _, held_out_site = sites_with_offsets(100, offsets, generator)
    weights = (torch.randn(16, 8, generator=generator) / 4).requires_grad_()
    before = site_probe_balanced_accuracy(weights, held_out_x, held_out_site)
    optimizer = torch.optim.Adam([weights], lr=0.02)
    align = NTXentLoss(temperature=0.5)
    for _ in range(steps):
        views = torch.stack([x + 0.3 * torch.randn(x.shape, generator=generator) for _ in range(2)], dim=1)
        z = views @ weights
        loss = align(z)
        if debias is not None:
            loss = loss + debias(z, y if use_labels else None, site)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return before, site_probe_balanced_accuracy(weights, held_out_x, held_out_site)


@pytest.fixture(scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: threads only add overhead
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def undebiased_site_accuracy(one_thread):
    before, after = train_linear_map(None, use_labels=False)
    assert before > 0.85 and after > 0.9  # the site is readable, and NT-Xent alone keeps it so
    return after


@pytest.mark.parametrize(
    "reference_code, use_labels", [(True, True), (False, True), (False, False)], ids=["authors", "paper", "paper-views"]
)
def test_fairkl_lowers_a_logistic_site_probe_balanced_accuracy(undebiased_site_accuracy, reference_code, use_labels):
    # paper-views: y=None, positives are the views of one subject (the set-up for age).
    _, debiased = train_linear_map(FairKLLoss(reference_code=reference_code), use_labels)
    assert debiased < undebiased_site_accuracy - 0.25
