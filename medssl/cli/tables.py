"""The rich tables the commands print: challenge metrics, recipes and their fields, a cohort's
figures, the checkpoint layouts. Each takes the console to print on (the command's)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_challenge_metrics(metrics: dict, name: str, console: Console) -> None:
    """``medssl score``'s table: a site score of too few internal-test subjects a site reads n/a."""
    from medssl.eval.score import MIN_SUBJECTS_PER_SITE, SITE_SCORES, too_few_per_site

    view = Table(title=f"Challenge metrics: {name}")
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


def print_recipes(rows: list[tuple[str, str, str]], console: Console) -> None:
    """``medssl recipes``: name, description and the network each recipe trains."""
    view = Table(
        title="Shipped recipes: medssl pretrain <name>; finetune_*: medssl finetune <name> --encoder RUN",
        title_justify="left",
    )
    view.add_column("name", style="bold", no_wrap=True)
    view.add_column("description")
    view.add_column("network trained: with data.root / on the embedded cohort")
    for row in rows:
        view.add_row(*row)
    console.print(view)


def _fields_table(title: str) -> Table:
    view = Table(title=title)
    view.add_column("key", no_wrap=True)  # a key path is what a user copies: never cut or folded
    view.add_column("default", overflow="fold")
    view.add_column("description", ratio=1, overflow="fold")
    return view


def print_fields(console: Console) -> None:
    """Every recipe key; the method section as one block per method, since its keys depend on method.name."""
    from medssl.methods import DEFAULT_METHOD, METHOD_SECTIONS, AdversarialDebias, EmbeddingSection, FairKLDebias
    from medssl.recipe import field_docs

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


def print_cohort_figures(figures: dict, console: Console) -> None:
    """``medssl data inspect``: splits, scanner ranges, the trivial probes and the diagnosis oracle."""
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
        console.print(_scanner_ranges_table(ranges))
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


def _scanner_ranges_table(ranges: dict) -> Table:
    """The scanner parameters of the training sites (min, max) and the external sites' values."""
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
    return view


def print_layouts(rows: list[dict], console: Console) -> None:
    """``medssl weights layouts``: a table a layout, its fields that have a value."""
    for row in rows:
        view = Table(title=row["layout"], title_justify="left", show_header=False)
        view.add_column("field", style="bold", no_wrap=True)
        view.add_column("value", overflow="fold")
        for key, value in row.items():
            if key != "layout" and value:
                view.add_row(key, value)
        console.print(view)
