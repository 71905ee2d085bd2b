"""Best-fit-decreasing packing and the micro-batch layout that keeps examples apart."""

import random

import pytest

from trainer.packing import IGNORE, best_fit_decreasing

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.train


def test_bfd_places_every_item_once_within_capacity():
    rng = random.Random(0)
    lengths = [rng.randint(1, 300) for _ in range(2000)]
    bins = best_fit_decreasing(lengths, 512)
    placed = sorted(i for b in bins for i in b)
    assert placed == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 512 for b in bins)
    # Within a few percent of the lower bound on a long-tailed mix.
    lower = -(-sum(lengths) // 512)
    assert len(bins) <= lower * 1.03 + 1


def test_bfd_refuses_an_item_longer_than_a_row():
    with pytest.raises(ValueError):
        best_fit_decreasing([10, 600], 512)


class _Ex:
    def __init__(self, ids, mask):
        self.input_ids, self.labels_mask = ids, mask


def test_micro_batch_layout():
    from trainer.packing import build_micro_batch

    exs = [
        _Ex([1, 2, 3, 4], [False, False, True, True]),
        _Ex([5, 6, 7], [False, True, True]),
        _Ex([8, 9], [True, True]),
    ]
    mb = build_micro_batch([[0, 1], [2]], exs, 8, pad_id=0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 0, 8, 9, 0, 0, 0, 0, 0, 0]]
    # Positions restart at every example and at every padding tail.
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 0, 1, 2, 0, 0, 1, 0, 1, 2, 3, 4, 5]]
    # Targets: the next token of the same example, where that token is supervised; never across
    # a boundary, never on padding.
    assert mb.targets.tolist() == [[IGNORE, 3, 4, IGNORE, 6, 7, IGNORE, IGNORE, 9, IGNORE] + [IGNORE] * 6]
    assert mb.cu_seqlens.tolist() == [0, 4, 7, 8, 10, 16]
    assert mb.doc_ids.tolist() == [[0, 0, 0, 0, 1, 1, 1, 2, 3, 3, 4, 4, 4, 4, 4, 4]]
    assert mb.sup_example.tolist() == [0, 0, 1, 1, 2]
    assert mb.real_tokens == 9 and mb.supervised_tokens == 5
