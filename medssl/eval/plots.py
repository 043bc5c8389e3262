"""Figures of an evaluation: predicted vs. true age, 2-D embeddings, training loss curves, ROC curves.

Figures are drawn with matplotlib's object API on the Agg canvas (``Figure`` +
``savefig``), never through ``pyplot``: no display is needed and no global backend or
figure state is touched, so plotting is safe inside training jobs and tests.

Example:
    >>> plot_age_predictions(results["predictions"], "out/age_predictions.png")
    >>> plot_embedding(features, table, "out/embedding.png")
    >>> plot_loss_curve(pd.read_csv("run/metrics.csv"), "run/loss.png")
    >>> plot_roc_curves({"seed 0": (is_patient, patient_probability)}, "run/roc_internal_test.png")
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import mean_absolute_error
from sklearn.preprocessing import StandardScaler

from medssl.eval.probes import check_features, single_thread_if_small
from medssl.eval.score import TEST_SPLITS, EvaluationError, as_labels

EMBEDDING_METHODS = ("auto", "umap", "tsne", "pca")
TSNE_MAX_SUBJECTS = 2000  # beyond this, t-SNE is too slow for a routine report
TSNE_PCA_DIMS = 50  # t-SNE runs on the leading principal components, as usual
SITES_PER_LEGEND_COLUMN = 20
DPI = 120


def plot_age_predictions(
    predictions: pd.DataFrame,
    path: str | Path,
    *,
    age_col: str = "age",
    age_pred_col: str = "age_pred",
    split_col: str = "split",
    title: str | None = None,
) -> Path:
    """Scatter predicted against true age, one colour per split, with the identity line.

    The test splits are drawn when the table has any; otherwise every split (e.g.
    out-of-fold predictions of a cross-validation). Rows without a prediction are left out.
    Each legend entry gives the split's MAE.

    Returns:
        the path of the written PNG.
    """
    for column in (age_col, age_pred_col):
        if column not in predictions.columns:
            raise EvaluationError(f"predictions: missing column {column!r}, needed for the age plot")
    rows = predictions[predictions[age_pred_col].notna() & predictions[age_col].notna()]
    groups = rows[split_col].astype(str) if split_col in rows.columns else pd.Series("all", index=rows.index)
    if groups.isin(TEST_SPLITS).any():
        rows, groups = rows[groups.isin(TEST_SPLITS)], groups[groups.isin(TEST_SPLITS)]
    if rows.empty:
        raise EvaluationError("predictions: no row with both a true and a predicted age to plot")

    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    true_age = rows[age_col].to_numpy(dtype=float)
    pred_age = rows[age_pred_col].to_numpy(dtype=float)
    for group in sorted(groups.unique()):
        mask = (groups == group).to_numpy()
        mae = mean_absolute_error(true_age[mask], pred_age[mask])
        axes.scatter(true_age[mask], pred_age[mask], s=14, alpha=0.7, label=f"{group} (n={mask.sum()}, MAE {mae:.2f})")
    low = float(min(true_age.min(), pred_age.min()))
    high = float(max(true_age.max(), pred_age.max()))
    axes.plot([low, high], [low, high], color="black", linewidth=1, linestyle="--", label="identity")
    axes.set_xlabel("true age (years)")
    axes.set_ylabel("predicted age (years)")
    axes.set_title(title or "Predicted vs. true age")
    axes.legend(loc="upper left", fontsize="small")
    return save_figure(figure, path)


def plot_embedding(
    features: np.ndarray,
    table: pd.DataFrame,
    path: str | Path,
    method: str = "auto",
    *,
    age_col: str = "age",
    site_col: str = "site",
    seed: int = 0,
) -> Path:
    """2-D embedding of standardised features, coloured by age (left) and by site (right).

    ``method="auto"`` uses UMAP when ``umap-learn`` is installed, else t-SNE up to
    ``TSNE_MAX_SUBJECTS`` subjects, else PCA; the method used is written in the title.

    Returns:
        the path of the written PNG.
    """
    if method not in EMBEDDING_METHODS:
        raise EvaluationError(f"embedding method: got {method!r}, expected one of {', '.join(EMBEDDING_METHODS)}")
    features = check_features(features, table)
    if len(features) < 3:
        raise EvaluationError(
            f"features: {len(features)} subject{'s' if len(features) != 1 else ''}, an embedding plot needs at least 3"
        )
    coordinates, used = embed_2d(features, method, seed)

    figure = Figure(figsize=(11, 4.8))
    age_axes, site_axes = figure.subplots(1, 2)
    if age_col in table.columns:
        ages = pd.to_numeric(table[age_col], errors="coerce").to_numpy(dtype=float)
        points = age_axes.scatter(coordinates[:, 0], coordinates[:, 1], c=ages, cmap="viridis", s=14)
        figure.colorbar(points, ax=age_axes, label="age (years)")
    else:
        age_axes.scatter(coordinates[:, 0], coordinates[:, 1], s=14, color="grey")
    age_axes.set_title(f"coloured by {age_col}")
    if site_col in table.columns:
        sites = as_labels(table[site_col].fillna("unknown")).to_numpy()
        figure.set_figwidth(11 + 1.2 * scatter_by_site(site_axes, coordinates, sites, site_col))
    else:
        site_axes.scatter(coordinates[:, 0], coordinates[:, 1], s=14, color="grey")
    site_axes.set_title(f"coloured by {site_col}")
    for axes in (age_axes, site_axes):
        axes.set_xticks([])
        axes.set_yticks([])
    figure.suptitle(f"Embedding of {features.shape[0]} subjects x {features.shape[1]} features ({used})")
    return save_figure(figure, path)


def scatter_by_site(axes, coordinates: np.ndarray, sites: np.ndarray, title: str) -> int:
    """One colour and marker per site (20 colours x 6 markers), named in a legend beside the axes;
    returns the legend's number of columns."""
    markers = "os^DvP"
    palette = colormaps["tab20"]
    names = sorted(set(sites))
    for index, site in enumerate(names):
        mask = sites == site
        style = {"color": palette(index % 20), "marker": markers[(index // 20) % len(markers)]}
        axes.scatter(coordinates[mask, 0], coordinates[mask, 1], s=14, label=site, **style)
    columns = -(-len(names) // SITES_PER_LEGEND_COLUMN)
    axes.legend(
        fontsize="x-small",
        markerscale=0.8,
        title=title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        ncol=columns,
        borderaxespad=0.0,
    )
    return columns


def embed_2d(features: np.ndarray, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, str]:
    """Project standardised features to 2-D; returns the coordinates and the method used."""
    if method == "auto":
        if importlib.util.find_spec("umap") is not None:
            method = "umap"
        else:
            method = "tsne" if len(features) <= TSNE_MAX_SUBJECTS else "pca"
    with single_thread_if_small(features):
        return _embed_2d(features, method, seed)


def _embed_2d(features: np.ndarray, method: str, seed: int) -> tuple[np.ndarray, str]:
    scaled = StandardScaler().fit_transform(features)
    if scaled.shape[1] == 1:
        scaled = np.hstack([scaled, np.zeros_like(scaled)])
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(scaled), "PCA"
    reduced = PCA(n_components=min(TSNE_PCA_DIMS, *scaled.shape), random_state=seed).fit_transform(scaled)
    if method == "umap":
        try:
            import umap
        except ImportError:
            raise EvaluationError("embedding method 'umap' needs umap-learn (pip install medssl[umap])") from None
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(features) - 1), random_state=seed)
        return reducer.fit_transform(reduced), "UMAP"
    perplexity = min(30.0, (len(features) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(reduced), "t-SNE"


def plot_loss_curve(
    metrics: pd.DataFrame,
    path: str | Path,
    *,
    smoothing: float = 0.9,
    loss_col: str = "loss",
) -> Path:
    """Training loss against step (or epoch): raw values faint, exponentially smoothed values bold.

    ``metrics`` has one row per logged step with the columns ``step``, ``epoch`` and
    ``loss`` (at least one of ``step``/``epoch``), and optionally ``lr``, drawn in a second
    panel. Non-finite losses are left out.

    Args:
        metrics: the training metrics table.
        path: PNG file to write.
        smoothing: weight of the past in the exponential moving average, in [0, 1).
        loss_col: column holding the loss.

    Returns:
        the path of the written PNG.
    """
    if not 0.0 <= smoothing < 1.0:
        raise EvaluationError(f"smoothing: got {smoothing!r}, expected a number in [0, 1)")
    if "kind" in metrics.columns:  # a run's metrics.csv also holds one row per epoch (their means)
        metrics = metrics[metrics["kind"] == "step"]
    if loss_col not in metrics.columns:
        raise EvaluationError(f"metrics: missing column {loss_col!r} (columns: {', '.join(map(str, metrics.columns))})")
    x_col = next((column for column in ("step", "epoch") if column in metrics.columns), None)
    if x_col is None:
        raise EvaluationError("metrics: missing column 'step' or 'epoch' for the x axis")
    loss = pd.to_numeric(metrics[loss_col], errors="coerce")
    rows = metrics[np.isfinite(loss.to_numpy(dtype=float, na_value=np.nan))]
    if rows.empty:
        raise EvaluationError(f"metrics: no finite value in column {loss_col!r} to plot")
    x = rows[x_col].to_numpy(dtype=float)
    raw = pd.to_numeric(rows[loss_col]).to_numpy(dtype=float)
    smoothed = pd.Series(raw).ewm(alpha=1.0 - smoothing, adjust=True).mean().to_numpy()

    has_lr = "lr" in rows.columns and rows["lr"].notna().any()
    figure = Figure(figsize=(7, 6.5 if has_lr else 4.5))
    if has_lr:
        loss_axes, lr_axes = figure.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    else:
        loss_axes, lr_axes = figure.add_subplot(), None
    loss_axes.plot(x, raw, color="tab:blue", alpha=0.3, linewidth=1, label="raw")
    loss_axes.plot(x, smoothed, color="tab:blue", linewidth=2, label=f"smoothed (EMA {smoothing:g})")
    loss_axes.set_ylabel(loss_col)
    loss_axes.set_title("Training loss")
    loss_axes.legend(loc="upper right", fontsize="small")
    if lr_axes is not None:
        lr_axes.plot(x, pd.to_numeric(rows["lr"], errors="coerce").to_numpy(dtype=float), color="tab:orange")
        lr_axes.set_ylabel("learning rate")
        lr_axes.set_xlabel(x_col)
    else:
        loss_axes.set_xlabel(x_col)
    return save_figure(figure, path)


def plot_roc_curves(
    curves: dict[str, tuple[np.ndarray, np.ndarray]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """ROC curves (e.g. one per fine-tuning seed) with their AUC in the legend and the chance diagonal.

    Args:
        curves: ``{label: (is_positive, score)}``, two arrays of the same length per curve;
            a curve whose subjects are all of one class has no ROC and is listed as such.
        path: PNG file to write.
        title: figure title.

    Returns:
        the path of the written PNG.

    Example:
        >>> plot_roc_curves({"seed 0": (y == "patient", p_patient)}, "run/roc_internal_test.png")
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = Figure(figsize=(5.5, 5))
    axes = figure.add_subplot()
    palette = colormaps["tab10"]
    for index, (label, (positive, score)) in enumerate(curves.items()):
        positive = _as_positive(label, positive)
        score = np.asarray(score, dtype=float)
        if len(positive) != len(score):
            raise EvaluationError(f"ROC curve {label!r}: {len(positive)} labels but {len(score)} scores")
        if positive.all() or not positive.any():
            axes.plot([], [], color=palette(index % 10), label=f"{label} (a single class: no ROC)")
            continue
        false_positive, true_positive, _ = roc_curve(positive, score)
        auc = roc_auc_score(positive, score)
        axes.plot(
            false_positive,
            true_positive,
            color=palette(index % 10),
            linewidth=1.5,
            label=f"{label} (AUC {auc:.3f}, n={len(positive)})",
        )
    axes.plot([0, 1], [0, 1], color="black", linewidth=1, linestyle="--", label="chance")
    axes.set_xlim(-0.01, 1.01)  # a curve along the frame (AUC 0 or 1) stays visible
    axes.set_ylim(-0.01, 1.01)
    axes.set_xlabel("false positive rate (1 - specificity)")
    axes.set_ylabel("true positive rate (sensitivity)")
    axes.set_title(title or "ROC curves")
    axes.legend(loc="lower right", fontsize="small")
    return save_figure(figure, path)


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Lay out ``figure`` and write it as a PNG to ``path`` (folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, dpi=DPI, format="png")
    return path


def _as_positive(curve: str, labels) -> np.ndarray:
    """Booleans, or 0 / 1: anything else ("0" / "1" as text, "patient", -1 / +1) would be cast to
    True for every subject, so it is refused."""
    values = np.asarray(labels)
    if values.dtype != bool and not (np.issubdtype(values.dtype, np.number) and np.isin(values, (0, 1)).all()):
        shown = ", ".join(repr(value) for value in np.unique(values.astype(str))[:3])
        raise EvaluationError(f"ROC curve {curve!r}: is_positive must be booleans or 0 / 1, got {shown}")
    return values.astype(bool)


# Where a point's label may go, in points from the point, with its alignment: right, left, above, below.
LABEL_OFFSETS = (
    ((5, 4), "left", "bottom"),
    ((5, -4), "left", "top"),
    ((-5, 4), "right", "bottom"),
    ((-5, -4), "right", "top"),
    ((7, 0), "left", "center"),
    ((-7, 0), "right", "center"),
    ((0, 8), "center", "bottom"),
    ((0, -8), "center", "top"),
)


def label_points(axes, xs, ys, labels, fontsize: str = "small") -> list:
    """Label each point beside it where the label overlaps other labels, the points and the axes
    edge least (greedy, in the order given); call once the layout is final (after ``tight_layout``).

    Returns the annotations (none for points with a missing coordinate).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.transforms import Bbox

    figure = axes.get_figure()
    renderer = FigureCanvasAgg(figure).get_renderer()  # text extents need a renderer
    frame = axes.get_window_extent(renderer)
    points = [axes.transData.transform((x, y)) for x, y in zip(xs, ys)]
    radius = 4 * figure.dpi / 72  # a marker's half-width in pixels
    occupied = [Bbox.from_extents(px - radius, py - radius, px + radius, py + radius) for px, py in points]
    annotations = []
    for x, y, label in zip(xs, ys, labels):
        if not (np.isfinite(x) and np.isfinite(y)):
            continue  # a row without the figure has no point to label
        best, best_cost = None, float("inf")
        for offset, horizontal, vertical in LABEL_OFFSETS:
            candidate = axes.annotate(
                label, (x, y), textcoords="offset points", xytext=offset, ha=horizontal, va=vertical, fontsize=fontsize
            )
            box = candidate.get_window_extent(renderer)
            cost = sum(_overlap(box, other) for other in occupied) + box.width * box.height - _overlap(box, frame)
            if cost < best_cost:
                if best is not None:
                    best.remove()
                best, best_cost, best_box = candidate, cost, box
            else:
                candidate.remove()
            if cost == 0:
                break
        occupied.append(best_box)
        annotations.append(best)
    return annotations


def _overlap(first, second) -> float:
    """Area shared by two boxes (pixels squared)."""
    width = min(first.x1, second.x1) - max(first.x0, second.x0)
    height = min(first.y1, second.y1) - max(first.y0, second.y0)
    return max(width, 0.0) * max(height, 0.0)
