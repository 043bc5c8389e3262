"""The ``medssl`` command line.

medssl pretrain recipes/yaware_age.yaml [KEY.PATH=VALUE ...] [--out DIR] [--resume | --overwrite] [--smoke]
medssl evaluate RUN_DIR_OR_ENCODER_PT [--cohort DIR]
medssl finetune recipes/finetune_diagnosis.yaml [KEY.PATH=VALUE ...] --encoder RUN_DIR/encoder.pt|none [--mode M] [--out DIR] [--resume | --overwrite] [--smoke]
medssl score predictions.csv [--json out.json] [--id-col C]
medssl benchmark [--recipes a,b] [--seeds 0,1,2] [--out DIR] [--jobs N] [--devices 0,1] [--smoke] [KEY.PATH=VALUE ...]
medssl leaderboard BENCHMARK_DIR
medssl recipes [--fields]
medssl data synth OUT --subjects N --sites S --shape 64 [--diagnosis focal|ageing|ad-like] [--overwrite]
medssl data cache COHORT OUT [data.KEY=VALUE ...] [--shape 64] [--recipe R] [--dtype float16] [--workers K] [--overwrite]
medssl data inspect [COHORT_DIR|RECIPE] [KEY.PATH=VALUE ...] [--json FILE]
medssl weights import FILE --layout NAME --out DIR [--encoder NAME] [model.KEY=VALUE ...] [--ignore PREFIX]
medssl weights layouts [--json]
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import sys
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperCommand, TyperGroup

from medssl.errors import CohortError, MedsslError, RecipeError
from medssl.run_folder import (
    CACHE_ARTEFACTS,
    SYNTHETIC_COHORT_ARTEFACTS,
    check_cohort_folder,
    check_run_folder,
    remove_artefacts,
    run_artefacts,
)

FLAG = ""  # the metavar of boolean switches: they take no value (typer 0.29 would show <bool>)


class _HelpIsASwitch:
    """``--help`` is shown as the switch it is: typer 0.29 makes it an option of its own, shown
    as ``--help <bool>`` in every command's and group's help (``FLAG`` does this for medssl's switches)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)  # a typer command or group's
        if option is not None:
            option.metavar = FLAG
        return option


class _Command(_HelpIsASwitch, TyperCommand):
    pass


class _Group(_HelpIsASwitch, TyperGroup):
    pass


class _Typer(typer.Typer):
    """A typer app whose groups and commands show ``--help`` without a value type."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=_Group, **kwargs)

    def command(self, *args, **kwargs):
        return super().command(*args, cls=_Command, **kwargs)


app = _Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Self-supervised pre-training of 3D encoders on medical images, with OpenBHB-style evaluation.",
)
data_app = _Typer(no_args_is_help=True, help="Cohort utilities: synthetic cohorts, memory-mapped caches.")
app.add_typer(data_app, name="data")
weights_app = _Typer(no_args_is_help=True, help="Published encoders: import their checkpoints as medssl encoders.")
app.add_typer(weights_app, name="weights")
console = Console()


class FinetuneMode(str, Enum):
    """``--mode``: typer checks the choice and lists it in --help."""

    linear = "linear"
    full = "full"
    lower_lr = "lower_lr"


class CacheDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class DiagnosisModel(str, Enum):
    """The synthetic generator's disorder models (medssl.data.synthetic.DISORDER_MODELS)."""

    focal = "focal"
    ageing = "ageing"
    ad_like = "ad-like"


OVERRIDES_HELP = "Recipe overrides as KEY.PATH=VALUE, e.g. {example} data.root=/data/openbhb."


def _run_dir(name: str, out: Path | None, resume: bool) -> Path:
    if out is not None:
        return out
    runs = Path("runs")
    if resume:
        # Only <name>-<date>-<time>: "simclr-*" would also match the runs of "simclr-smoke".
        pattern = re.compile(re.escape(name) + r"-\d{8}-\d{6}")
        previous = sorted(
            path.parent.parent
            for path in runs.glob(f"{name}-*/checkpoints/last.pt")
            if pattern.fullmatch(path.parent.parent.name)
        )
        if previous:
            return previous[-1]
    return runs / f"{name}-{datetime.now():%Y%m%d-%H%M%S}"


PRETRAIN_CHECKPOINT = Path("checkpoints") / "last.pt"


def _refuse_nothing_to_resume(run_dir: Path, out: Path | None, state: str, has_state: bool) -> None:
    """``--resume`` with nothing to continue (a mistyped --out, a run stopped before its first
    checkpoint) is refused before anything is made: it would quietly train a new run."""
    if has_state:
        return
    if out is None:
        raise RecipeError(
            f"--resume: no run of this recipe in runs/ has a {state} to continue; give the run's --out, or run without --resume"
        )
    if not run_dir.is_dir():
        raise MedsslError(
            f"{run_dir}: no such folder, nothing to resume; check --out, or run without --resume to start a new run"
        )
    start = "add --overwrite instead of --resume" if run_artefacts(run_dir) else "run without --resume"
    raise MedsslError(f"{run_dir}: holds no {state}, nothing to resume; {start} to start a new run there")


def _smoke(recipe, overrides: list[str]):
    """The recipe shrunk by ``--smoke``, then the command line's overrides again: they win over the smoke budget."""
    from medssl.config import apply_overrides, recipe_from_dict, smoke_recipe

    smoke = smoke_recipe(recipe)
    return (
        recipe_from_dict(
            apply_overrides(smoke.model_dump(mode="json"), overrides), source="--smoke", overrides=overrides
        )
        if overrides
        else smoke
    )


def _smoke_finetune(recipe, overrides: list[str], encoder: str):
    """``--smoke`` for fine-tuning: at the cubic shape the encoder was pre-trained on, unless the
    command line gives a shape, so that a smoke pre-training and fine-tuning chain."""
    from medssl.finetune.encoder import smoke_at_pretraining_shape

    smoke = _smoke(recipe, overrides)
    shape_given = any(item.startswith(("data.synthetic.shape", "data.volume_shape")) for item in overrides)
    return smoke if encoder.lower() == "none" or shape_given else smoke_at_pretraining_shape(smoke, encoder)


@contextmanager
def _quiet_sklearn(smoke: bool = False) -> Iterator[None]:
    """scikit-learn's warnings are counted, not printed, and summarised in one note at the end:
    with few subjects per fold or split, undefined metrics and single-class folds are routine,
    and a line per fit would bury the results. Under --smoke, where a handful of subjects makes
    them certain, not even the note. Other warnings (medssl's own) print as usual."""
    counts: Counter[str] = Counter()
    show = warnings.showwarning

    def count_library_warnings(message, category, filename, lineno, file=None, line=None):
        if f"{os.sep}sklearn{os.sep}" in str(filename):
            counts[f"{category.__name__} '{str(message).strip().splitlines()[0].removesuffix('.')}'"] += 1
        else:
            show(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():
        if smoke:
            warnings.filterwarnings("ignore", module=r"sklearn(\.|$)")
        else:
            warnings.filterwarnings("always", module=r"sklearn(\.|$)")  # each one counted, not the first only
        warnings.showwarning = count_library_warnings
        try:
            yield
        finally:
            if counts and os.environ.get("RANK", "0") == "0":
                console.print(_library_warnings_note(counts), highlight=False)


def _library_warnings_note(counts: Counter[str]) -> str:
    """One line: how many scikit-learn warnings were held back, the most frequent first."""
    total = sum(counts.values())
    (first, n_first), *others = counts.most_common()
    also = f"; {len(others)} other kind{'s' if len(others) != 1 else ''}" if others else ""
    return (
        f"note: {total} scikit-learn warning{'s' if total != 1 else ''} not shown (usually a fold or split "
        f"with too few subjects for a metric): {first} x{n_first}{also}"
    )


def _launch_torchrun(devices: int) -> None:
    """Re-run this command under torchrun with ``devices`` processes (DDP).

    This process is torchrun's agent (``torch.distributed.run.run``), so that it waits for the
    processes it started and ends with their exit code: a Ctrl-C or a refused input ends as
    rank 0's one line and medssl's exit code (130, 2), not as torchrun's traceback and failure
    report. ``--devices`` stays in the processes' command line (``LOCAL_RANK`` keeps them from
    launching again), so the resume line rank 0 prints keeps the number of processes."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    arguments = ["--standalone", f"--nproc_per_node={devices}", "-m", "medssl", *sys.argv[1:]]
    threads = ""
    if "OMP_NUM_THREADS" not in os.environ:  # torchrun's default, said here instead of in its banner
        os.environ["OMP_NUM_THREADS"] = "1"
        threads = " (1 thread each; set OMP_NUM_THREADS for more)"
    console.print(f"Launching {devices} processes{threads}: torchrun {' '.join(arguments)}")
    # this process only hosts the agent, whose notices (each signal forwarded, each failed
    # rank) repeat what the ranks print; its own failures still raise
    logging.disable(logging.ERROR)
    try:
        run(parse_args(arguments))
    except SignalException:
        sys.exit(130)  # the processes saw the same Ctrl-C; rank 0 printed how to resume
    except ChildFailedError as failed:
        rank, failure = failed.get_first_failure()
        if failure.exitcode not in (2, 130):  # medssl's refusal or Ctrl-C: rank 0 printed its line
            Console(stderr=True).print(
                f"[bold red]error:[/] process {rank} of {devices} exited with code {failure.exitcode} "
                "(its messages are above)",
                highlight=False,
                soft_wrap=True,
            )
        sys.exit(failure.exitcode if failure.exitcode in (2, 130) else 1)
    sys.exit(0)


@app.command()
def pretrain(
    recipe: str = typer.Argument(..., help="Recipe YAML path or shipped recipe name (see `medssl recipes`)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="train.epochs=2")),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<recipe>-<time>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        metavar=FLAG,
        help="Continue from the run folder's last checkpoint (latest run of the recipe without --out).",
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        metavar=FLAG,
        help="Check the set-up in seconds: a handful of subjects, tiny volumes, one short epoch.",
    ),
    devices: int = typer.Option(
        1, "--devices", min=1, help="Processes to launch with torchrun (DistributedDataParallel)."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar=FLAG,
        help="Replace the run already in --out (its checkpoints, metrics, encoder, eval).",
    ),
) -> None:
    """Pre-train an encoder with a recipe; writes checkpoints, encoder.pt, metrics, plots and an evaluation."""
    from medssl.config import load_recipe

    resolved = load_recipe(recipe, overrides or [])  # a bad recipe is refused before any launch
    if devices > 1 and "LOCAL_RANK" not in os.environ:
        from medssl.methods import method_needs

        if not method_needs(resolved).distributed:
            raise RecipeError(f"method.name = {resolved.method.name!r} runs on one process: run it without --devices")
        _launch_torchrun(devices)
    if smoke:
        resolved = _smoke(resolved, overrides or [])
        if os.environ.get("RANK", "0") == "0":
            console.print("Smoke run: a handful of subjects, tiny volumes, one short epoch.")
    run_dir = _run_dir(resolved.name + ("-smoke" if smoke else ""), out, resume)
    quiet = os.environ.get("RANK", "0") != "0"
    if not quiet:  # other ranks would see the folder rank 0 is creating
        check_run_folder(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        checkpoint = run_dir / PRETRAIN_CHECKPOINT
        _refuse_nothing_to_resume(run_dir, out, f"checkpoint ({PRETRAIN_CHECKPOINT})", checkpoint.is_file())
    from medssl.pipeline import pretrain as run_pretrain

    try:
        with _quiet_sklearn(smoke):
            result = run_pretrain(resolved, run_dir, resume=resume, console=None if quiet else console)
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=(run_dir / PRETRAIN_CHECKPOINT).is_file()) from None
    if not quiet:
        console.print(
            f"Done: mean loss {result.first_loss:.4f} -> {result.last_loss:.4f} (first -> last epoch), "
            f"{_network_trained(result.run_dir)}. Run folder: {result.run_dir}"
        )


def _network_trained(run_dir: Path) -> str:
    """Which network the run trained, from its encoder.json (an imported encoder brings its own)."""
    spec = json.loads((run_dir / "encoder.json").read_text())
    widths = spec["kwargs"].get("block_inplanes")
    return f"encoder {spec['name']}" + (f" {'-'.join(map(str, widths))}" if widths else "")


@app.command()
def evaluate(
    source: Path = typer.Argument(..., help="A run folder (with recipe.yaml and encoder.pt) or an encoder.pt file."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="eval.folds=3")),
    cohort: Path | None = typer.Option(
        None, "--cohort", help="Cohort folder to evaluate on (default: the run's cohort)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Where to write metrics and plots (default <run>/eval)."),
) -> None:
    """OpenBHB-style evaluation: site-stratified and leave-site-out CV probes, the challenge score, plots."""
    from medssl.config import apply_overrides, load_recipe, recipe_from_dict
    from medssl.eval.run import evaluate_encoder
    from medssl.models import load_encoder
    from medssl.models.encoders import model_overrides
    from medssl.models.weights import input_note, resolve_normalization
    from medssl.train.setup import open_cohort, resolve_device

    _refuse_unread_evaluate_overrides(overrides or [])
    encoder_path = source / "encoder.pt" if source.is_dir() else source
    run_dir = encoder_path.parent
    encoder = load_encoder(encoder_path)
    recipe_path = run_dir / "recipe.yaml"
    pretraining = load_recipe(recipe_path) if recipe_path.is_file() else None
    raw = load_recipe(recipe_path).model_dump(mode="json") if pretraining is not None else {}
    # the encoder carries its network: the random-init baseline and recipe.yaml follow encoder.json
    architecture = model_overrides(encoder.spec)
    raw = apply_overrides(apply_overrides(raw, overrides or []), architecture)
    recipe = recipe_from_dict(raw, source=str(encoder_path), overrides=[*(overrides or []), *architecture])
    if cohort is not None:
        recipe.data.root = cohort
    recipe = resolve_normalization(recipe, encoder.spec, pretraining)
    note = input_note(encoder.spec, _first_volume_shape(recipe), recipe) if encoder.spec.input else None
    if note:
        console.print(note)
    target = out or run_dir / "eval"
    evaluate_encoder(
        encoder,
        open_cohort(recipe, console),
        recipe,
        target,
        device=resolve_device(recipe.train.device),
        console=console,
    )


def _first_volume_shape(recipe) -> tuple[int, ...]:
    """The (D, H, W) the encoder will see: the recipe's fixed shape, else the first volume's."""
    from medssl.finetune.encoder import input_shape
    from medssl.finetune.inputs import volume_dataset
    from medssl.train.setup import open_cohort

    fixed = input_shape(recipe)
    if fixed is not None:
        return fixed
    cohort = open_cohort(recipe, None)
    return tuple(volume_dataset(cohort.head(1), recipe, augment=False)[0]["volume"].shape[1:])


EVALUATE_READS_OF_TRAIN = ("train.seed", "train.device")  # the probes' folds and where features are computed


def _refuse_unread_evaluate_overrides(overrides: list[str]) -> None:
    """An override evaluation would accept and never read (the encoder is trained already) is refused."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        section = key.split(".", 1)[0]
        if section in ("method", "model", "finetune") or (section == "train" and key not in EVALUATE_READS_OF_TRAIN):
            raise RecipeError(
                f"command-line override {item}: evaluation does not read {key} (the encoder is trained already); "
                f"it reads data.*, views.*, eval.* and {', '.join(EVALUATE_READS_OF_TRAIN)}"
            )


# train.* keys fine-tuning does not read, and the finetune.* key that does the job (None: none does)
FINETUNE_COUNTERPARTS = {
    "train.epochs": "finetune.epochs",
    "train.batch_size": "finetune.batch_size",
    "train.max_steps_per_epoch": "finetune.max_steps_per_epoch",
    "train.lr": "finetune.lr",
    "train.seed": "finetune.seeds",
    "train.steps": "finetune.epochs",
    "train.scheduler": None,
    "train.warmup_epochs": None,
    "train.step_gamma": None,
    "train.accumulate": None,
    "train.compile": None,
    "train.channels_last": None,
}


def _refuse_unread_finetune_overrides(overrides: list[str]) -> None:
    """A command-line override fine-tuning would accept and never read is refused, naming what does the job."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key.startswith("method."):
            raise RecipeError(
                f"command-line override {item}: fine-tuning reads no method.* key "
                "(the encoder comes from --encoder); its settings are finetune.*"
            )
        for unread, counterpart in FINETUNE_COUNTERPARTS.items():
            if key == unread or (unread.endswith(".") and key.startswith(unread)):
                instead = f"; use {counterpart}" if counterpart else ""
                raise RecipeError(f"command-line override {item}: fine-tuning does not read {key}{instead}")


@app.command()
def finetune(
    recipe: str = typer.Argument(..., help="Fine-tuning recipe YAML path or shipped name (e.g. finetune_diagnosis)."),
    overrides: list[str] | None = typer.Argument(None, help=OVERRIDES_HELP.format(example="finetune.epochs=20")),
    encoder: str = typer.Option(
        ...,
        "--encoder",
        help="Pre-trained encoder.pt, or a run folder holding it; 'none' trains from scratch (the baseline).",
    ),
    mode: FinetuneMode | None = typer.Option(
        None, "--mode", help="Override finetune.mode: linear (frozen encoder), full, lower_lr."
    ),
    out: Path | None = typer.Option(None, "--out", help="Run folder (default runs/<recipe>-<time>)."),
    resume: bool = typer.Option(
        False,
        "--resume",
        metavar=FLAG,
        help="Continue the fine-tuning in --out: finished seeds are kept, an interrupted one continues from its checkpoint.",
    ),
    smoke: bool = typer.Option(
        False,
        "--smoke",
        metavar=FLAG,
        help="Check the set-up in seconds: a handful of subjects, tiny volumes, one short epoch.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", metavar=FLAG, help="Replace the fine-tuning results already in --out."
    ),
    train_sizes: str | None = typer.Option(
        None,
        "--train-sizes",
        help="Label efficiency: fine-tune the encoder and a from-scratch network on this many labelled subjects each, e.g. 20,50,100,all; rerun to resume.",
    ),
) -> None:
    """Fine-tune an encoder on a labelled cohort (e.g. patients vs. controls); internal and external test, mean ± std over seeds."""
    from medssl.config import load_recipe
    from medssl.finetune.protocol import finetune_encoder

    overrides = [*(overrides or []), *([f"finetune.mode={mode.value}"] if mode else [])]
    _refuse_unread_finetune_overrides(overrides)
    resolved = load_recipe(recipe, overrides)
    if smoke:
        resolved = _smoke_finetune(resolved, overrides, encoder)
        console.print("Smoke run: a handful of subjects, tiny volumes, one short epoch.")
    if resume and out is None:
        raise RecipeError("--resume needs --out: the folder of the fine-tuning to continue")
    run_dir = _run_dir(resolved.name + ("-smoke" if smoke else ""), out, resume=False)
    if train_sizes is not None:
        _label_efficiency(resolved, encoder, train_sizes, run_dir, resume, overwrite, smoke)
        return
    check_run_folder(run_dir, resume=resume, overwrite=overwrite)
    if resume:
        _refuse_nothing_to_resume(run_dir, out, "fine-tuning run", bool(run_artefacts(run_dir)))
    try:
        with _quiet_sklearn(smoke):
            finetune_encoder(
                resolved, None if encoder.lower() == "none" else encoder, run_dir, console=console, resume=resume
            )
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=bool(run_artefacts(run_dir))) from None


def _label_efficiency(
    recipe, encoder: str, train_sizes: str, run_dir: Path, resume: bool, overwrite: bool, smoke: bool
) -> None:
    """``finetune --train-sizes``: a rerun continues the curve, ``--overwrite`` starts it again."""
    from medssl.finetune.label_efficiency import label_efficiency, label_efficiency_table, parse_train_sizes

    if encoder.lower() == "none":
        raise RecipeError(
            "--train-sizes compares a pre-trained encoder with training from scratch: give --encoder PATH"
        )
    sizes = parse_train_sizes(train_sizes)
    check_run_folder(run_dir, resume=resume or not overwrite, overwrite=overwrite)
    if resume:
        _refuse_nothing_to_resume(run_dir, run_dir, "label-efficiency run", bool(run_artefacts(run_dir)))
    try:
        with _quiet_sklearn(smoke):
            curve = label_efficiency(recipe, encoder, sizes, run_dir, console=console)
    except KeyboardInterrupt:
        raise Interrupted(run_dir, resumable=bool(run_artefacts(run_dir))) from None
    console.print(label_efficiency_table(curve))
    console.print(
        f"Label-efficiency curve written to {run_dir / 'label_efficiency.png'} (every metric: label_efficiency.csv)"
    )


@app.command()
def score(
    predictions: Path = typer.Argument(..., help="CSV/TSV with participant_id, split, site, age, age_pred, site_pred."),
    json_out: str | None = typer.Option(
        None, "--json", metavar="FILE", help="Also write the metrics to this JSON file (not a folder)."
    ),
    n_sites: int | None = typer.Option(
        None, "--n-sites", help="Training sites for ramp_combined (default: distinct sites of the train rows)."
    ),
    id_col: str | None = typer.Option(
        None, help="Column of subject ids, one row each (default: participant_id, when the table has it)."
    ),
    split_col: str = typer.Option("split", help="Column of splits (train, internal_test, external_test)."),
    site_col: str = typer.Option("site", help="Column of true sites."),
    age_col: str = typer.Option("age", help="Column of true ages."),
    age_pred_col: str = typer.Option("age_pred", help="Column of predicted ages."),
    site_pred_col: str = typer.Option(
        "site_pred", help="Column of predicted sites (or prefix of per-site probability columns)."
    ),
) -> None:
    """Challenge metrics (MAE internal/external, site BAcc, L_c, RAMP combined) from a CSV of predictions."""
    from medssl.eval.score import (
        MIN_SUBJECTS_PER_SITE,
        SITE_SCORES,
        UnseenSiteWarning,
        read_predictions,
        score_predictions,
        too_few_per_site,
    )

    json_path = _output_file(json_out)  # refused before the table is scored and printed
    columns = dict(
        split_col=split_col,
        site_col=site_col,
        age_col=age_col,
        age_pred_col=age_pred_col,
        site_pred_col=site_pred_col,
    )
    table = read_predictions(predictions, id_col=id_col, **columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UnseenSiteWarning)
        metrics = score_predictions(table, id_col=id_col, n_sites=n_sites, **columns)
    for warning in caught:
        console.print(f"[yellow]warning:[/] {warning.message}", highlight=False)
    view = Table(title=f"Challenge metrics: {predictions.name}")
    view.add_column("metric")
    view.add_column("value", justify="right")
    fewest = too_few_per_site(metrics)
    for key, value in metrics.items():
        if fewest is not None and key in SITE_SCORES:  # a perfect-looking 0 of a site probe at chance
            view.add_row(key, f"n/a (too few subjects: {fewest} per site)")
        else:
            view.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    console.print(view)
    if fewest is not None:
        console.print(
            f"n/a: {', '.join(SITE_SCORES)} need at least {MIN_SUBJECTS_PER_SITE} internal-test subjects per site "
            "(--json writes their values)",
            highlight=False,
        )
    if json_path is not None:
        from medssl.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(metrics, indent=2, default=float))
        console.print(f"Written {json_path}")


def _output_file(name: str | None, example: str = "scores.json") -> Path | None:
    """The path of an output file option, refused before any work when it cannot be a file: an
    existing folder, a name ending in a slash (a folder, as on every shell), or a path through a file."""
    if name is None:
        return None
    from medssl.errors import OutputError

    path = Path(name)
    example = f"give a file name, e.g. {path / example}"
    if path.is_dir():
        raise OutputError(f"cannot write {name}: it is a folder; {example}")
    if name.endswith(("/", os.sep)):
        raise OutputError(f"cannot write {name}: a name ending in a slash is a folder; {example}")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise OutputError(f"cannot write {name}: {blocking} is a file, not a folder")
    return path


def _comma_list(text: str, option: str) -> list[str]:
    from medssl.errors import BenchmarkError

    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise BenchmarkError(f"{option} {text!r}: expected a comma-separated list without empty items, e.g. a,b,c")
    return items


def _seed_list(text: str) -> list[int]:
    from medssl.errors import BenchmarkError

    try:
        return [int(seed) for seed in _comma_list(text, "--seeds")]
    except ValueError:
        raise BenchmarkError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


@app.command()
def benchmark(
    overrides: list[str] | None = typer.Argument(
        None, help=OVERRIDES_HELP.format(example="train.epochs=2") + " Applied to every run."
    ),
    recipes: str | None = typer.Option(
        None,
        "--recipes",
        help="Comma-separated recipes (default: every shipped recipe but the finetune_* ones, supervised_age and the control included).",
    ),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated seeds: one run per recipe and seed."),
    out: Path = typer.Option(
        Path("benchmark"), "--out", help="Benchmark folder; rerun the same command to continue a stopped benchmark."
    ),
    jobs: int = typer.Option(1, "--jobs", min=1, help="Runs at once, each with CPUs // jobs threads."),
    devices: str | None = typer.Option(
        None, "--devices", help="Comma-separated GPU ids handed to the runs in turn, e.g. 0,1."
    ),
    smoke: bool = typer.Option(False, "--smoke", metavar=FLAG, help="Smoke runs (seconds each), to check the set-up."),
) -> None:
    """Pre-train and evaluate recipes x seeds on one cohort; leaderboard with baselines, mean ± sd and paired CIs."""
    from medssl.benchmark import run_benchmark

    recipe_names = _comma_list(recipes, "--recipes") if recipes else None
    device_ids = _comma_list(devices, "--devices") if devices else None
    try:
        result = run_benchmark(
            recipe_names,
            _seed_list(seeds),
            out,
            overrides or [],
            jobs=jobs,
            devices=device_ids,
            smoke=smoke,
            console=console,
        )
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted: rerun the same command to continue where it stopped")
        raise typer.Exit(130) from None
    if result.failed:
        raise typer.Exit(1)


@app.command()
def leaderboard(
    bench_dir: Path = typer.Argument(..., help="Benchmark folder (the --out of medssl benchmark)."),
    reference: list[str] | None = typer.Option(
        None, "--reference", help="Also compare every method with this row (repeatable), e.g. control_yaware_shuffled."
    ),
) -> None:
    """Rebuild a benchmark's leaderboard.{md,json,csv,png} from its finished runs."""
    from rich.markdown import Markdown

    from medssl.eval.leaderboard import REFERENCES, write_leaderboard

    paths = write_leaderboard(bench_dir, references=(*REFERENCES, *(reference or [])))
    console.print(Markdown(paths["md"].read_text()))
    console.print(f"Written {', '.join(str(path) for path in paths.values())}")


@app.command()
def recipes(
    fields: bool = typer.Option(
        False, "--fields", metavar=FLAG, help="List every recipe field with its default and meaning."
    ),
) -> None:
    """List the shipped recipes (or, with --fields, every recipe key)."""
    from medssl.config import shipped_recipes

    if fields:
        _print_fields()
        return
    view = Table(
        title="Shipped recipes: medssl pretrain <name>; finetune_*: medssl finetune <name> --encoder RUN",
        title_justify="left",
    )
    view.add_column("name", style="bold", no_wrap=True)
    view.add_column("description")
    view.add_column("network trained: with data.root / on the embedded cohort")
    for name, description in shipped_recipes():
        view.add_row(name, description, _networks_trained(name))
    console.print(view)


def _networks_trained(name: str) -> str:
    """The network a recipe trains on real data (profile paper) and on the embedded cohort (profile embedded)."""
    from medssl.config import load_recipe

    def network(model) -> str:
        return model.encoder + (f" {'-'.join(map(str, model.widths))}" if model.widths else "")

    paper, embedded = load_recipe(name, ["profile=paper"]), load_recipe(name, ["profile=embedded"])
    trained = f"{network(paper.model)} / {network(embedded.model)}"
    # a fine-tuned encoder brings its own network (encoder.json); the model section is for --encoder none
    return f"the encoder's; from scratch: {trained}" if name.startswith("finetune") else trained


def _fields_table(title: str) -> Table:
    view = Table(title=title)
    view.add_column("key", no_wrap=True)  # a key path is what a user copies: never cut or folded
    view.add_column("default", overflow="fold")
    view.add_column("description", ratio=1, overflow="fold")
    return view


def _print_fields() -> None:
    """Every recipe key; the method section as one block per method, since its keys depend on method.name."""
    from medssl.config import (
        DEFAULT_METHOD,
        METHOD_SECTIONS,
        AdversarialDebias,
        EmbeddingSection,
        FairKLDebias,
        field_docs,
    )

    view = _fields_table("Recipe fields")
    for key, default, description in field_docs():
        if not key.startswith("method ("):
            view.add_row(key, default, description)
    console.print(view)
    view = _fields_table(f"The method section: method.name (default {DEFAULT_METHOD}), then that method's own keys")
    for name, section in METHOD_SECTIONS.items():
        view.add_section()
        view.add_row(f"method.name: {name}", "", (section.__doc__ or "").splitlines()[0], style="bold")
        for key, default, description in field_docs(section):
            if key != "name":
                view.add_row(f"  {key}", default, description)
    console.print(view)
    takers = [name for name, section in METHOD_SECTIONS.items() if issubclass(section, EmbeddingSection)]
    view = _fields_table(f"The debiasing term method.debias, of {', '.join(takers)}")
    for term in (FairKLDebias, AdversarialDebias):
        view.add_section()
        view.add_row(
            f"method.debias.name: {term.model_fields['name'].default}",
            "",
            (term.__doc__ or "").split("\n\n")[0].replace("\n    ", " "),
            style="bold",
        )
        for key, default, description in field_docs(term):
            if key != "name":
                view.add_row(f"  method.debias.{key}", default, description)
    console.print(view)


@data_app.command("synth")
def data_synth(
    out: Path = typer.Argument(..., help="Folder to write the cohort into."),
    subjects: int = typer.Option(640, min=4, help="Number of subjects."),
    sites: int = typer.Option(24, min=2, help="Number of sites."),
    external_sites: int | None = typer.Option(
        None, min=0, help="Sites held out as the external test set (default sites / 6, at least 1, at most sites - 1)."
    ),
    shape: int = typer.Option(32, min=8, max=256, help="Edge of the cubic volumes in voxels."),
    diagnosis: DiagnosisModel | None = typer.Option(
        None,
        "--diagnosis",
        metavar="MODEL",
        help="Add a patient/control diagnosis; patients differ by MODEL: focal (hippocampal grey-matter loss), ageing (a brain-age gap) or ad-like (both).",
    ),
    seed: int = typer.Option(0, help="Random seed."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar=FLAG,
        help="Replace the cohort already in OUT (its table and volumes; other files stay).",
    ),
) -> None:
    """Write a synthetic multi-site brain cohort (NIfTI volumes + participants.tsv)."""
    from medssl.data.synthetic import check_sizes, synthesize_cohort

    if external_sites is None:
        external_sites = min(max(1, sites // 6), sites - 1)  # at least one site must stay internal
    check_sizes(subjects, sites, external_sites, shape, named=lambda name, value: f"--{name.replace('_', '-')} {value}")
    remove_artefacts(check_cohort_folder(out, SYNTHETIC_COHORT_ARTEFACTS, overwrite=overwrite))
    path = synthesize_cohort(
        out,
        subjects=subjects,
        sites=sites,
        external_sites=external_sites,
        shape=shape,
        diagnosis=diagnosis is not None,
        seed=seed,
        progress=True,
        diagnosis_model=diagnosis.value if diagnosis is not None else "focal",
    )
    console.print(f"Wrote {subjects} subjects from {sites} sites to {path}")


@data_app.command("inspect")
def data_inspect(
    source: str = typer.Argument(
        "yaware_age",
        help="A cohort folder, or a recipe whose cohort to inspect (default: the embedded cohort of yaware_age).",
    ),
    overrides: list[str] | None = typer.Argument(
        None, help=OVERRIDES_HELP.format(example="data.synthetic.subjects=320")
    ),
    json_out: str | None = typer.Option(
        None, "--json", metavar="FILE", help="Also write the figures to this JSON file (not a folder)."
    ),
) -> None:
    """Method-independent figures of a cohort: scanner ranges, trivial probes, the diagnosis oracle."""
    from medssl.config import load_recipe
    from medssl.data.cohort import load_cohort
    from medssl.eval.cohort_figures import inspect_cohort
    from medssl.train.setup import open_cohort

    json_path = _output_file(json_out, example="figures.json")
    if Path(source).is_dir():
        recipe = load_recipe("yaware_age", overrides or [])
        cohort = load_cohort(
            Path(source), openbhb_modality=recipe.data.openbhb_modality, openbhb_masks=recipe.data.openbhb_masks
        )
    elif "/" in source and not source.endswith((".yaml", ".yml")):
        raise CohortError(f"{source}: no such cohort folder (give a cohort folder or a recipe)")
    else:
        recipe = load_recipe(source, overrides or [])
        cohort = open_cohort(recipe, console)
    with _quiet_sklearn():  # its note under the figures
        figures = inspect_cohort(cohort, recipe, console=console)
        _print_cohort_figures(figures)
    if json_path is not None:
        from medssl.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(figures, indent=2) + "\n")  # a killed write leaves no half file
        console.print(f"Figures written to {json_path}")


def _print_cohort_figures(figures: dict) -> None:
    from medssl.eval.score import MIN_SUBJECTS_PER_SITE, SITE_SCORES

    splits = "; ".join(
        f"{split} {n['subjects']} ({n['sites']} site{'s' if n['sites'] != 1 else ''})"
        for split, n in figures["splits"].items()
    )
    subjects, sites = figures["subjects"], figures["sites"]
    console.print(
        f"[bold]{figures['cohort']}[/]: {subjects} subject{'s' if subjects != 1 else ''}, "
        f"{sites} site{'s' if sites != 1 else ''}: {splits}"
    )
    ranges = figures["scanner_ranges"]
    if ranges is not None:
        view = Table(
            title=f"Scanner parameters: {ranges['training_sites']} training sites vs {ranges['external_sites']} external",
            title_justify="left",
        )
        for column in ("parameter", "training min", "training max", "external sites", "inside"):
            view.add_column(column)
        for row in ranges["parameters"]:
            view.add_row(
                row["parameter"],
                f"{row['train_min']:.3g}",
                f"{row['train_max']:.3g}",
                ", ".join(f"{value:.3g}" for value in row["external"]),
                "yes" if row["inside"] else "[red]no[/]",
            )
        console.print(view)
    if figures["probes_skipped"]:
        console.print(
            f"Trivial probes skipped ({figures['probes_skipped']}): the challenge protocol "
            "needs train, internal_test and external_test rows in the 'split' column"
        )
    probes = Table(title="Trivial probes, challenge protocol (lower is better)", title_justify="left")
    for column in ("probe", "age MAE internal", "age MAE external", "site BAcc", "chance BAcc", "L_c"):
        probes.add_column(column)
    fewest = min(
        (scores.get("min_internal_per_site", MIN_SUBJECTS_PER_SITE) for scores in figures["probes"].values()),
        default=MIN_SUBJECTS_PER_SITE,
    )
    for name, scores in figures["probes"].items():
        probes.add_row(
            name.replace("_", " "),
            *(
                "n/a" if key in SITE_SCORES and fewest < MIN_SUBJECTS_PER_SITE else f"{scores[key]:.3f}"
                for key in ("mae_internal", "mae_external", "bacc_site", "chance_bacc", "challenge_score")
            ),
        )
    if figures["probes"]:
        console.print(probes)
        if fewest < MIN_SUBJECTS_PER_SITE:
            console.print(
                f"n/a (too few subjects: {fewest} per site): site BAcc and L_c need at least {MIN_SUBJECTS_PER_SITE} "
                "internal-test subjects per site (the JSON keeps the numbers)."
            )
    oracle = figures["diagnosis_oracle"]
    if oracle is not None:
        components = oracle["components"]
        console.print(
            f"Diagnosis oracle ({oracle['model']} model; effect map read-outs + age, {oracle['folds']}-fold "
            f"site-stratified CV): ROC AUC {oracle['roc_auc']:.3f}; by component: focal loss alone "
            f"{components['focal']:.3f}, brain-age gap alone {components['gap']:.3f}, both {components['both']:.3f}"
        )


# the recipe keys data cache reads: the rest would be accepted and do nothing
CACHE_READS = ("data.volume_shape", "data.openbhb_modality", "data.openbhb_masks", "data.cache_dtype")


@data_app.command("cache")
def data_cache(
    cohort: Path = typer.Argument(
        ..., help="Cohort folder to cache (NIfTI + participants table, or an OpenBHB download)."
    ),
    out: Path = typer.Argument(..., help="Folder to write participants.tsv + volumes.npy into (use it as data.root)."),
    overrides: list[str] | None = typer.Argument(
        None, help=f"Recipe overrides of {', '.join(CACHE_READS)}, e.g. data.openbhb_modality=vbm."
    ),
    shape: str | None = typer.Option(
        None,
        "--shape",
        help="Resample to D,H,W (or one edge for a cube), e.g. 64 or 64,76,64; default: the recipe's data.volume_shape, else the stored shape.",
    ),
    recipe: str | None = typer.Option(
        None, "--recipe", help="Take data.volume_shape, data.openbhb_modality and data.cache_dtype from this recipe."
    ),
    dtype: CacheDtype | None = typer.Option(
        None,
        "--dtype",
        help="Stored type: float32, or float16 for half the disk and page cache; default: the recipe's data.cache_dtype (float32).",
    ),
    workers: int = typer.Option(0, "--workers", min=0, help="Processes reading and resampling volumes in parallel."),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        metavar=FLAG,
        help="Replace the cache already in OUT (its table and volumes; other files stay).",
    ),
) -> None:
    """Preprocess a cohort once into a memory-mapped .npy array (resampled) with its participants table."""
    from medssl.data.cache import cache_cohort, cache_folder
    from medssl.data.cohort import load_cohort
    from medssl.progress import progress_bar

    data = _cache_settings(cohort, recipe, overrides or [])
    cache_folder(cohort, out)  # refuses the source's own folder, before --overwrite could touch it
    previous_cache = check_cohort_folder(out, CACHE_ARTEFACTS, overwrite=overwrite)
    volume_shape = parse_shape(shape) if shape else data.volume_shape
    stored = dtype.value if dtype else data.cache_dtype
    source = load_cohort(cohort, openbhb_modality=data.openbhb_modality, openbhb_masks=data.openbhb_masks)
    remove_artefacts(previous_cache)  # only once the source and the options are known to be good
    block = f"{data.openbhb_modality} " if _is_openbhb(cohort) else ""  # the kit's and OpenBHB's rows hold two
    with progress_bar(console) as progress:
        volumes = f"{len(source)} {block}volume{'s' if len(source) != 1 else ''}"
        task = progress.add_task(f"caching {volumes}", total=len(source))
        cache_cohort(
            source,
            out,
            volume_shape=volume_shape,
            dtype=stored,
            num_workers=workers,
            on_volume=lambda done, total: progress.update(task, completed=done),
        )
    shape_text = "x".join(map(str, volume_shape)) if volume_shape else "stored shape"
    console.print(f"Cached {volumes} ({shape_text}, {stored}) in {out}: set data.root: {out}")


def _cache_settings(cohort: Path, recipe: str | None, overrides: list[str]):
    """The data section ``data cache`` reads: --recipe's (else the defaults), then the overrides;
    an override it would not read is refused, as the modality of a cohort that has one only."""
    from medssl.config import apply_overrides, load_recipe, recipe_from_dict

    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if "=" in item and key not in CACHE_READS:
            import difflib

            leaves = [read.removeprefix("data.") for read in CACHE_READS]
            close = difflib.get_close_matches(key.removeprefix("data."), leaves, n=1) if key.startswith("data.") else []
            instead = f"did you mean data.{close[0]}?" if close else f"it reads {', '.join(CACHE_READS)}"
            raise RecipeError(f"command-line override {item}: data cache does not read {key}; {instead}")
    if recipe:
        return load_recipe(recipe, overrides).data
    raw = apply_overrides({"name": "data-cache"}, overrides)
    data = recipe_from_dict(raw, source="data cache", overrides=overrides).data
    chosen = [item for item in overrides if item.startswith(("data.openbhb_modality", "data.openbhb_masks"))]
    if chosen and cohort.is_dir() and not _is_openbhb(cohort):
        raise RecipeError(
            f"command-line override {chosen[0]}: {cohort} is neither an OpenBHB download nor the challenge kit, "
            "whose volume blocks it chooses"
        )
    return data


def _is_openbhb(cohort: Path) -> bool:
    """An OpenBHB download or the challenge kit: folders whose rows hold a quasiraw and a vbm volume."""
    from medssl.data.openbhb import is_openbhb_folder
    from medssl.data.openbhb_kit import is_kit_folder

    return is_kit_folder(cohort) or is_openbhb_folder(cohort)


@weights_app.command("import")
def weights_import(
    file: Path = typer.Argument(..., help="The published checkpoint (.pth, .pt, .ckpt, .pth.tar)."),
    layout: str = typer.Option(..., "--layout", help="How the file was saved: see medssl weights layouts."),
    out: Path = typer.Option(..., "--out", help="New (or empty) folder for encoder.pt + encoder.json."),
    encoder: str | None = typer.Option(
        None, "--encoder", help="--layout state-dict: the network medssl builds (resnet18, densenet121, ...)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, help="--layout state-dict: model overrides, e.g. model.widths=[16,32,64,128] model.bias_downsample=false."
    ),
    ignore: list[str] | None = typer.Option(
        None, "--ignore", help="--layout state-dict: drop the file's keys starting with this (a head), e.g. head."
    ),
) -> None:
    """Import a published encoder's checkpoint as encoder.pt + encoder.json, as medssl pretrain writes them."""
    from medssl.models.weights import STATE_DICT, import_weights

    spec = None
    if layout == STATE_DICT:
        spec = _state_dict_spec(encoder, overrides or [])
    elif encoder is not None or overrides or ignore:
        raise RecipeError(
            f"--layout {layout} fixes its network: --encoder, model overrides and --ignore are for --layout {STATE_DICT}"
        )
    imported = import_weights(file, layout, out, spec=spec, ignore=tuple(ignore or ()))
    expects = imported.spec.input
    console.print(
        f"Imported {file.name} ({layout}): {imported.spec.name}, {imported.feature_dim}-d features, "
        f"into {out}/encoder.pt + encoder.json"
    )
    if expects:
        shape = "x".join(map(str, expects["shape"]))
        console.print(
            f"It expects {expects['modality']}, {shape}, normalize {expects['normalize']} ({expects['note']})."
        )
    console.print(f"Fine-tune it: medssl finetune finetune_diagnosis --encoder {out}")


def _state_dict_spec(encoder: str | None, overrides: list[str]):
    """The network of ``--layout state-dict``: ``--encoder`` and ``model.*`` overrides, as a recipe builds it."""
    from medssl.config import apply_overrides, recipe_from_dict
    from medssl.methods import architecture_options
    from medssl.models import encoder_spec

    if encoder is None:
        raise RecipeError("--layout state-dict needs --encoder NAME (resnet18, densenet121, ...)")
    unread = [item for item in overrides if not item.startswith("model.")]
    if unread:
        raise RecipeError(f"{unread[0]}: weights import reads only model.* overrides")
    raw = apply_overrides({"model": {"encoder": encoder}}, overrides)
    model = recipe_from_dict(raw, source="--encoder", overrides=[f"model.encoder={encoder}", *overrides]).model
    return encoder_spec(
        model.encoder, model.in_channels, model.conv1_stride, model.widths, options=architecture_options(model)
    )


@weights_app.command("layouts")
def weights_layouts(
    as_json: bool = typer.Option(False, "--json", metavar=FLAG, help="Print the layouts as JSON."),
) -> None:
    """The checkpoint layouts medssl weights import reads: source, network, representation, input, licence."""
    from medssl.models.weights import layout_rows

    rows = layout_rows()
    if as_json:
        console.print_json(json.dumps(rows))
        return
    for row in rows:
        view = Table(title=row["layout"], title_justify="left", show_header=False)
        view.add_column("field", style="bold", no_wrap=True)
        view.add_column("value", overflow="fold")
        for key, value in row.items():
            if key != "layout" and value:
                view.add_row(key, value)
        console.print(view)


def parse_shape(shape: str) -> list[int]:
    """``--shape``: ``64,76,64`` (or ``64x76x64``) or one edge for a cube."""
    try:
        edges = [int(edge) for edge in shape.replace("x", ",").split(",")]
    except ValueError:
        edges = []
    if len(edges) not in (1, 3) or min(edges) < 1:
        raise RecipeError(f"--shape {shape!r}: expected D,H,W or one edge, e.g. 64,76,64 or 64")
    return edges * 3 if len(edges) == 1 else edges


class Interrupted(Exception):
    """Ctrl-C during a pre-training or fine-tuning run: carries the folder to resume, and whether
    it holds anything to resume (a pre-training stopped in its first epoch has no checkpoint)."""

    def __init__(self, run_dir: Path, resumable: bool = True):
        super().__init__(str(run_dir))
        self.run_dir = run_dir
        self.resumable = resumable


def resume_command(argv: list[str], run_dir: Path, option: str = "--resume") -> str:
    """The command line that was run, made to resume ``run_dir``: the same recipe, overrides and
    options (a resume refuses other settings), with ``--resume --out run_dir`` instead of
    ``--overwrite`` and the old ``--out``; ``option="--overwrite"`` starts it again instead."""
    kept, arguments = ["medssl"], iter(argv[1:])
    for argument in arguments:
        if argument == "--out":
            next(arguments, None)
        elif argument not in ("--resume", "--overwrite") and not argument.startswith("--out="):
            kept.append(argument)
    return shlex.join([*kept, option, "--out", str(run_dir)])


def _error_line(error: MedsslError) -> str:
    """The error's own line, also when a DataLoader worker wrapped it in its traceback."""
    message = str(error).strip()
    if message.startswith("Caught ") and "Original Traceback" in message:
        message = message.splitlines()[-1].split(": ", 1)[-1]
    return message


class OutputWithoutReader:
    """``sys.stdout`` or ``sys.stderr`` that outlives its reader (``medssl pretrain ... | head``).

    When the pipe's reader goes away, the output from then on goes to /dev/null and the command
    carries on: a training run is worth more than its console, and its notes are in the run folder.
    ``notice`` (for stdout) says so once, on stderr, which may be the same closed pipe (``2>&1``).
    """

    def __init__(self, stream, notice: Console | None = None) -> None:
        self._stream = stream
        self._notice = notice
        self.reader_gone = False

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            self._drop_output()
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._drop_output()

    def _drop_output(self) -> None:
        if self.reader_gone:
            return
        self.reader_gone = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, self._stream.fileno())  # buffered text and later writes land in /dev/null
        os.close(devnull)
        if self._notice is not None:
            self._notice.print(
                "note: standard output was closed (broken pipe); medssl carries on without printing to it."
                " Ctrl-C stops it (a training run resumes with --resume).",
                highlight=False,
                soft_wrap=True,
            )

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def _guard_output(stderr: Console) -> None:
    """Install OutputWithoutReader over a real stdout and stderr (not over pytest's or CliRunner's capture)."""
    for name, notice in (("stderr", None), ("stdout", stderr)):
        stream = getattr(sys, name)
        try:
            stream.fileno()
        except (AttributeError, OSError, ValueError):
            continue
        setattr(sys, name, OutputWithoutReader(stream, notice))


def main() -> None:
    # Not standalone: typer would turn Ctrl-C into a silent exit 130 before medssl's handler runs.
    stderr = Console(stderr=True)
    _guard_output(stderr)
    try:
        code = app(standalone_mode=False)
    except MedsslError as error:
        if os.environ.get("RANK", "0") == "0":  # under torchrun every rank reads the same input: one line is enough
            stderr.print(f"[bold red]error:[/] {_error_line(error)}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except Interrupted as interrupted:
        if os.environ.get("RANK", "0") != "0":  # every rank was interrupted: one line is enough
            sys.exit(130)
        line = (
            f"interrupted: continue from the last checkpoint with: {resume_command(sys.argv, interrupted.run_dir)}"
            if interrupted.resumable
            else "interrupted before the first checkpoint: start again with: "
            + resume_command(sys.argv, interrupted.run_dir, option="--overwrite")
        )
        stderr.print(
            line,
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
        sys.exit(130)
    except OSError as error:  # a write that no medssl code expected to fail: still one line naming the path
        from medssl.files import output_error

        reported = output_error(error, error.filename or "")
        if reported is None:
            raise
        stderr.print(f"[bold red]error:[/] {reported}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.TyperException as error:  # usage errors, shown as typer shows them
        from typer import rich_utils

        rich_utils.rich_format_error(error)  # type: ignore[arg-type]  # usage errors are click exceptions
        sys.exit(error.exit_code)
    if code == 130:  # typer's answer to a Ctrl-C outside a training run
        stderr.print("interrupted", highlight=False)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
