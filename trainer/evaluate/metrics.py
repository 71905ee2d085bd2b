"""Text and ranking metrics: SQuAD-style exact match and token F1, ROUGE-L (rouge-score), AUC,
and the longest verbatim overlap of a generation with a training corpus (suffix automaton)."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize(text: str) -> str:
    """SQuAD's answer normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize(prediction) == normalize(reference))


def token_f1(prediction: str, reference: str) -> float:
    p, r = normalize(prediction).split(), normalize(reference).split()
    if not p or not r:
        return float(p == r)
    common = sum((Counter(p) & Counter(r)).values())
    if not common:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


_rouge = None


def rouge_l(prediction: str, reference: str) -> float:
    global _rouge
    if _rouge is None:
        from rouge_score import rouge_scorer

        _rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return float(_rouge.score(reference, prediction)["rougeL"].fmeasure)


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float | None:
    """P(score of a positive > score of a negative), ties counting one half (Mann–Whitney U)."""
    from scipy.stats import rankdata

    n_pos, n_neg = len(positives), len(negatives)
    if not n_pos or not n_neg:
        return None
    ranks = rankdata(np.concatenate([np.asarray(positives, float), np.asarray(negatives, float)]))
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


class SuffixAutomaton:
    """All substrings of a token corpus; `longest_match(seq)` is the longest run of `seq` that occurs
    in it, in time linear in `seq`. Documents are joined with a separator no query contains, so a
    match never spans two documents."""

    def __init__(self, docs: Iterable[Sequence[int]]):
        self.next: list[dict[int, int]] = [{}]
        self.link: list[int] = [-1]
        self.length: list[int] = [0]
        last = 0
        sep = -1
        for doc in docs:
            for tok in doc:
                last = self._extend(last, tok)
            last = self._extend(last, sep)
            sep -= 1

    def _extend(self, last: int, c: int) -> int:
        nxt, link, length = self.next, self.link, self.length
        cur = len(length)
        nxt.append({})
        length.append(length[last] + 1)
        link.append(0)
        p = last
        while p != -1 and c not in nxt[p]:
            nxt[p][c] = cur
            p = link[p]
        if p != -1:
            q = nxt[p][c]
            if length[p] + 1 == length[q]:
                link[cur] = q
            else:
                clone = len(length)
                nxt.append(dict(nxt[q]))
                length.append(length[p] + 1)
                link.append(link[q])
                while p != -1 and nxt[p].get(c) == q:
                    nxt[p][c] = clone
                    p = link[p]
                link[q] = clone
                link[cur] = clone
        return cur

    def longest_match(self, seq: Sequence[int]) -> int:
        nxt, link, length = self.next, self.link, self.length
        state, cur, best = 0, 0, 0
        for c in seq:
            while state and c not in nxt[state]:
                state = link[state]
                cur = length[state]
            if c in nxt[state]:
                state = nxt[state][c]
                cur += 1
            else:
                state, cur = 0, 0
            best = max(best, cur)
        return best
