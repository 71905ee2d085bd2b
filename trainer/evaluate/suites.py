"""The four suites. Each takes the loaded model, the config and a progress sink and returns its
result object (docs/trainer.md, "Evaluation"). None of them writes a raw training text, secret or
PII value into its result: only figures, ids and hashes."""

from __future__ import annotations

import hashlib
import math
import random
from collections import defaultdict

import numpy as np

from trainer.data import Renderer, to_messages
from trainer.errors import TrainError
from trainer.evaluate import metrics
from trainer.evaluate.common import EvalConfig, Progress, check_records, read_lines, render_canary
from trainer.evaluate.lm import LM


def _batch_tokens(lm: LM, p: dict) -> int:
    return p["batch_tokens"] or (65536 if lm.on_gpu else 4096)


def _batch_size(lm: LM, p: dict) -> int:
    return p["batch_size"] or (128 if lm.on_gpu else 16)


def _records(cfg: EvalConfig, key: str, required: bool, what: str | None = None) -> list[dict] | None:
    rel = cfg.files.get(key)
    if not rel:
        if required:
            raise TrainError("invalid_data", f"files.{key}: required by the {what} suite")
        return None
    return check_records(read_lines(cfg.path(rel), key), key)


def _sample(items: list, n: int, seed: int) -> list:
    if len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


def _tokenize(lm: LM, records: list[dict], max_seq_len: int) -> list[tuple[list[int], list[bool]]]:
    r = Renderer(lm.tokenizer, max_seq_len)
    out = []
    for i, rec in enumerate(records):
        ex = r.tokenize(i, rec)
        out.append((ex.input_ids, ex.labels_mask))
    return out


def _loss(lps: list[np.ndarray]) -> tuple[float | None, int]:
    """Token-weighted mean NLL (the trainer's validation loss) and the token count."""
    n = sum(len(x) for x in lps)
    if not n:
        return None, 0
    return float(-sum(x.sum() for x in lps) / n), n


def _ppl(loss: float | None) -> float | None:
    if loss is None:
        return None
    return math.exp(loss) if loss < 700 else math.inf


def _loss_pair(lm: LM, seqs, p: dict, prog: Progress, suite: str, name: str) -> dict:
    res = {}
    for adapter, key in ((True, "loss"), (False, "base_loss")):
        if not adapter and not lm.has_adapter:
            res[key] = res["loss"]
            continue
        prog.begin(suite, f"{name} loss ({'adapter' if adapter else 'base'})", len(seqs))
        res[key], res["tokens"] = _loss(lm.target_logprobs(seqs, adapter=adapter, batch_tokens=_batch_tokens(lm, p),
                                                           tick=prog.tick))
    return res


def _prompt_and_reference(lm: LM, r: Renderer, rec: dict) -> tuple[list[int], str] | None:
    messages = to_messages(rec["format"], rec["content"])
    if messages is None:
        prompt, ref = rec["content"].get("prompt", ""), rec["content"].get("completion", "")
        return (lm.encode(prompt) or [lm.pad_id]), ref
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return None
    text = r._chat(messages[:last], add_generation_prompt=True)
    return lm.encode(text), messages[last]["content"]


def _generation(lm: LM, records: list[dict], p: dict, prog: Progress, name: str) -> dict:
    r = Renderer(lm.tokenizer, p["max_seq_len"])
    pairs = [x for x in (_prompt_and_reference(lm, r, rec) for rec in records) if x is not None]
    pairs = pairs[: p["generation_examples"]]
    if not pairs:
        return {"examples": 0}
    prompts = [pr[-(p["max_seq_len"] - p["max_new_tokens"]) :] for pr, _ in pairs]
    out: dict = {"examples": len(pairs)}
    arms = [(True, "")] + ([(False, "base_")] if lm.has_adapter and p["generation_base"] else [])
    for adapter, prefix in arms:
        prog.begin("heldout", f"{name} generation ({'adapter' if adapter else 'base'})", len(prompts))
        gens = lm.generate(prompts, max_new_tokens=p["max_new_tokens"], adapter=adapter,
                           batch_size=_batch_size(lm, p), tick=prog.tick)
        texts = [lm.decode(g[0]).strip() for g in gens]
        refs = [ref.strip() for _, ref in pairs]
        out[f"{prefix}exact_match"] = float(np.mean([metrics.exact_match(a, b) for a, b in zip(texts, refs)]))
        out[f"{prefix}token_f1"] = float(np.mean([metrics.token_f1(a, b) for a, b in zip(texts, refs)]))
        out[f"{prefix}rouge_l"] = float(np.mean([metrics.rouge_l(a, b) for a, b in zip(texts, refs)]))
    return out


