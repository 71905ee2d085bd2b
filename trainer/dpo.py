"""Direct preference optimisation (sigmoid DPO, Rafailov et al. 2023; IPO, Azar et al. 2023) on the packed
engine.

Each pair is two sequences, prompt + chosen and prompt + rejected, rendered with the chat template; only
the answer's tokens are targets (trainer.data.Renderer supervises the final assistant turn of a preference
example). The two sequences of a pair are packed into the same row, so a micro-batch always holds whole
pairs, and attention stays inside each sequence (the same segment bounds as SFT): no token of one answer
ever sees the other. A sequence's log-probability is the sum over its answer tokens of the fused LM-head
loss (trainer.loss), scattered by owner, so no [tokens x vocab] logits are kept.

The reference model is the base with the adapter disabled (PEFT's `disable_adapter`, same weights, no
second copy in memory); its log-probabilities are computed once, in a first pass before the first step,
and cached per sequence (two floats per pair).

Losses, with the log-ratios r = log pi(y|x) - log pi_ref(y|x) of chosen (c) and rejected (r):
- sigmoid: -log sigmoid(beta * (r_c - r_r))
- ipo:     ((r_c / n_c - r_r / n_r) - 1 / (2 beta))^2, n the answer's token count (TRL's length-normalised form)
averaged over the pairs of an optimizer step. Rewards are beta * r; accuracy is the share of pairs whose
chosen reward is higher; margin the mean reward difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer import packing
from trainer.data import Renderer, Tokenized
from trainer.errors import TrainError

LOSS_TYPES = ("sigmoid", "ipo")


def tokenize_pairs(renderer: Renderer, records: list[dict], first: int = 0) -> list[Tokenized]:
    """[chosen_0, rejected_0, chosen_1, ...]: sequence 2k and 2k+1 are pair k (indices from `first`)."""
    out: list[Tokenized] = []
    for rec in records:
        content = rec["content"]
        for answer in ("chosen", "rejected"):
            view = {"format": "preference", "revision_id": rec["revision_id"],
                    "content": {"prompt": content["prompt"], "chosen": content[answer], "rejected": ""}}
            ex = renderer.tokenize(first + len(out), view)
            ex.meta["answer"] = answer
            out.append(ex)
    return out


def check_records(records: list[dict]) -> None:
    bad = sorted({r["format"] for r in records} - {"preference"})
    if bad:
        raise TrainError("method_format_mismatch",
                         f"method dpo needs a preference snapshot; this export holds {', '.join(bad)} examples")


def plan(seqs: list[Tokenized], max_seq_len: int) -> packing.PackPlan:
    """Pairs packed best-fit-decreasing into rows of 2 * max_seq_len, a pair never split across rows."""
    lengths = [len(seqs[i].input_ids) + len(seqs[i + 1].input_ids) for i in range(0, len(seqs), 2)]
    bins = packing.best_fit_decreasing(lengths, 2 * max_seq_len)
    rows = [[i for k in b for i in (2 * k, 2 * k + 1)] for b in bins]
    return packing.PackPlan(rows, 2 * max_seq_len, sum(len(s.input_ids) for s in seqs))


def sequence_logps(engine, mb, n: int) -> torch.Tensor:
    """log pi(answer | prompt) of every sequence of the micro-batch, as a [n] vector indexed by sequence
    (zero for sequences not in it); differentiable when grad is on."""
    losses = engine.token_losses(mb)
    out = torch.zeros(n, dtype=losses.dtype, device=losses.device)
    return out.index_add(0, mb.sup_example, -losses)


@dataclass
class PairStats:
    loss: torch.Tensor
    chosen_rewards: torch.Tensor
    rejected_rewards: torch.Tensor


def pair_losses(logp: torch.Tensor, ref: torch.Tensor, n_tokens: torch.Tensor, chosen: torch.Tensor,
                *, beta: float, loss_type: str) -> PairStats:
    """Per-pair losses and rewards for the pairs whose chosen sequence index is in `chosen`."""
    rejected = chosen + 1
    lr_c = logp[chosen] - ref[chosen]
    lr_r = logp[rejected] - ref[rejected]
    if loss_type == "sigmoid":
        loss = -F.logsigmoid(beta * (lr_c - lr_r))
    elif loss_type == "ipo":
        delta = lr_c / n_tokens[chosen].clamp(min=1) - lr_r / n_tokens[rejected].clamp(min=1)
        loss = (delta - 1 / (2 * beta)) ** 2
    else:
        raise TrainError("invalid_hyperparameters", f"hyperparameters.loss_type: unknown {loss_type!r}")
    return PairStats(loss, beta * lr_c.detach(), beta * lr_r.detach())


def chosen_in(mb) -> list[int]:
    return [i for i in mb.examples if i % 2 == 0]


@torch.no_grad()
def reference_logps(engine, peft_model, micro_batches, n: int, device) -> torch.Tensor:
    """The first pass: log-probs of every sequence under the base model (adapter disabled)."""
    ref = torch.zeros(n, dtype=torch.float32, device=device)
    was_training = peft_model.training
    peft_model.eval()
    try:
        with peft_model.disable_adapter():
            for mb in micro_batches:
                if mb.supervised_tokens:
                    ref += sequence_logps(engine, mb, n).float()
    finally:
        peft_model.train(was_training)
    return ref


def token_counts(seqs: list[Tokenized], device) -> torch.Tensor:
    return torch.tensor([s.supervised for s in seqs], dtype=torch.float32, device=device)


class Totals:
    """Sums over pairs for the metrics events (loss, rewards, accuracy, margin)."""

    def __init__(self, device) -> None:
        self.t = torch.zeros(5, dtype=torch.float64, device=device)  # loss, chosen, rejected, correct, pairs

    def add(self, st: PairStats) -> None:
        self.t += torch.stack([st.loss.detach().sum().double(), st.chosen_rewards.sum().double(),
                               st.rejected_rewards.sum().double(),
                               (st.chosen_rewards > st.rejected_rewards).sum().double(),
                               torch.tensor(float(st.loss.numel()), dtype=torch.float64, device=self.t.device)])

    def values(self) -> list[float]:
        return self.t.tolist()

    def reset(self) -> None:
        self.t.zero_()


def summary(values: list[float]) -> dict:
    loss, chosen, rejected, correct, pairs = values
    if not pairs:
        return {}
    return {"dpo_loss": loss / pairs, "rewards_chosen": chosen / pairs, "rewards_rejected": rejected / pairs,
            "rewards_accuracy": correct / pairs, "rewards_margin": (chosen - rejected) / pairs, "pairs": int(pairs)}


def backward_step(engine, micro_batches, ref, n_tokens, n: int, step_pairs: int, *, beta: float, loss_type: str,
                  totals: Totals) -> None:
    """Forward + backward over this rank's micro-batches of one step; the loss is the mean over the
    step's pairs (across ranks: step_pairs is the global count)."""
    for mb in micro_batches:
        chosen = chosen_in(mb)
        if not chosen or mb.supervised_tokens == 0:
            continue
        logp = sequence_logps(engine, mb, n)
        idx = torch.tensor(chosen, dtype=torch.long, device=logp.device)
        st = pair_losses(logp, ref, n_tokens, idx, beta=beta, loss_type=loss_type)
        (st.loss.sum() / step_pairs).backward()
        totals.add(st)
    if engine.dist.world > 1:
        engine._all_reduce_grads()


@torch.no_grad()
def evaluate(engine, micro_batches, ref, n_tokens, n: int, *, beta: float, loss_type: str, device) -> list[float]:
    totals = Totals(device)
    for mb in micro_batches:
        chosen = chosen_in(mb)
        if not chosen or mb.supervised_tokens == 0:
            continue
        logp = sequence_logps(engine, mb, n)
        idx = torch.tensor(chosen, dtype=torch.long, device=logp.device)
        totals.add(pair_losses(logp, ref, n_tokens, idx, beta=beta, loss_type=loss_type))
    return totals.values()
