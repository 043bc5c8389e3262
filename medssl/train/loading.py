"""Training batches whose random views depend only on (seed, epoch, subject).

The engine asks the ``DataLoader`` for keys ``(epoch, index, repeat)`` instead of bare
indices (``repeat`` counts earlier draws of the same subject in the epoch, for samplers
that draw with replacement); :class:`EpochSeededDataset` draws the views of that key from
torch's generator reseeded from ``(seed, epoch, index, repeat)``. The views of a subject in an epoch are therefore the same
whatever the number of DataLoader workers, the number of DDP processes, or whether the
run was resumed -- which lets one ``DataLoader`` with persistent workers serve every epoch
(its workers' generators are no longer reseeded between epochs, and need not be).

Example:
    >>> keys = EpochSampler()
    >>> loader = DataLoader(EpochSeededDataset(dataset, seed=0), batch_size=8, sampler=keys,
    ...                     num_workers=4, persistent_workers=True)
    >>> keys.set_epoch(3, RandomSampler(dataset))     # yields (3, index, 0) for each index
    >>> batch = next(iter(loader))
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler


def item_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """A well-mixed 63-bit seed for one draw of one subject in one epoch."""
    entropy = [seed % 2**32, seed // 2**32 % 2**32, epoch, index, repeat]
    state = np.random.SeedSequence(entropy).generate_state(2, dtype=np.uint32)
    return int(state[0]) << 31 ^ int(state[1])


@contextmanager
def one_intra_op_thread() -> Iterator[None]:
    """Run the block on one intra-op thread, as DataLoader workers always do.

    Augmenting a volume is many small tensor operations (TorchIO deep-copies the subject in
    every transform); with several intra-op threads each copy waits for the others to wake
    up: 8 ms instead of 0.1 ms per 32^3 copy on a busy 2-core machine, a tenfold slower
    pipeline with ``data.num_workers: 0`` (benchmarks/README.md).
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class EpochSeededDataset(Dataset):
    """Wrap a dataset so that item ``(epoch, index, repeat)`` is drawn under torch's generator
    seeded by :func:`item_seed`; the caller's generator state is left untouched.

    Args:
        dataset: Any map-style dataset whose randomness comes from torch's global generator
            (``MultiViewDataset``: TorchIO transforms sample from it).
        seed: The run's seed (``train.seed``).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int, int]):
        epoch, index, repeat = key
        with torch.random.fork_rng(devices=[]), one_intra_op_thread():
            torch.manual_seed(item_seed(self.seed, epoch, index, repeat))
            return self.dataset[index]


class EpochSampler(Sampler):
    """Yields ``(epoch, index, repeat)`` for every index of the sampler set by :meth:`set_epoch`.

    The ``DataLoader`` keeps this one object; the engine swaps the epoch's index sampler in
    (a ``RandomSampler``, a ``DistributedSampler`` or a method's own) before iterating.
    """

    def __init__(self):
        self.epoch = 0
        self.sampler: Sampler | None = None

    def set_epoch(self, epoch: int, sampler: Sampler) -> None:
        self.epoch = epoch
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        if self.sampler is None:
            raise RuntimeError("EpochSampler: call set_epoch(epoch, sampler) before iterating")
        epoch, seen = self.epoch, Counter()
        for index in self.sampler:
            index = int(index)
            yield epoch, index, seen[index]
            seen[index] += 1

    def __len__(self) -> int:
        return 0 if self.sampler is None else len(self.sampler)  # type: ignore[arg-type]
