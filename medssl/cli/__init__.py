"""The ``medssl`` command line.

medssl pretrain recipes/yaware_age.yaml [KEY.PATH=VALUE ...] [--out DIR] [--resume | --overwrite] [--smoke]
medssl evaluate RUN_DIR_OR_ENCODER_PT [--cohort DIR]
medssl finetune recipes/finetune_diagnosis.yaml [KEY.PATH=VALUE ...] --encoder RUN_DIR/encoder.pt|none [--mode M] [--out DIR] [--resume | --overwrite] [--smoke]
medssl score predictions.csv [--json out.json] [--id-col C]
medssl benchmark [--recipes a,b] [--seeds 0,1,2] [--out DIR] [--jobs N] [--devices 0,1] [--smoke] [--finetune R1,R2 [--train-sizes 20,50,100,all] [--finetune-all-seeds]] [KEY.PATH=VALUE ...]
medssl leaderboard BENCHMARK_DIR
medssl recipes [--fields]
medssl data synth OUT --subjects N --sites S --shape 64 [--diagnosis focal|ageing|ad-like] [--overwrite]
medssl data cache COHORT OUT [data.KEY=VALUE ...] [--shape 64] [--recipe R] [--dtype float16] [--workers K] [--overwrite]
medssl data inspect [COHORT_DIR|RECIPE] [KEY.PATH=VALUE ...] [--json FILE]
medssl weights import FILE --layout NAME --out DIR [--encoder NAME] [model.KEY=VALUE ...] [--ignore PREFIX]
medssl weights layouts [--json]

One module a command (or a group's commands); ``common`` holds what several commands share and
``tables`` the rich tables they print. This module holds the app, the console and ``main``: the
one-line errors, exit codes and the resume line of an interrupted run.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

from medssl.errors import MedsslError

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

OVERRIDES_HELP = "Recipe overrides as KEY.PATH=VALUE, e.g. {example} data.root=/data/openbhb."


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
        # the progress bar's last line (stdout, buffered when not a terminal) ends before this line begins
        sys.stdout.flush()
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


# The commands register on ``app`` as their modules are imported, in the order ``medssl --help`` lists them.
# isort: off
from medssl.cli import pretrain, evaluate, finetune, score, benchmark, recipes, data, weights  # noqa: E402, F401
# isort: on
