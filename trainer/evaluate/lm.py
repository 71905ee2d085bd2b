"""The model under evaluation: base + adapter, batched scoring and batched generation.

Scoring runs the decoder on right-padded batches (sorted by length, sized by a token budget) and puts
only the target positions through the LM head, so a 150k-word vocabulary costs nothing for the
prompt tokens. Generation is Hugging Face `generate` on left-padded batches (KV cache on), sorted by
prompt length so a batch pads little. Both work with the adapter on or off (`adapter=False` is the
base model: PEFT's `disable_adapter`), so base-vs-adapter comparisons share one copy of the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from trainer.errors import TrainError
from trainer.model import load_base


def common_prefix_len(seqs: Sequence[Sequence[int]]) -> int:
    """Tokens every sequence starts with, leaving each at least one of its own."""
    if not seqs:
        return 0
    first = seqs[0]
    p = min(len(s) for s in seqs) - 1
    for s in seqs[1:]:
        j = 0
        while j < p and s[j] == first[j]:
            j += 1
        p = j
        if p == 0:
            break
    return max(p, 0)


class LM:
    def __init__(self, base_model: str, adapter_dir: str | None, *, device=None, dtype=None):
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.on_gpu = self.device.type == "cuda"
        dtype = dtype or (torch.bfloat16 if self.on_gpu else torch.float32)
        self.has_adapter = bool(adapter_dir)
        self._base_path, self._dtype, self._base = base_model, dtype, None
        # A `full` version's artifact is the whole trained model (trainer/full.py), not an adapter: it is
        # the model evaluated, and the base is loaded beside it only when a suite compares with it.
        self.full = bool(adapter_dir) and not (Path(adapter_dir) / "adapter_config.json").exists() and (
            Path(adapter_dir) / "config.json").exists()
        if self.full:
            self.tokenizer, model = load_base(str(adapter_dir), "lora", self.device, dtype)
        else:
            self.tokenizer, model = load_base(base_model, "lora", self.device, dtype)
        if adapter_dir and not self.full:
            if not (Path(adapter_dir) / "adapter_config.json").exists():
                raise TrainError("invalid_data", f"adapter_dir {adapter_dir} holds no adapter_config.json "
                                                 "(nor a whole model's config.json)")
            from peft import PeftModel

            try:
                model = PeftModel.from_pretrained(model, adapter_dir)
            except Exception as exc:
                raise TrainError("invalid_data", f"cannot load the adapter: {type(exc).__name__}: {exc}") from exc
        self.model = model.eval()
        self.shared_prefix_error: str | None = None
        base = model.get_base_model() if self.has_adapter and not self.full else model
        # The decoder of a PEFT model holds the LoRA layers in place, so calling it directly is the
        # adapted model; disable_adapter() switches those same layers off.
        self.decoder = base.get_decoder()
        self.lm_head = base.get_output_embeddings()
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
        stops = {tok.eos_token_id}
        for special in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>"):
            tid = tok.convert_tokens_to_ids(special) if special in tok.get_vocab() else None
            if tid is not None:
                stops.add(tid)
        self.stop_ids = sorted(i for i in stops if i is not None)

    def adapter(self, on: bool):
        if on or not self.has_adapter:
            return contextlib.nullcontext()
        if self.full:
            return self._base_swapped()
        return self.model.disable_adapter()

    @contextlib.contextmanager
    def _base_swapped(self):
        """The base model in place of the trained one (a `full` version), loaded on first use."""
        if self._base is None:
            _, base = load_base(self._base_path, "lora", self.device, self._dtype)
            self._base = base.eval()
        kept = self.model, self.decoder, self.lm_head
        self.model, self.decoder, self.lm_head = self._base, self._base.get_decoder(), self._base.get_output_embeddings()
        try:
            yield
        finally:
            self.model, self.decoder, self.lm_head = kept

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    # -- scoring -----------------------------------------------------------------------------

    @torch.no_grad()
    def target_logprobs(
        self,
        seqs: Sequence[tuple[Sequence[int], Sequence[bool]]],
        *,
        adapter: bool = True,
        batch_tokens: int = 16384,
        tick: Callable[[int], None] | None = None,
        shared_prefix: bool = False,
    ) -> list[np.ndarray]:
        """For each (ids, mask): log p(ids[t] | ids[:t]) at every t ≥ 1 with mask[t] (float64 array).

        `shared_prefix`: the sequences' longest common token prefix is run once and its KV cache serves
        every batch (the exposure suite's candidates differ only from the secret on, so this skips the
        template's prefix for each of them: the same numbers, up to the kernels' rounding)."""
        out: list[np.ndarray | None] = [None] * len(seqs)
        if shared_prefix and self.shared_prefix_error is None:
            p = common_prefix_len([s for s, _ in seqs])
            if p >= 2:
                try:
                    with self.adapter(adapter):
                        self._score_shared(seqs, p, batch_tokens, tick, out)
                    return out  # type: ignore[return-value]
                except (AttributeError, TypeError) as exc:
                    # A transformers release without the cache calls used here: the plain path gives
                    # the same numbers, only slower. Kept so a caller can say which path ran.
                    self.shared_prefix_error = f"{type(exc).__name__}: {exc}"
                    out = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i][0]))
        k = 0
        with self.adapter(adapter):
            while k < len(order):
                longest = max(1, len(seqs[order[k]][0]))
                rows = max(1, batch_tokens // longest)
                group = order[k : k + rows]
                k += len(group)
                self._score_batch(seqs, group, out)
                if tick:
                    tick(len(group))
        return out  # type: ignore[return-value]

    def _score_batch(self, seqs, group, out) -> None:
        T = max(len(seqs[i][0]) for i in group)
        ids = torch.full((len(group), T), self.pad_id, dtype=torch.long)
        att = torch.zeros((len(group), T), dtype=torch.long)
        rows, cols, targets = [], [], []
        for r, i in enumerate(group):
            s, m = seqs[i]
            n = len(s)
            if n:
                ids[r, :n] = torch.tensor(list(s), dtype=torch.long)
                att[r, :n] = 1
            for t in range(1, n):
                if m[t]:
                    rows.append(r)
                    cols.append(t - 1)
                    targets.append(s[t])
        if not targets:
            for i in group:
                out[i] = np.zeros(0)
            return
        hidden = self.decoder(
            input_ids=ids.to(self.device), attention_mask=att.to(self.device), use_cache=False
        ).last_hidden_state
        h = hidden[torch.tensor(rows, device=self.device), torch.tensor(cols, device=self.device)]
        values = self._logprobs(h, torch.tensor(targets, device=self.device)).double().cpu().numpy()
        # Targets were appended row by row, so each row's are one contiguous slice.
        counts = np.bincount(np.asarray(rows), minlength=len(group))
        for i, chunk in zip(group, np.split(values, np.cumsum(counts)[:-1])):
            out[i] = chunk

    def _logprobs(self, h: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """log p(tgt | h) through the LM head, in chunks so the vocabulary-wide logits stay small."""
        lp = torch.empty(len(tgt), dtype=torch.float32, device=self.device)
        chunk = 4096
        for s0 in range(0, len(tgt), chunk):
            logits = self.lm_head(h[s0 : s0 + chunk]).float()
            lp[s0 : s0 + chunk] = logits.gather(1, tgt[s0 : s0 + chunk, None]).squeeze(1) - torch.logsumexp(
                logits, dim=-1
            )
        return lp

    def _score_shared(self, seqs, p: int, batch_tokens: int, tick, out) -> None:
        """Scores with the first `p` tokens (the same in every sequence) run once.

        Position t's log-prob comes from the hidden state at t-1: for t < p from the prefix's run, for
        t = p from the prefix's last state (one vocabulary row, every sequence reads its own token from
        it), for t > p from the batch's run on the suffixes over a copy of the prefix's KV cache."""
        import copy

        prefix = list(seqs[0][0][:p])
        run = self.decoder(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        cache, ph = run.past_key_values, run.last_hidden_state[0]
        # Prefix targets (t = 1..p-1) and the whole distribution at t = p.
        pre_lp = self._logprobs(ph[:-1], torch.tensor(prefix[1:], device=self.device)).double().cpu().numpy()
        first = torch.log_softmax(self.lm_head(ph[-1:]).float(), dim=-1)[0].double().cpu().numpy()
        # The bookkeeping is numpy over the whole batch, not Python per candidate: at 50 canaries x 10k
        # candidates a per-candidate loop cost as much as the GPU's work.
        lengths = np.fromiter((len(s) for s, _ in seqs), dtype=np.int64, count=len(seqs))
        order = np.argsort(-lengths, kind="stable")
        k = 0
        while k < len(order):
            longest = max(1, int(lengths[order[k]]) - p)
            group = order[k : k + max(1, batch_tokens // longest)]
            k += len(group)
            G = len(group)
            glen = lengths[group] - p  # suffix lengths (>= 0)
            T = max(1, int(glen.max()))
            ids_np = np.full((G, T), self.pad_id, dtype=np.int64)
            # m_np[r, j]: the mask of token p + j; head_np[r, t]: the mask of prefix token t (t < p).
            m_np = np.zeros((G, T), dtype=bool)
            head_np = np.zeros((G, p), dtype=bool)
            for r, i in enumerate(group.tolist()):
                s, m = seqs[i]
                n = len(s) - p
                if n > 0:
                    ids_np[r, :n] = s[p:]
                    m_np[r, :n] = m[p:]
                head_np[r] = m[:p]
            valid = np.arange(T)[None, :] < glen[:, None]
            # Targets after p: suffix positions j >= 1 (token p + j), read from the hidden state at j - 1.
            tmask = m_np[:, 1:] & valid[:, 1:]
            rows, cols = np.nonzero(tmask)
            suffix_vals = np.zeros((G, max(T - 1, 0)))
            if len(rows):
                att = np.zeros((G, p + T), dtype=np.int64)
                att[:, :p] = 1
                att[:, p:] = valid
                kv = copy.deepcopy(cache)
                kv.batch_repeat_interleave(G)
                hidden = self.decoder(input_ids=torch.from_numpy(ids_np).to(self.device),
                                      attention_mask=torch.from_numpy(att).to(self.device),
                                      past_key_values=kv, use_cache=True).last_hidden_state
                dev_rows = torch.from_numpy(rows).to(self.device)
                h = hidden[dev_rows, torch.from_numpy(cols).to(self.device)]
                tgt = torch.from_numpy(ids_np[rows, cols + 1]).to(self.device)
                suffix_vals[rows, cols] = self._logprobs(h, tgt).double().cpu().numpy()
            # Each candidate's values in position order: prefix targets (t = 1..p-1), then t = p, then
            # the suffix's; one row of a (G, p - 1 + 1 + T - 1) matrix, its masked entries kept.
            at_p = (glen > 0) & m_np[:, 0]
            first_vals = first[ids_np[:, 0]]
            full = np.concatenate([np.broadcast_to(pre_lp, (G, p - 1)), first_vals[:, None], suffix_vals], axis=1)
            keep = np.concatenate([head_np[:, 1:], at_p[:, None], tmask], axis=1)
            for r, i in enumerate(group.tolist()):
                out[i] = full[r][keep[r]]
            if tick:
                tick(G)

    # -- generation --------------------------------------------------------------------------

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        max_new_tokens: int,
        adapter: bool = True,
        sample: bool = False,
        top_k: int = 40,
        temperature: float = 1.0,
        num_samples: int = 1,
        batch_size: int = 32,
        seed: int = 0,
        tick: Callable[[int], None] | None = None,
    ) -> list[list[list[int]]]:
        """For each prompt, `num_samples` continuations (token ids, cut at the first stop token).

        Greedy unless `sample` (top-k). Prompts are batched by length and left-padded, so every
        row's last prompt token sits at the same position and one KV cache serves the batch.
        """
        out: list[list[list[int]] | None] = [None] * len(prompts)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        n_ret = num_samples if sample else 1
        per = max(1, batch_size // n_ret)
        gen_kw = {
            "max_new_tokens": max_new_tokens,
            "do_sample": sample,
            "num_return_sequences": n_ret,
            "pad_token_id": self.pad_id,
            "eos_token_id": self.stop_ids,
        }
        if sample:
            gen_kw.update(top_k=top_k, temperature=temperature, top_p=1.0)
        else:
            gen_kw.update(temperature=None, top_k=None, top_p=None)
        if sample:
            torch.manual_seed(seed)
        with self.adapter(adapter):
            for s0 in range(0, len(order), per):
                group = order[s0 : s0 + per]
                T = max(1, max(len(prompts[i]) for i in group))
                ids = torch.full((len(group), T), self.pad_id, dtype=torch.long)
                att = torch.zeros((len(group), T), dtype=torch.long)
                for r, i in enumerate(group):
                    p = list(prompts[i])
                    if p:
                        ids[r, T - len(p) :] = torch.tensor(p, dtype=torch.long)
                        att[r, T - len(p) :] = 1
                seqs = self.model.generate(
                    input_ids=ids.to(self.device), attention_mask=att.to(self.device), **gen_kw
                )
                new = seqs[:, T:].cpu().tolist()
                for r, i in enumerate(group):
                    out[i] = [self._cut(new[r * n_ret + j]) for j in range(n_ret)]
                if tick:
                    tick(len(group))
        return out  # type: ignore[return-value]

    def _cut(self, ids: list[int]) -> list[int]:
        stops = set(self.stop_ids)
        for j, t in enumerate(ids):
            if t in stops:
                return ids[:j]
        return ids
