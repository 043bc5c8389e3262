"""ComBat harmonisation of frozen features: the post-hoc site-removal baseline of the evaluation report.

ComBat (Johnson et al., Biostatistics 2007; on neuroimaging features, Fortin et al., NeuroImage
2018) models each feature of a subject scanned at site i as

    x = alpha + beta * age + sigma * (gamma_i + sqrt(delta_i) * epsilon)

and removes each site's additive (gamma_i) and multiplicative (delta_i) effects, estimated with
empirical-Bayes shrinkage across features. The report's ``combat`` representation is the
pre-trained features harmonised this way and probed with the same probes and folds: in every
fold (and on the challenge protocol's ``train`` rows), ComBat is fitted on the fold's training
rows only, with ``age`` as a covariate so that age differences between sites are not taken for
site effects, by the ``neuroCombat`` package (parametric empirical Bayes, its defaults).

The fitted estimates are then applied to every row of a fitted site, training rows included,
without covariate: the features are standardised with the training mean at the training rows'
mean age and the pooled scale, the site's effects are removed, the scale is restored (the
formula of ``neuroCombatFromTraining``, written out here because its 0.2.12 release calls
``int()`` on a one-element array, which numpy 2.4 refuses). A test row's age is what the age
probe predicts, so it cannot be used to transform that row's features.

Left as they are:

- rows of sites with no training rows (the challenge's external sites, the held-out sites of the
  leave-site-out folds): ComBat estimates a site's effects from that site's own rows, and an
  unseen site has none in the fit (fitting on test rows is what the protocols forbid). These
  rows reach the probes unharmonised: their scores measure probes fitted on harmonised
  features, applied to raw features of new scanners;
- rows of sites with fewer than 2 training rows (no within-site variance to estimate);
- features constant within a training site (no scale to estimate, as the ``sva`` package's
  ComBat leaves them);
- every row, when fewer than 2 sites have 2 training rows or fewer than 2 features vary (the
  empirical-Bayes priors are estimated across features).

Example:
    >>> harmonised = combat_harmonise(features, table, train_idx=np.flatnonzero(table["split"] == "train"))
    >>> results = combat_challenge_protocol(features, table, seed=0)
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from neuroCombat import neuroCombat
from threadpoolctl import threadpool_limits

from medssl.eval.probes import challenge_protocol
from medssl.eval.score import as_labels

COVARIATE = "age"
NOTE = (
    "ComBat (neuroCombat, age as covariate) fitted on each fold's training rows, applied to the rows of those "
    "sites; rows of sites absent from the training rows (external test, held-out sites), and folds whose "
    "training rows span fewer than 2 sites, are left unharmonised"
)


@dataclass(frozen=True)
class CombatFit:
    """What applying a ComBat fit needs: its sites, the harmonised columns and the estimates."""

    sites: np.ndarray  # fitted site labels, sorted, as neuroCombat orders its estimates
    columns: np.ndarray  # positions of the harmonised feature columns
    mean: np.ndarray  # (n_columns,) training mean at the training rows' mean age
    scale: np.ndarray  # (n_columns,) pooled residual standard deviation
    gamma: np.ndarray  # (n_sites, n_columns) additive site effects, standardised units
    delta: np.ndarray  # (n_sites, n_columns) multiplicative site effects (variance ratios)


def fit_combat(features: np.ndarray, sites: np.ndarray, ages: np.ndarray | None = None) -> CombatFit | None:
    """ComBat estimates from training rows (age a covariate when given); None when there is nothing to harmonise.

    Rows with a missing age, and sites with fewer than 2 rows, are left out of the fit; so are
    features constant within a site. None when fewer than 2 sites or 2 features remain.
    """
    sites = np.asarray(sites, dtype=str)
    keep = np.ones(len(sites), dtype=bool) if ages is None else np.isfinite(ages)
    names, counts = np.unique(sites[keep], return_counts=True)
    keep &= np.isin(sites, names[counts >= 2])
    fitted = np.unique(sites[keep])
    if len(fitted) < 2:
        return None
    x, site = features[keep], sites[keep]
    columns = np.flatnonzero(np.all([np.ptp(x[site == name], axis=0) > 0 for name in fitted], axis=0))
    if len(columns) < 2:
        return None
    covariates = pd.DataFrame({"site": site})
    continuous = []
    if ages is not None:
        design = np.column_stack([site[:, None] == fitted, ages[keep]]).astype(float)
        if np.linalg.matrix_rank(design) == design.shape[1]:  # age not constant within every site
            covariates[COVARIATE] = ages[keep]
            continuous = [COVARIATE]
    # neuroCombat prints its steps; its per-feature regressions are small products that BLAS threads slow down
    with contextlib.redirect_stdout(io.StringIO()), np.errstate(all="ignore"), threadpool_limits(limits=1):
        estimates = neuroCombat(x[:, columns].T, covariates, "site", continuous_cols=continuous)["estimates"]
    return CombatFit(
        sites=np.asarray(estimates["batches"], dtype=str),
        columns=columns,
        mean=estimates["stand.mean"][:, 0] + np.mean(estimates["mod.mean"], axis=1),
        scale=np.sqrt(estimates["var.pooled"][:, 0]),
        gamma=np.asarray(estimates["gamma.star"], dtype=float),
        delta=np.asarray(estimates["delta.star"], dtype=float),
    )


def apply_combat(fit: CombatFit | None, features: np.ndarray, sites: np.ndarray) -> np.ndarray:
    """A copy of ``features`` whose rows of fitted sites are harmonised; other rows and columns as they are."""
    harmonised = np.array(features, dtype=np.float64)
    if fit is None:
        return harmonised
    sites = np.asarray(sites, dtype=str)
    rows = np.flatnonzero(np.isin(sites, fit.sites))
    site = np.searchsorted(fit.sites, sites[rows])
    standardised = (harmonised[np.ix_(rows, fit.columns)] - fit.mean) / fit.scale
    adjusted = (standardised - fit.gamma[site]) / np.sqrt(fit.delta[site]) * fit.scale + fit.mean
    finite = np.isfinite(adjusted).all(axis=0)  # a degenerate estimate leaves its column as it is
    harmonised[np.ix_(rows, fit.columns[finite])] = adjusted[:, finite]
    return harmonised


def _sites_and_ages(table: pd.DataFrame) -> tuple[np.ndarray, np.ndarray | None]:
    sites = as_labels(table["site"].reset_index(drop=True)).to_numpy(dtype=str)
    if COVARIATE not in table.columns:
        return sites, None
    return sites, pd.to_numeric(table[COVARIATE], errors="coerce").to_numpy(dtype=float)


def combat_harmonise(features: np.ndarray, table: pd.DataFrame, train_idx: np.ndarray) -> np.ndarray:
    """``features`` harmonised by ComBat fitted on the rows ``train_idx`` (positions in ``table``)."""
    sites, ages = _sites_and_ages(table)
    fit = fit_combat(features[train_idx], sites[train_idx], None if ages is None else ages[train_idx])
    return apply_combat(fit, features, sites)


def fold_combat(features: np.ndarray, table: pd.DataFrame) -> Callable[[np.ndarray], np.ndarray]:
    """``train_idx -> features harmonised by ComBat fitted on those rows``, for the ``transform`` of
    :func:`medssl.eval.probes.cross_validate_probes`: one fit per training part, shared by every target."""
    sites, ages = _sites_and_ages(table)
    fits: dict[bytes, CombatFit | None] = {}

    def harmonised(train_idx: np.ndarray) -> np.ndarray:
        key = np.asarray(train_idx).tobytes()
        if key not in fits:
            fits[key] = fit_combat(features[train_idx], sites[train_idx], None if ages is None else ages[train_idx])
        return apply_combat(fits[key], features, sites)

    return harmonised


def combat_challenge_protocol(features: np.ndarray, table: pd.DataFrame, **settings) -> dict:
    """:func:`medssl.eval.probes.challenge_protocol` on ``features`` harmonised by ComBat fitted on the ``train`` rows."""
    train = np.flatnonzero(table["split"].astype(str).to_numpy() == "train")
    return challenge_protocol(combat_harmonise(features, table, train), table, **settings)
