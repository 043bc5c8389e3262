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
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler

from medssl.data.views import seed_worker


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
        epoch, seen = self.epoch, Counter[int]()
        for index in self.sampler:
            index = int(index)
            yield epoch, index, seen[index]
            seen[index] += 1

    def __len__(self) -> int:
        return 0 if self.sampler is None else len(self.sampler)  # type: ignore[arg-type]


class EpochLoader:
    """The batches of each epoch: shuffled indices (or a method's own sampler), views seeded by
    (seed, epoch, subject), so a resumed run sees what an uninterrupted one saw.

    One ``DataLoader`` serves every epoch, so worker processes persist across epochs; memory
    is pinned on GPU so host-to-device copies overlap compute (``non_blocking``).

    Args:
        dataset: map-style dataset of dict items (``MultiViewDataset``, or fine-tuning inputs).
        batch_size: items per batch (per process under DDP).
        seed: the run's seed: shuffles by (seed, epoch), views by :func:`item_seed`.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches (for a CUDA device).
        prefetch_factor: batches each worker reads ahead (None: torch's 2; ignored without workers).
        drop_last: drop the last incomplete batch.
        world_size, rank: the DDP process group; each process reads its share of the indices.

    Example:
        >>> loader = EpochLoader(dataset, batch_size=8, seed=0)
        >>> for batch in loader.epoch(3):             # the batches of epoch 3
        ...     ...
        >>> loader.close()                            # ends persistent workers
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        seed: int = 0,
        num_workers: int = 0,
        pin_memory: bool = False,
        drop_last: bool = True,
        world_size: int = 1,
        rank: int = 0,
        prefetch_factor: int | None = None,
    ):
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor
        self.drop_last = drop_last
        self.world_size = world_size
        self.rank = rank
        self.keys = EpochSampler()
        self.loader: DataLoader | None = None

    def __len__(self) -> int:
        """Batches of an epoch with the default sampler."""
        per_process = len(self.dataset) // self.world_size  # type: ignore[arg-type]
        return per_process // self.batch_size if self.drop_last else -(-per_process // self.batch_size)

    def epoch(self, epoch: int, sampler: Sampler | None = None) -> DataLoader:
        """The loader of ``epoch``: ``sampler``'s indices, else a reshuffle seeded by (seed, epoch)."""
        if sampler is None:
            if self.world_size > 1:
                sampler = DistributedSampler(
                    self.dataset,
                    num_replicas=self.world_size,
                    rank=self.rank,
                    shuffle=True,
                    seed=self.seed,
                    drop_last=True,
                )
                sampler.set_epoch(epoch)
            else:
                # torch types Dataset without __len__; the map-style datasets here all have one
                sampler = RandomSampler(self.dataset, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))  # type: ignore[arg-type]
        if self.loader is None:
            self.loader = DataLoader(
                EpochSeededDataset(self.dataset, self.seed),
                batch_size=self.batch_size,
                sampler=self.keys,
                drop_last=self.drop_last,
                num_workers=self.num_workers,
                worker_init_fn=seed_worker,
                pin_memory=self.pin_memory,
                persistent_workers=self.num_workers > 0,
                prefetch_factor=self.prefetch_factor if self.num_workers > 0 else None,
            )
        self.keys.set_epoch(epoch, sampler)
        return self.loader

    def close(self) -> None:
        """End the persistent workers (a later :meth:`epoch` starts new ones)."""
        self.loader = None


BATCH_PREFETCH = 4  # batches each worker reads ahead on the batch path (torch's default: 2)


class BatchViewsLoader:
    """``views.device: batch``: the batches of ``loader`` carry each subject's volume once (as
    ``views`` (B, 1, C, D, H, W)); they are moved to ``device`` and ``views`` draws the method's
    views there (:func:`medssl.data.batched_views.build_batched_views`). Its parameters come from
    a generator seeded by (seed, epoch, batch, rank): a resumed run draws what an uninterrupted
    one drew, and the processes of a DDP run draw different views.

    The workers only read volumes (a page copy out of the memory-mapped cache), so they read
    further ahead (``BATCH_PREFETCH`` batches each, riding out page-cache misses); batches are
    pinned on a CUDA device and copied ``non_blocking``. A float16 cache's volumes cross to the
    device as float16 (half the bytes) and are cast to float32 there, before the views.
    """

    def __init__(self, loader: EpochLoader, views: Callable, device: torch.device, seed: int, rank: int = 0):
        self.loader, self.views, self.device, self.seed, self.rank = loader, views, device, seed, rank
        self.dataset, self.batch_size, self.drop_last = loader.dataset, loader.batch_size, loader.drop_last
        # set before the loader's first epoch builds its DataLoader
        loader.pin_memory = device.type == "cuda"
        loader.prefetch_factor = max(loader.prefetch_factor or 0, BATCH_PREFETCH)

    def __len__(self) -> int:
        return len(self.loader)

    def epoch(self, epoch: int, sampler: Sampler | None = None) -> Iterator[dict]:
        for number, batch in enumerate(self.loader.epoch(epoch, sampler)):
            generator = torch.Generator().manual_seed(item_seed(self.seed, epoch, number, repeat=1 + self.rank))
            yield {**batch, "views": self.views(self.to_device(batch["views"][:, 0]), generator)}

    def to_device(self, volumes: torch.Tensor) -> torch.Tensor:
        """The batch's volumes on the device as float32: copied as stored (float16 from a float16
        cache), cast there."""
        return volumes.to(self.device, non_blocking=True).float()

    def close(self) -> None:
        self.loader.close()
