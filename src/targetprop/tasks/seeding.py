"""Random streams derived from a seed and tags: the one way every task (and the trainer) seeds
a generator; and the epoch stream the data-set tasks draw their training batches from.

``derived_generator(seed, *tags)`` hashes ``(seed, *tags)`` to 64 bits and seeds a fresh CPU
generator with the low 63 of them, so distinct tags give independent streams and every stream
is a pure function of its seed and tags.

Why 63 bits: the trainer hands a derived generator's seed to ``torch.manual_seed``, which also
seeds the CUDA generators; those read all 64 bits of a seed, and keeping the top bit clear
keeps those streams as they were. The pixel tasks once seeded with all 64 bits; their streams
did not change when they moved here because PyTorch's CPU generator (MT19937) is initialized
from the low 32 bits of its seed only (tests/test_streams.py checks both facts).
"""
from __future__ import annotations

import hashlib

import torch

SEED_MASK = 2**63 - 1


def derived_seed(seed: int, *tags) -> int:
    """A 63-bit seed hashed from ``(seed, *tags)`` (BLAKE2b of its ``repr``, 8 bytes, little-endian)."""
    digest = hashlib.blake2b(repr((seed, *tags)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & SEED_MASK


def derived_generator(seed: int, *tags) -> torch.Generator:
    """A CPU generator seeded with :func:`derived_seed` of ``(seed, *tags)``."""
    return torch.Generator().manual_seed(derived_seed(seed, *tags))


class EpochStream:
    """Training batches of a fixed data set of ``n`` items: epoch after epoch, each in the order of
    a permutation drawn from ``(seed, "epoch", epoch)``; iteration ``i`` takes positions
    ``i·B … i·B+B-1`` of that stream. So the batch of iteration ``i`` is a pure function of
    ``(seed, i)`` and every item is seen exactly once per epoch (the last two epochs' orders kept)."""

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self._orders: dict[int, torch.Tensor] = {}

    def indices(self, iteration: int) -> torch.Tensor:
        """Item indices of the batch of ``iteration`` (epochs follow one another)."""
        positions = torch.arange(iteration * self.batch_size, (iteration + 1) * self.batch_size)
        epochs = positions // self.n
        index = torch.empty_like(positions)
        for epoch in torch.unique(epochs).tolist():
            mask = epochs == epoch
            index[mask] = self.order(epoch)[positions[mask] % self.n]
        return index

    def order(self, epoch: int) -> torch.Tensor:
        """The order in which epoch ``epoch`` reads the data set."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(next(iter(self._orders)))
            self._orders[epoch] = torch.randperm(self.n, generator=derived_generator(self.seed, "epoch", epoch))
        return self._orders[epoch]
