"""Snapshot export → verified records → token ids with a supervision mask.

The export is the trainer's only view of the data, so the hashes are re-checked here rather than
trusted: a snapshot that does not hash to what the run was created against must never be trained.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from trainer.errors import TrainError

FORMATS = ("chat", "instruction", "completion", "preference")
SPLITS = ("train", "validation")

# Used when the base model's tokenizer has no chat template (documented in docs/trainer.md).
DEFAULT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def content_sha256(content: dict) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def manifest_sha256(members: Iterable[tuple[str, str]]) -> str:
    """members: (content_sha256, split) pairs."""
    lines = sorted(f"{sha} {split}" for sha, split in members)
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def read_jsonl(lines: Iterable[str | bytes]) -> Iterator[dict]:
    for number, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            line = line.decode("utf-8")
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise TrainError("invalid_data", f"export line {number} is not JSON: {exc.msg}") from exc


def verify_records(records: Iterable[dict], expected_manifest: str | None) -> tuple[list[dict], str]:
    """Check every line's content hash and the manifest; return the records and the manifest hash."""
    out: list[dict] = []
    for number, rec in enumerate(records, start=1):
        for key in ("revision_id", "split", "format", "content", "content_sha256"):
            if key not in rec:
                raise TrainError("invalid_data", f"export record {number} lacks {key!r}")
        if rec["split"] not in SPLITS:
            raise TrainError("invalid_data", f"export record {number} has split {rec['split']!r}")
        if rec["format"] not in FORMATS:
            raise TrainError("invalid_data", f"export record {number} has format {rec['format']!r}")
        actual = content_sha256(rec["content"])
        if actual != rec["content_sha256"]:
            raise TrainError(
                "manifest_mismatch",
                f"record {number} (revision {rec['revision_id']}): content hashes to {actual}, "
                f"export says {rec['content_sha256']}",
            )
        out.append(rec)
    manifest = manifest_sha256((r["content_sha256"], r["split"]) for r in out)
    if expected_manifest and manifest != expected_manifest:
        raise TrainError(
            "manifest_mismatch", f"snapshot export hashes to {manifest}, the run expects {expected_manifest}"
        )
    return out, manifest


@dataclass
class Tokenized:
    """One example as the packer sees it. `labels_mask[i]` says whether token i is a target."""

    index: int
    revision_id: str
    input_ids: list[int]
    labels_mask: list[bool]
    truncated: bool = False
    meta: dict = field(default_factory=dict)

    @property
    def supervised(self) -> int:
        # Token 0 is never a target: there is nothing before it to predict it from.
        return sum(self.labels_mask[1:])


def to_messages(fmt: str, content: dict) -> list[dict] | None:
    """The chat view of an example; None for raw completions, which are not templated."""
    if fmt == "chat":
        return [{"role": m["role"], "content": m["content"]} for m in content["messages"]]
    if fmt == "instruction":
        user = content.get("instruction", "")
        if content.get("input"):
            user = f"{user}\n\n{content['input']}"
        return [
            {"role": "user", "content": user},
            {"role": "assistant", "content": content.get("output", "")},
        ]
    if fmt == "preference":
        # SFT (lora, qlora, full) trains on the chosen answer; method "dpo" uses both (trainer.dpo).
        return [*prompt_messages(content["prompt"]), {"role": "assistant", "content": content["chosen"]}]
    return None


def prompt_messages(prompt: str | list[dict]) -> list[dict]:
    """A preference prompt (a string, or a conversation ending with the user) as chat messages."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    return [{"role": m["role"], "content": m["content"]} for m in prompt]


class Renderer:
    def __init__(self, tokenizer, max_seq_len: int):
        self.tok = tokenizer
        self.max_seq_len = max_seq_len
        self.template = getattr(tokenizer, "chat_template", None) or DEFAULT_CHAT_TEMPLATE
        self.eos = tokenizer.eos_token or ""

    def _chat(self, messages, **kw) -> str:
        return self.tok.apply_chat_template(messages, chat_template=self.template, tokenize=False, **kw)

    def spans(self, fmt: str, content: dict) -> tuple[str, list[tuple[int, int]]]:
        """The rendered text and the character spans that are supervised."""
        messages = to_messages(fmt, content)
        if messages is None:
            prompt, completion = content.get("prompt", ""), content.get("completion", "")
            text = prompt + completion + self.eos
            return text, [(len(prompt), len(text))]
        # Render each prefix and diff: the assistant span is what the turn adds after the generation
        # prompt. This works for any template where a longer conversation extends a shorter one.
        full = self._chat(messages)
        spans = []
        # A preference prompt's earlier assistant turns are context; only the answer is a target.
        first = len(messages) - 1 if fmt == "preference" else 0
        for i, msg in enumerate(messages):
            if msg["role"] != "assistant" or i < first:
                continue
            before = self._chat(messages[:i], add_generation_prompt=True) if i else ""
            after = self._chat(messages[: i + 1])
            if not (full.startswith(after) and after.startswith(before)):
                raise TrainError("invalid_data", "chat template does not render conversations prefix-stably")
            spans.append((len(before), len(after)))
        return full, spans

    def tokenize(self, index: int, rec: dict) -> Tokenized:
        text, spans = self.spans(rec["format"], rec["content"])
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        mask = []
        for start, end in enc["offset_mapping"]:
            # A token belongs to a span if it starts inside it (BPE may straddle a boundary).
            mask.append(any(s <= start < e for s, e in spans) and end > start)
        truncated = len(ids) > self.max_seq_len
        if truncated:
            ids, mask = ids[: self.max_seq_len], mask[: self.max_seq_len]
        return Tokenized(index, rec["revision_id"], ids, mask, truncated, {"format": rec["format"]})
