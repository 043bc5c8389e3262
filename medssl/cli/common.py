"""What several commands share: the run folder, --resume and --smoke, scikit-learn's warnings, output files."""

from __future__ import annotations

import os
import re
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from medssl import cli
from medssl.errors import MedsslError, RecipeError
from medssl.run_folder import run_artefacts


def choose_run_dir(name: str, out: Path | None, resume: bool) -> Path:
    """--out, else with --resume the latest run of ``name`` in runs/ that has a checkpoint, else a new runs/<name>-<time>."""
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


def refuse_nothing_to_resume(run_dir: Path, out: Path | None, state: str, has_state: bool) -> None:
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


def apply_smoke(recipe, overrides: list[str]):
    """The recipe shrunk by ``--smoke``, then the command line's overrides again: they win over the smoke budget."""
    from medssl.recipe import smoke_recipe, with_overrides

    smoke = smoke_recipe(recipe)
    return with_overrides(smoke, overrides, source="--smoke") if overrides else smoke


@contextmanager
def quiet_sklearn(smoke: bool = False) -> Iterator[None]:
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
                cli.console.print(library_warnings_note(counts), highlight=False)


def library_warnings_note(counts: Counter[str]) -> str:
    """One line: how many scikit-learn warnings were held back, the most frequent first."""
    total = sum(counts.values())
    (first, n_first), *others = counts.most_common()
    also = f"; {len(others)} other kind{'s' if len(others) != 1 else ''}" if others else ""
    return (
        f"note: {total} scikit-learn warning{'s' if total != 1 else ''} not shown (usually a fold or split "
        f"with too few subjects for a metric): {first} x{n_first}{also}"
    )


def output_file(name: str | None, example: str = "scores.json") -> Path | None:
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
