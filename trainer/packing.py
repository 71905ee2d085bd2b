"""Best-fit-decreasing packing of tokenized examples into fixed-length rows, and the tensors one
micro-batch needs: input ids, per-example position ids, next-token targets and segment bounds.

A micro-batch is laid out as a single sequence of `rows * row_len` tokens: rows only decide where
padding goes, while attention is bounded by segments (one per example, one per row's padding tail),
so no token ever attends across an example boundary whatever the backend.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

IGNORE = -100


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` grouped into bins of at most `capacity` tokens.

    Longest first, each into the fullest bin that still has room: near-optimal for the long-tailed
    length distributions of instruction data, and deterministic (ties broken by index).
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    # (remaining capacity, bin number), kept sorted so the best fit is one bisect away.
    free: list[tuple[int, int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"example {i} has {n} tokens, more than the row length {capacity}")
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            room, b = free.pop(pos)
            bins[b].append(i)
            room -= n
        else:
            b = len(bins)
            bins.append([i])
            room = capacity - n
        if room > 0:
            bisect.insort(free, (room, b))
    return bins


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [1, T] long
    position_ids: torch.Tensor  # [1, T] long
    targets: torch.Tensor  # [1, T] long; IGNORE where no loss
    doc_ids: torch.Tensor  # [1, T] int32; one id per segment
    cu_seqlens: torch.Tensor  # [n_segments + 1] int32
    max_seqlen: int
    sup_index: torch.Tensor  # [N_sup] long: positions with a target
    sup_example: torch.Tensor  # [N_sup] long: which example each target belongs to
    examples: list[int]  # example indices in this micro-batch
    real_tokens: int
    supervised_tokens: int

    def to(self, device, non_blocking: bool = True) -> MicroBatch:
        import torch

        moved = {}
        for name, value in self.__dict__.items():
            moved[name] = (
                value.to(device, non_blocking=non_blocking) if isinstance(value, torch.Tensor) else value
            )
        return MicroBatch(**moved)

    def pin(self) -> MicroBatch:
        import torch

        pinned = {}
        for name, value in self.__dict__.items():
            pinned[name] = value.pin_memory() if isinstance(value, torch.Tensor) else value
        return MicroBatch(**pinned)


def build_micro_batch(rows: list[list[int]], examples, row_len: int, pad_id: int) -> MicroBatch:
    """`examples[i]` has `.input_ids` and `.labels_mask` (see trainer.data.Tokenized)."""
    import torch

    total = len(rows) * row_len
    ids = torch.full((total,), pad_id, dtype=torch.long)
    pos = torch.zeros(total, dtype=torch.long)
    tgt = torch.full((total,), IGNORE, dtype=torch.long)
    doc = torch.zeros(total, dtype=torch.int32)
    owner = torch.full((total,), -1, dtype=torch.long)
    cu = [0]
    members: list[int] = []
    seg = 0
    real = 0
    for r, row in enumerate(rows):
        at = r * row_len
        for i in row:
            ex = examples[i]
            n = len(ex.input_ids)
            t = torch.tensor(ex.input_ids, dtype=torch.long)
            m = torch.tensor(ex.labels_mask, dtype=torch.bool)
            ids[at : at + n] = t
            pos[at : at + n] = torch.arange(n)
            # Position j predicts token j+1 of the same example; the last token of an example
            # predicts nothing, so no loss ever spans a boundary.
            nxt = torch.where(m[1:], t[1:], torch.full_like(t[1:], IGNORE))
            tgt[at : at + n - 1] = nxt
            doc[at : at + n] = seg
            owner[at : at + n] = i
            members.append(i)
            seg += 1
            at += n
            cu.append(at)
            real += n
        end = (r + 1) * row_len
        if at < end:
            # The padding tail is a segment of its own: it attends only to itself and has no targets.
            pos[at:end] = torch.arange(end - at)
            doc[at:end] = seg
            seg += 1
            cu.append(end)
    cu_t = torch.tensor(cu, dtype=torch.int32)
    lens = cu_t[1:] - cu_t[:-1]
    sup_index = (tgt != IGNORE).nonzero().squeeze(1)
    return MicroBatch(
        input_ids=ids[None],
        position_ids=pos[None],
        targets=tgt[None],
        doc_ids=doc[None],
        cu_seqlens=cu_t,
        max_seqlen=int(lens.max()) if len(lens) else 0,
        sup_index=sup_index,
        sup_example=owner[sup_index],
        examples=members,
        real_tokens=real,
        supervised_tokens=int(sup_index.numel()),
    )


@dataclass
class PackPlan:
    rows: list[list[int]]
    row_len: int
    real_tokens: int

    @property
    def efficiency(self) -> float:
        """Real tokens over the token slots the rows occupy (1.0 = no padding)."""
        slots = len(self.rows) * self.row_len
        return self.real_tokens / slots if slots else 0.0


def plan(examples, row_len: int) -> PackPlan:
    lengths = [len(e.input_ids) for e in examples]
    return PackPlan(best_fit_decreasing(lengths, row_len), row_len, sum(lengths))