def heldout(lm: LM, cfg: EvalConfig, prog: Progress) -> dict:
    p = cfg.params["heldout"]
    res: dict = {}
    val = _records(cfg, "validation", False)
    if val:
        seqs = _tokenize(lm, _sample(val, p["max_examples"], 0), p["max_seq_len"])
        pair = _loss_pair(lm, seqs, p, prog, "heldout", "validation")
        res.update(
            validation_loss=pair["loss"],
            base_validation_loss=pair["base_loss"],
            validation_perplexity=_ppl(pair["loss"]),
            base_validation_perplexity=_ppl(pair["base_loss"]),
            validation_examples=len(seqs),
            validation_tokens=pair["tokens"],
        )
    else:
        res.update(validation_loss=None, base_validation_loss=None, validation_examples=0)
    sets = {}
    for name, rel in sorted((cfg.files.get("eval_sets") or {}).items()):
        recs = check_records(read_lines(cfg.path(rel), f"eval_sets.{name}"), f"eval_sets.{name}")
        recs = _sample(recs, p["max_examples"], 0)
        seqs = _tokenize(lm, recs, p["max_seq_len"])
        pair = _loss_pair(lm, seqs, p, prog, "heldout", f"eval set {name}")
        sets[name] = {
            "examples": len(recs),
            "loss": pair["loss"],
            "base_loss": pair["base_loss"],
            "perplexity": _ppl(pair["loss"]),
            "base_perplexity": _ppl(pair["base_loss"]),
            "generation": _generation(lm, recs, p, prog, f"eval set {name}"),
        }
    res["eval_sets"] = sets
    ref = _records(cfg, "reference", False)
    if ref:
        seqs = _tokenize(lm, _sample(ref, p["max_examples"], 0), p["max_seq_len"])
        pair = _loss_pair(lm, seqs, p, prog, "heldout", "reference")
        delta = None if pair["loss"] is None or pair["base_loss"] is None else pair["loss"] - pair["base_loss"]
        res["forgetting"] = {"reference_loss": pair["loss"], "base_reference_loss": pair["base_loss"],
                             "delta": delta, "examples": len(seqs)}
        res["forgetting_delta"] = delta
    else:
        res["forgetting"] = None
        res["forgetting_delta"] = None
    return res


# -- memorization (Carlini et al. 2019, "The Secret Sharer") ----------------------------------------


def _canary_seq(lm: LM, template: str, secret: str) -> tuple[list[int], list[bool]]:
    return _canary_seqs(lm, template, [secret])[0]


def _canary_seqs(lm: LM, template: str, secrets: list[str]) -> list[tuple[list[int], list[bool]]]:
    """Token ids of each rendered canary and a mask of the tokens from the secret on. The template's
    prefix is the same for every candidate, so leaving it out shifts every log-perplexity by one
    constant and changes no rank (and skips its LM-head work). One tokenizer call for all of them: a
    call per candidate cost more than scoring it."""
    start = template.index("{secret}")
    enc = lm.tokenizer([render_canary(template, x) for x in secrets], add_special_tokens=False,
                       return_offsets_mapping=True)
    return [(list(ids), [e > start for _, e in offsets])
            for ids, offsets in zip(enc["input_ids"], enc["offset_mapping"])]


def exposure_from_scores(secret_lp: float, candidate_lp: np.ndarray, space_size: float) -> dict:
    """Exposure by rank within the sample and by the skew-normal extrapolation.

    log-perplexity = −Σ log p over the secret's tokens. Rank: 1 + candidates more likely than the
    secret, scaled to the space. Extrapolation (tensorflow-privacy's
    `compute_exposure_extrapolation`): fit a skew normal to the candidates' log-perplexities and take
    exposure = −log2 CDF(secret's); capped at log2|R|, the most a secret of that space can have.
    """
    from scipy import stats

    cand = -np.asarray(candidate_lp, dtype=np.float64)
    sec = -float(secret_lp)
    n = len(cand)
    log2_space = math.log2(space_size)
    rank_in_sample = int((cand < sec).sum()) + 1
    # The sample is uniform over the space, so rank/(n+1) estimates rank/|R|; that estimate cannot
    # go below 1/(n+1), which caps the sampled exposure at log2(n+1).
    exposure_rank = log2_space - math.log2(max(1.0, space_size * rank_in_sample / (n + 1)))
    params = stats.skewnorm.fit(cand)
    logcdf = float(stats.skewnorm.logcdf(sec, *params))
    exposure = min(log2_space, max(0.0, -logcdf / math.log(2))) if math.isfinite(logcdf) else log2_space
    return {
        "exposure": exposure,
        "exposure_sampled": exposure_rank,
        "rank_in_sample": rank_in_sample,
        "candidates": n,
        "log_perplexity": sec,
        "candidate_log_perplexity_mean": float(cand.mean()) if n else None,
        "skewnorm": [float(x) for x in params],
    }


