"""Progress bars whose counts and times stay whole in an 80-column log.

In a log file or a pipe rich prints a progress bar once, when it ends, at the console's width
(80 columns unless ``COLUMNS`` says otherwise). A row wider than that made rich narrow every
column and cut the last ones: the time left read ``0:00:…``. Here the bar takes the room the
figures leave (it shrinks first), the description, counts and times never wrap, and the
fields (loss, learning rate, speed) wrap onto a second line when even a bar of one cell
leaves them too little room.

Example:
    >>> with progress_bar(console, "step loss {task.fields[loss]}", elapsed=True) as progress:
    ...     task = progress.add_task("epoch 1/10", total=100, loss="-")
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column

TIME_WIDTH = len("0:00:00")


def progress_bar(
    console: Console | None,
    *fields: str,
    elapsed: bool = False,
    remaining: bool = True,
    disable: bool = False,
    transient: bool = False,
) -> Progress:
    """description, bar, done/total, ``fields`` (rich ``TextColumn`` templates), elapsed and remaining time."""
    columns: list[ProgressColumn] = [
        TextColumn("[bold]{task.description}", table_column=Column(no_wrap=True)),
        BarColumn(bar_width=None, table_column=Column(ratio=1)),  # what the figures leave
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        *(TextColumn(field, table_column=Column(overflow="fold")) for field in fields),
    ]
    if elapsed:
        columns.append(TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=TIME_WIDTH)))
    if remaining:
        columns.append(TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=TIME_WIDTH)))
    return Progress(*columns, console=console, disable=disable, transient=transient, expand=True)
