"""``medssl data``: synthetic cohorts (``synth``), a cohort's figures (``inspect``), memory-mapped caches (``cache``)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path

import typer

from medssl import cli
from medssl.cli import FLAG, OVERRIDES_HELP, data_app
from medssl.cli.common import output_file, quiet_sklearn
from medssl.cli.tables import print_cohort_figures
from medssl.config.sections import CACHE_READS, refuse_unread_cache_overrides
from medssl.errors import CohortError, RecipeError
from medssl.run_folder import CACHE_ARTEFACTS, SYNTHETIC_COHORT_ARTEFACTS, check_cohort_folder, remove_artefacts


class CacheDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


class DiagnosisModel(str, Enum):
    """The synthetic generator's disorder models (medssl.data.synthetic.DISORDER_MODELS)."""

    focal = "focal"
    ageing = "ageing"
    ad_like = "ad-like"


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
    cli.console.print(f"Wrote {subjects} subjects from {sites} sites to {path}")


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
    scratch: bool = typer.Option(
        False,
        "--scratch",
        metavar=FLAG,
        help="Also fine-tune the recipe's network from scratch on the whole training split (its finetune section, seeds and budget) and print its test ROC AUC.",
    ),
) -> None:
    """Method-independent figures of a cohort: scanner ranges, trivial probes, the diagnosis oracle."""
    from medssl.data.cohort import load_cohort
    from medssl.eval.cohort_figures import inspect_cohort
    from medssl.recipe import load_recipe
    from medssl.train.setup import open_cohort

    json_path = output_file(json_out, example="figures.json")
    if Path(source).is_dir():
        recipe = load_recipe("yaware_age", overrides or [])
        cohort = load_cohort(
            Path(source), openbhb_modality=recipe.data.openbhb_modality, openbhb_masks=recipe.data.openbhb_masks
        )
    elif "/" in source and not source.endswith((".yaml", ".yml")):
        raise CohortError(f"{source}: no such cohort folder (give a cohort folder or a recipe)")
    else:
        recipe = load_recipe(source, overrides or [])
        cohort = open_cohort(recipe, cli.console)
    with quiet_sklearn():  # its note under the figures
        figures = inspect_cohort(cohort, recipe, console=cli.console)
        print_cohort_figures(figures, cli.console)
        if scratch:
            if Path(source).is_dir():  # fine-tune on the folder inspected, not on the recipe's cohort
                recipe.data.root = cohort.root
            figures["from_scratch"] = _from_scratch_classifier(recipe)
    if json_path is not None:
        from medssl.files import atomic_write_text

        atomic_write_text(json_path, json.dumps(figures, indent=2) + "\n")  # a killed write leaves no half file
        cli.console.print(f"Figures written to {json_path}")


def _from_scratch_classifier(recipe) -> dict:
    """The recipe's network fine-tuned from scratch on the whole training split (no run folder kept):
    mean and sd over its seeds of each test split's scores, printed in one line a split."""
    import tempfile

    from medssl.finetune.protocol import finetune_encoder

    with tempfile.TemporaryDirectory() as folder:
        results = finetune_encoder(recipe, None, Path(folder) / "scratch")
    summary = results["summary"]
    seeds = len(recipe.finetune.seeds)
    for split, scores in summary.items():
        shown = ", ".join(
            f"{metric} {values['mean']:.3f} ± {values['std']:.3f}" for metric, values in scores.items() if metric != "n"
        )
        cli.console.print(
            f"from scratch ({recipe.model.encoder}, {recipe.finetune.target}, whole training split, {seeds} seeds), {split}: {shown}"
        )
    return summary


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
    with progress_bar(cli.console) as progress:
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
    cli.console.print(f"Cached {volumes} ({shape_text}, {stored}) in {out}: set data.root: {out}")


def _cache_settings(cohort: Path, recipe: str | None, overrides: list[str]):
    """The data section ``data cache`` reads: --recipe's (else the defaults), then the overrides;
    an override it would not read is refused, as the modality of a cohort that has one only."""
    from medssl.recipe import apply_overrides, load_recipe, recipe_from_dict

    refuse_unread_cache_overrides(overrides)
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


def parse_shape(shape: str) -> list[int]:
    """``--shape``: ``64,76,64`` (or ``64x76x64``) or one edge for a cube."""
    try:
        edges = [int(edge) for edge in shape.replace("x", ",").split(",")]
    except ValueError:
        edges = []
    if len(edges) not in (1, 3) or min(edges) < 1:
        raise RecipeError(f"--shape {shape!r}: expected D,H,W or one edge, e.g. 64,76,64 or 64")
    return edges * 3 if len(edges) == 1 else edges