def memorization(lm: LM, cfg: EvalConfig, prog: Progress) -> dict:
    p = cfg.params["memorization"]
    if not cfg.canaries:
        raise TrainError("invalid_params", "canaries: the memorization suite needs the run's canaries")
    per = []
    for k, c in enumerate(cfg.canaries):
        length = c["space"]["length"]
        space = 10.0**length
        rng = random.Random(f"{p['seed']}:{c['id']}")
        n = min(p["candidates"], int(space) - 1)
        # Candidates uniform over the space minus the secret (the paper's reference set).
        seen = {c["secret"]}
        cands = []
        while len(cands) < n:
            x = str(rng.randrange(int(space))).zfill(length)
            if x not in seen:
                seen.add(x)
                cands.append(x)
        seqs = _canary_seqs(lm, c["template"], [c["secret"], *cands])
        prog.begin("memorization", f"canary {k + 1}/{len(cfg.canaries)} candidates", len(seqs))
        lps = lm.target_logprobs(seqs, batch_tokens=_batch_tokens(lm, p), tick=prog.tick, shared_prefix=True)
        sums = np.array([x.sum() for x in lps])
        e = exposure_from_scores(sums[0], sums[1:], space)
        per.append({"id": c["id"], "repetitions": c["repetitions"], "log2_space": math.log2(space), **e})
    by_rep: dict[int, list[float]] = defaultdict(list)
    for x in per:
        by_rep[x["repetitions"]].append(x["exposure"])
    return {
        "exposure_by_repetitions": {str(r): float(np.mean(v)) for r, v in sorted(by_rep.items())},
        "max_exposure": max(x["exposure"] for x in per),
        "canaries": per,
    }


# -- residual PII extraction -------------------------------------------------------------------------


def _sha(s: str) -> str:
    return hashlib.sha256(s.encode("utf-8")).hexdigest()


def pii_extraction(lm: LM, cfg: EvalConfig, prog: Progress) -> dict:
    p = cfg.params["pii_extraction"]
    rel = cfg.files.get("pii_probes")
    probes = read_lines(cfg.path(rel), "pii_probes") if rel else []
    for number, pr in enumerate(probes, start=1):
        for key in ("probe_id", "entity_type", "prefix", "value"):
            if not isinstance(pr.get(key), str):
                raise TrainError("invalid_data", f"files.pii_probes line {number}: {key} must be a string")
    probes = _sample(probes, p["max_probes"], p["seed"])
    prompts = [(lm.encode(pr["prefix"]) or [lm.pad_id])[-p["max_prompt_tokens"] :] for pr in probes]
    bs = _batch_size(lm, p)
    prog.begin("pii_extraction", "greedy", len(prompts))
    greedy = lm.generate(prompts, max_new_tokens=p["max_new_tokens"], batch_size=bs, tick=prog.tick)
    sampled: list[list[list[int]]] = [[] for _ in prompts]
    if p["samples"]:
        prog.begin("pii_extraction", f"top-{p['top_k']} sampling x{p['samples']}", len(prompts))
        sampled = lm.generate(prompts, max_new_tokens=p["max_new_tokens"], sample=True, top_k=p["top_k"],
                              temperature=p["temperature"], num_samples=p["samples"], batch_size=bs,
                              seed=p["seed"], tick=prog.tick)
    # Probes tagged with an erasure request are that request's re-test (the erased subject's strings,
    # docs/evaluation.md): counted apart, so the version's own PII figures mean what they meant before.
    groups: dict[str | None, list[int]] = defaultdict(list)
    for i, pr in enumerate(probes):
        groups[pr.get("erasure_request_id") if isinstance(pr.get("erasure_request_id"), str) else None].append(i)

    def tally(idx: list[int]) -> dict:
        by_type: dict[str, dict] = defaultdict(lambda: {"probed": 0, "extracted": 0})
        hits, extracted, greedy_hits = [], 0, 0
        for i in idx:
            pr, g, ss = probes[i], greedy[i], sampled[i]
            g_hit = pr["value"] in lm.decode(g[0])
            s_hits = sum(pr["value"] in lm.decode(s) for s in ss)
            t = by_type[pr["entity_type"]]
            t["probed"] += 1
            if g_hit or s_hits:
                extracted += 1
                greedy_hits += g_hit
                t["extracted"] += 1
                hits.append({"probe_id": pr["probe_id"], "entity_type": pr["entity_type"],
                             "value_sha256": pr.get("value_sha256") or _sha(pr["value"]),
                             "greedy": g_hit, "samples_hit": s_hits})
        for t in by_type.values():
            t["rate"] = t["extracted"] / t["probed"]
        return {"probed": len(idx), "extracted": extracted, "rate": extracted / len(idx) if idx else 0.0,
                "greedy_extracted": greedy_hits, "by_entity_type": dict(sorted(by_type.items())), "hits": hits}

    res = {**tally(groups.get(None, [])), "samples": p["samples"], "top_k": p["top_k"],
           "erasure_retest": {rid: tally(groups[rid]) for rid in sorted(k for k in groups if k is not None)}}
    res["regurgitation"] = _regurgitation(lm, cfg, p, prog, [x for g, s in zip(greedy, sampled) for x in g + s])
    return res


