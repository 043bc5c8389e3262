"""Training metrics: one CSV row per step (and per epoch summary) plus TensorBoard scalars."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pandas as pd


class MetricsLog:
    """Append-only ``metrics.csv`` with a fixed header, mirrored to TensorBoard.

    Rows carry ``step``, ``epoch``, ``kind`` ("step" or "epoch") and named values. On resume,
    rows written after the checkpoint being resumed are dropped, so the log of a resumed run
    equals the log of an uninterrupted one.
    """

    COLUMNS = ["kind", "epoch", "step", "loss", "lr", "volumes_per_s", "grad_norm"]

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True, purge_step: int | None = None):
        self.path = run_dir / "metrics.csv"
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=purge_step)
        self.rows: list[dict] = []

    def truncate_after(self, epochs_done: int) -> int:
        """Keep only rows of the first ``epochs_done`` epochs (used when resuming); return how many were dropped."""
        if not self.enabled or not self.path.is_file():
            return 0
        table = pd.read_csv(self.path)
        dropped = int((table["epoch"] >= epochs_done).sum())
        table = table[table["epoch"] < epochs_done]
        # A cell a row never had stays empty, as the log writes it, not "nan".
        self.rows = [
            {key: value for key, value in row.items() if not pd.isna(value)} for row in table.to_dict("records")
        ]
        self._rewrite()
        return dropped

    def _columns(self) -> list[str]:
        extra = sorted({key for row in self.rows for key in row} - set(self.COLUMNS))
        return self.COLUMNS + extra

    def _rewrite(self) -> None:
        with self.path.open("w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=self._columns(), lineterminator="\n")
            writer.writeheader()
            writer.writerows(self.rows)

    def log(self, kind: str, epoch: int, step: int, **values: float) -> None:
        if not self.enabled:
            return
        row = {"kind": kind, "epoch": epoch, "step": step, **values}
        new_columns = set(row) - set(self._columns())
        self.rows.append(row)
        if new_columns or not self.path.is_file():
            self._rewrite()
        else:
            with self.path.open("a", newline="") as stream:
                csv.DictWriter(stream, fieldnames=self._columns(), lineterminator="\n").writerow(row)
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def table(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self._columns())

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
