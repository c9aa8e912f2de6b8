"""Every task's random streams pinned: a few draws per task for a few seeds, recorded from the
code as it stood before the two seed derivations became one. Any change to how a stream is
seeded or drawn fails here (batches by a digest of their bytes, index orders value by value)."""
import hashlib

import pytest
import torch

from targetprop.tasks.datasets import ImageData
from targetprop.tasks.images import PixelSequenceTask
from targetprop.tasks.synthetic import Adding, TemporalOrder, derived_generator

SEEDS = (0, 1, 2, 3, 99)


def digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


SYNTHETIC = {
    "temporal-order": lambda seed: TemporalOrder(20, seed=seed, batch_size=4, test_size=6, train_eval_size=5,
                                                 test_seed=seed),
    "temporal-order-3bit": lambda seed: TemporalOrder(30, bits=3, seed=seed, batch_size=4, test_size=6,
                                                      train_eval_size=5, test_seed=seed),
    "adding": lambda seed: Adding(20, seed=seed, batch_size=4, test_size=6, train_eval_size=5, test_seed=seed),
}
SYNTHETIC_DIGESTS = {  # of train_batch(0), train_batch(7), the train-eval and the test batch
    0: {"temporal-order": "8c800053715bed16", "temporal-order-3bit": "5705a8f198c3eb82", "adding": "17cd5ea0abfa09fd"},
    1: {"temporal-order": "74b99197fbd2b047", "temporal-order-3bit": "f1b6593918259924", "adding": "4fe314c305e715d9"},
    2: {"temporal-order": "6acc530d2f5a8479", "temporal-order-3bit": "b9f1e1e4be9166f1", "adding": "88519f8c1f15c8f5"},
    3: {"temporal-order": "db299a2a65a77670", "temporal-order-3bit": "7864134b9203d701", "adding": "fa66d36d8e2f649a"},
    99: {"temporal-order": "edc61ac4aa66af09", "temporal-order-3bit": "76de6955b93eb828", "adding": "2af67ff82c43af87"},
}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_streams_are_pinned(name, seed):
    task = SYNTHETIC[name](seed)
    drawn = digest(*task.train_batch(0), *task.train_batch(7), *task.eval_batches("train")[0],
                   *task.eval_batches("test")[0])
    assert drawn == SYNTHETIC_DIGESTS[seed][name]


PIXEL_STREAMS = {  # seed: (indices of iterations 0 and 2, the pixel permutation)
    0: ([35, 31, 4, 33, 21, 27, 24, 25, 22, 0, 28, 30, 8, 5, 29, 13],
        [6, 16, 36, 19, 23, 17, 18, 3, 23, 12, 19, 5, 14, 20, 2, 4], [3, 5, 2, 7, 6, 4, 0, 1]),
    1: ([3, 23, 16, 35, 34, 33, 38, 18, 32, 9, 29, 39, 27, 30, 31, 1],
        [19, 36, 21, 13, 5, 15, 2, 22, 7, 36, 32, 38, 31, 3, 20, 23], [4, 2, 7, 0, 6, 1, 3, 5]),
    2: ([4, 0, 14, 27, 17, 1, 28, 15, 21, 29, 31, 11, 37, 24, 10, 30],
        [22, 16, 36, 25, 8, 12, 26, 39, 2, 3, 8, 1, 19, 25, 39, 5], [5, 1, 4, 3, 7, 0, 2, 6]),
    3: ([24, 6, 3, 13, 5, 1, 36, 16, 26, 25, 18, 0, 14, 30, 2, 29],
        [4, 34, 37, 23, 11, 27, 8, 20, 14, 11, 34, 5, 9, 36, 16, 18], [0, 2, 7, 1, 5, 6, 3, 4]),
    99: ([0, 25, 32, 16, 36, 24, 34, 31, 28, 37, 38, 2, 5, 30, 26, 29],
         [1, 17, 33, 39, 35, 15, 21, 4, 8, 6, 39, 7, 24, 3, 1, 12], [7, 3, 6, 5, 1, 0, 2, 4]),
}


@pytest.mark.parametrize("seed", SEEDS)
def test_pixel_task_streams_are_pinned(seed):
    """Epoch orders (iteration 2 crosses into epoch 1), the pixel permutation and the evaluation
    subsets (the same for every seed); image ``i`` holds the value ``i`` so a batch shows its indices."""
    images = torch.arange(40, dtype=torch.uint8)[:, None, None].expand(40, 2, 4).contiguous()
    data = ImageData("toy", images, torch.arange(40) % 10, images[:30], torch.arange(30) % 10)
    task = PixelSequenceTask(data, seed=seed, batch_size=16, permutation_seed=seed, test_size=7, train_eval_size=9,
                             normalize="none")
    first, third, permutation = PIXEL_STREAMS[seed]
    assert task.train_indices(0).tolist() == first
    assert task.train_indices(2).tolist() == third
    assert task.permutation.tolist() == permutation
    assert [int(v) for v in task.eval_batches("test")[0][0][:, 0, 0]] == [6, 7, 11, 12, 15, 23, 29]
    assert [int(v) for v in task.eval_batches("train")[0][0][:, 0, 0]] == [2, 5, 6, 7, 11, 27, 34, 35, 37]


TRAINER_SEEDS = {  # seed: the global seeds of a run and its initialization, a digest of the init stream
    0: (6214469944289351030, 6318236780562308660, "69eac0e5d71a816f"),
    1: (8832166339186982922, 8011126979966460089, "888a30b187bf3a95"),
    2: (8785861444000076057, 7482712173739212351, "faff67f420e43b24"),
    3: (8031156408813674601, 5970812530198822900, "bb3b0301988786f4"),
    99: (6021741173233745643, 7797574581747695101, "a05f462e1ed5d6d9"),
}


@pytest.mark.parametrize("seed", SEEDS)
def test_the_trainers_seeds_are_pinned(seed):
    """The trainer seeds torch's global generators (CPU and CUDA) with these generators' seeds."""
    run, init, stream = TRAINER_SEEDS[seed]
    assert derived_generator(seed, "global").initial_seed() == run
    assert derived_generator(seed, "init-global").initial_seed() == init
    assert digest(torch.randn(5, generator=derived_generator(seed, "init"), dtype=torch.float64)) == stream


def test_one_derivation_serves_every_task_and_the_trainer():
    from targetprop.tasks import images, seeding, synthetic

    assert synthetic.derived_generator is seeding.derived_generator is images.derived_generator
    seeds = [seeding.derived_seed(seed, "epoch", 0) for seed in range(64)]
    assert all(0 <= s < 2**63 for s in seeds) and len(set(seeds)) == 64


@pytest.mark.parametrize("seed", [0, 12345, 2**32 - 1, 2**62 + 7])
def test_the_cpu_generator_reads_only_the_low_32_bits_of_its_seed(seed):
    """Why the pixel tasks' streams survived gaining the 63-bit mask: seeds that differ only above
    bit 31 (the top bit included) give the same CPU stream for every kind of draw the tasks make."""
    streams = []
    for high in (0, 2**63, 2**40 + 2**63):
        g = torch.Generator().manual_seed(seed | high)
        streams.append((torch.randperm(50, generator=g), torch.randint(0, 4, (20,), generator=g),
                        torch.rand(20, generator=g, dtype=torch.float64), torch.randn(7, generator=g)))
    for other in streams[1:]:
        assert all(torch.equal(a, b) for a, b in zip(streams[0], other))
    different = torch.Generator().manual_seed(seed ^ 1)
    assert not torch.equal(torch.randperm(50, generator=different), streams[0][0])
