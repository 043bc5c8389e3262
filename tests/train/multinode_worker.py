"""One process of the two-node test (tests/train/test_multinode.py), started by a torchrun agent.

Trains one SGD step of the BatchNorm-free tiny method (per-process BatchNorm statistics would
make a comparison inexact) on this process's share of the global batch; rank 0 writes the run.

Usage: torchrun ... multinode_worker.py COHORT OUT LOCAL_BATCH
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tiny import step_recipe, tiny_method  # this script's folder is first on sys.path

from medssl.train.pretraining import train_encoder

if __name__ == "__main__":
    cohort, out, local_batch = sys.argv[1:]
    torch.set_num_threads(1)  # two processes share the test machine's cores
    torch.manual_seed(0)  # the weights a recipe of seed 0 starts from (tiny.initial_state)
    train_encoder(step_recipe(cohort, int(local_batch)), Path(out), method=tiny_method(None))
