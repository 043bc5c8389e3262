import numpy as np
import pandas as pd
import pytest

import medssl.eval.plots as plots
from medssl.eval import plot_age_predictions, plot_embedding, plot_loss_curve
from medssl.eval.score import EvaluationError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000  # axes, points and text, not an empty canvas


def small_table(n: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "participant_id": [f"sub-{i}" for i in range(n)],
            "site": rng.choice(["A", "B", "C"], n),
            "age": rng.uniform(20, 80, n),
            "split": rng.choice(["train", "internal_test", "external_test"], n),
        }
    )


def test_age_prediction_plot_is_written_as_png(tmp_path):
    table = small_table()
    table["age_pred"] = table["age"] + np.random.default_rng(1).normal(0, 3, len(table))
    table.loc[table["split"] == "train", "age_pred"] = np.nan
    path = plot_age_predictions(table, tmp_path / "plots" / "age.png")
    assert path == tmp_path / "plots" / "age.png"
    assert_png(path)


def test_age_prediction_plot_refuses_a_table_without_predictions(tmp_path):
    with pytest.raises(EvaluationError, match="'age_pred'"):
        plot_age_predictions(small_table(), tmp_path / "age.png")
    table = small_table().assign(age_pred=np.nan)
    with pytest.raises(EvaluationError, match="no row"):
        plot_age_predictions(table, tmp_path / "age.png")


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embedding_plot_is_written_as_png(tmp_path, method):
    table = small_table()
    features = np.random.default_rng(0).normal(size=(len(table), 16))
    assert_png(plot_embedding(features, table, tmp_path / f"{method}.png", method=method))


def test_embedding_auto_method_prefers_umap_then_tsne_then_pca(monkeypatch):
    monkeypatch.setattr(plots.importlib.util, "find_spec", lambda name: None)
    features = np.random.default_rng(0).normal(size=(30, 8))
    coordinates, used = plots.embed_2d(features, "auto")
    assert used == "t-SNE" and coordinates.shape == (30, 2)
    many = np.random.default_rng(0).normal(size=(plots.TSNE_MAX_SUBJECTS + 1, 4))
    assert plots.embed_2d(many, "auto")[1] == "PCA"


def test_embedding_refuses_an_unknown_method(tmp_path):
    table = small_table()
    with pytest.raises(EvaluationError, match="expected one of auto, umap, tsne, pca"):
        plot_embedding(np.zeros((len(table), 3)), table, tmp_path / "e.png", method="mds")


@pytest.mark.parametrize("with_lr", [True, False])
def test_loss_curve_is_written_as_png(tmp_path, with_lr):
    steps = np.arange(200)
    metrics = pd.DataFrame(
        {
            "step": steps,
            "epoch": steps // 20,
            "loss": 5 * np.exp(-steps / 60) + np.random.default_rng(0).normal(0, 0.2, len(steps)),
        }
    )
    metrics.loc[7, "loss"] = np.nan
    if with_lr:
        metrics["lr"] = 1e-3 * np.minimum(1, steps / 20)
    assert_png(plot_loss_curve(metrics, tmp_path / "loss.png"))


def test_loss_curve_needs_a_loss_and_an_x_column(tmp_path):
    with pytest.raises(EvaluationError, match="missing column 'loss'"):
        plot_loss_curve(pd.DataFrame({"step": [0, 1], "lr": [1, 1]}), tmp_path / "loss.png")
    with pytest.raises(EvaluationError, match="'step' or 'epoch'"):
        plot_loss_curve(pd.DataFrame({"loss": [1.0, 0.5]}), tmp_path / "loss.png")
    with pytest.raises(EvaluationError, match="smoothing"):
        plot_loss_curve(pd.DataFrame({"step": [0], "loss": [1.0]}), tmp_path / "loss.png", smoothing=1.0)


def test_embedding_names_every_site_of_a_large_cohort_with_a_style_of_its_own(tmp_path, monkeypatch):
    sites = [f"site{index:02d}" for index in range(64)]  # OpenBHB's number of sites
    table = pd.DataFrame({"age": np.linspace(10, 80, 128), "site": sites * 2})
    features = np.random.default_rng(0).normal(size=(len(table), 8))
    drawn = []
    save_figure = plots.save_figure

    def keep_figure(figure, path):
        drawn.append(figure)
        return save_figure(figure, path)

    monkeypatch.setattr(plots, "save_figure", keep_figure)
    assert_png(plot_embedding(features, table, tmp_path / "e.png", method="pca"))
    site_axes = drawn[0].axes[1]
    assert [text.get_text() for text in site_axes.get_legend().get_texts()] == sites
    styles = {
        (tuple(collection.get_facecolor()[0]), collection.get_paths()[0].vertices.tobytes())
        for collection in site_axes.collections
    }
    assert len(styles) == 64


def test_point_labels_do_not_overlap_each_other_or_leave_the_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4, 3))
    axes = figure.subplots()
    # Three points closer together than a label is long, as two methods with similar MAEs are.
    xs, ys = [5.0, 5.1, 5.05, 9.0], [5.0, 5.05, 4.9, 9.0]
    axes.plot(xs, ys, "o")
    axes.set_xlim(0, 10), axes.set_ylim(0, 10)
    labels = plots.label_points(axes, xs, ys, ["threshold_age", "exp_age", "yaware_age", "simclr"])
    renderer = FigureCanvasAgg(figure).get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    assert len(boxes) == 4
    for i, first in enumerate(boxes):
        assert plots._overlap(first, axes.get_window_extent(renderer)) == pytest.approx(first.width * first.height)
        for second in boxes[i + 1 :]:
            assert plots._overlap(first, second) == 0


def test_point_labels_skip_points_with_a_missing_coordinate():
    from matplotlib.figure import Figure

    axes = Figure().subplots()
    labels = plots.label_points(axes, [1.0, np.nan], [2.0, 3.0], ["measured", "no external sites"])
    assert [label.get_text() for label in labels] == ["measured"]


def test_loss_curve_of_a_run_metrics_table_draws_its_step_rows_only(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "save_figure", lambda figure, path: drawn.setdefault("figure", figure) and path)
    metrics = pd.DataFrame(
        {
            "kind": ["step", "step", "epoch", "step", "step", "epoch"],
            "step": [1, 2, 2, 3, 4, 4],
            "epoch": [0, 0, 0, 1, 1, 1],
            "loss": [4.0, 3.0, 3.5, 2.0, 1.0, 1.5],  # epoch rows hold the epoch's mean
        }
    )
    plot_loss_curve(metrics, tmp_path / "loss.png")
    raw = drawn["figure"].axes[0].lines[0]
    assert list(raw.get_xdata()) == [1, 2, 3, 4] and list(raw.get_ydata()) == [4.0, 3.0, 2.0, 1.0]