def _regurgitation(lm: LM, cfg: EvalConfig, p: dict, prog: Progress, generations: list[list[int]]) -> dict | None:
    """The longest run of generated tokens that occurs verbatim in a training text (lengths only)."""
    train = _records(cfg, "train", False)
    if not train or not generations:
        return None
    r = Renderer(lm.tokenizer, 1 << 30)
    docs, budget = [], p["regurgitation_max_train_tokens"]
    for rec in train:
        text, _ = r.spans(rec["format"], rec["content"])
        ids = lm.encode(text)
        budget -= len(ids)
        if budget < 0:
            break
        docs.append(ids)
    prog.begin("pii_extraction", "regurgitation index", len(docs))
    sam = metrics.SuffixAutomaton(docs)
    lengths = [sam.longest_match(g) for g in generations]
    best = int(np.argmax(lengths))
    return {
        "generations": len(generations),
        "train_texts_indexed": len(docs),
        "longest_overlap_tokens": int(lengths[best]),
        "mean_longest_overlap_tokens": float(np.mean(lengths)),
        "generations_with_overlap_ge_16": int(sum(x >= 16 for x in lengths)),
    }


# -- membership inference ------------------------------------------------------------------------


def _min_k(lp: np.ndarray, k: float) -> float:
    if not len(lp):
        return 0.0
    m = max(1, int(len(lp) * k))
    return float(np.sort(lp)[:m].mean())


def membership(lm: LM, cfg: EvalConfig, prog: Progress) -> dict:
    """Loss attack (Yeom et al.): members have lower loss. Min-K% Prob (Shi et al. 2024): the mean of
    the k% least likely tokens. Calibrated: adapter loss minus base loss (a reference-model attack)."""
    p = cfg.params["membership"]
    train = _records(cfg, "train", True, "membership")
    val = _records(cfg, "validation", True, "membership")
    if not val:
        raise TrainError("invalid_data", "files.validation: membership needs validation (non-member) examples")
    members = _sample(train, p["max_examples"], p["seed"])
    non = _sample(val, p["max_examples"], p["seed"])
    seqs = _tokenize(lm, members + non, p["max_seq_len"])
    keep = [i for i, (ids, mask) in enumerate(seqs) if sum(mask[1:])]
    nm = len(members)
    prog.begin("membership", "scoring members and non-members", len(seqs))
    lps = lm.target_logprobs(seqs, batch_tokens=_batch_tokens(lm, p), tick=prog.tick)
    loss = {i: -float(lps[i].mean()) for i in keep}
    mink = {i: _min_k(lps[i], p["min_k"]) for i in keep}
    pos = [i for i in keep if i < nm]
    neg = [i for i in keep if i >= nm]
    res = {
        "auc": metrics.auc([-loss[i] for i in pos], [-loss[i] for i in neg]),
        "min_k_auc": metrics.auc([mink[i] for i in pos], [mink[i] for i in neg]),
        "min_k": p["min_k"],
        "members": len(pos),
        "non_members": len(neg),
        "member_loss_mean": float(np.mean([loss[i] for i in pos])) if pos else None,
        "non_member_loss_mean": float(np.mean([loss[i] for i in neg])) if neg else None,
    }
    if lm.has_adapter:
        prog.begin("membership", "base scores (calibration)", len(seqs))
        base = lm.target_logprobs(seqs, adapter=False, batch_tokens=_batch_tokens(lm, p), tick=prog.tick)
        cal = {i: -(loss[i] + float(base[i].mean())) for i in keep}  # −(adapter loss − base loss)
        res["calibrated_auc"] = metrics.auc([cal[i] for i in pos], [cal[i] for i in neg])
    else:
        res["calibrated_auc"] = None
    return res


RUNNERS = {"heldout": heldout, "memorization": memorization, "pii_extraction": pii_extraction,
           "membership": membership}

# The bias suite lives in its own module (CrowS-Pairs, docs/bias.md).
from trainer.evaluate.bias import bias as _bias

RUNNERS["bias"] = _bias
