"""The line shapes a `preference` import accepts, turned into our one content shape.

Our content: `{"prompt": str | [messages ending with a user turn], "chosen": str, "rejected": str}`;
the answers are the final assistant turn only, so two imports of one comparison from different tools
hash the same. Shapes (detected per line, or forced with `?shape=`):

- `trl`: `prompt`/`chosen`/`rejected`, strings or message lists (TRL's conversational shape); without a
  `prompt`, chosen and rejected are whole conversations and their shared turns are the prompt
  (TRL's "implicit prompt").
- `openai`: `{"input": {"messages"}, "preferred_output": [assistant], "non_preferred_output": [assistant]}`
  (OpenAI's fine-tuning API, `method.type: dpo`).
- `hh`: Anthropic HH-RLHF, `chosen`/`rejected` transcripts of `Human:` / `Assistant:` turns; the turns they
  share are the prompt, their last assistant turns the answers.
- `oasst`: one OpenAssistant message tree per line; every prompter message with ranked assistant replies
  gives one pair per two ranked siblings (lower rank chosen), the path from the root its prompt. One line
  may so give many examples, each with a source_ref naming the tree and the two messages.

Pure functions; a shape error is a FieldError, which the import reports as that line's error.
"""

from __future__ import annotations

import re
from itertools import combinations
from typing import Any

from app.examples.formats import FieldError

SHAPES = ("trl", "openai", "hh", "oasst")
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


def detect(obj: dict[str, Any]) -> str:
    if isinstance(obj.get("input"), dict) or "preferred_output" in obj:
        return "openai"
    prompt = obj.get("prompt")
    if isinstance(prompt, dict) and ("replies" in prompt or "message_tree_id" in obj):
        return "oasst"
    if "prompt" not in obj and isinstance(obj.get("chosen"), str) and isinstance(obj.get("rejected"), str):
        return "hh"
    return "trl"


def expand(obj: Any, shape: str | None) -> list[dict[str, Any]]:
    """One decoded line as a list of objects in our shape (content fields plus whatever else the line
    carried: provenance and extra keys, which the import keeps as metadata)."""
    if not isinstance(obj, dict):
        raise FieldError("$", "type", f"each example must be a JSON object, got {type(obj).__name__}")
    shape = shape or detect(obj)
    if shape == "openai":
        return [_openai(obj)]
    if shape == "hh":
        return [_hh(obj)]
    if shape == "oasst":
        return _oasst(obj)
    return [_trl(obj)]


def _messages(value: Any, field: str) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise FieldError(field, "type", f"{field} must be a non-empty array of messages")
    out = []
    for i, m in enumerate(value):
        path = f"{field}[{i}]"
        if not isinstance(m, dict):
            raise FieldError(path, "type", f"{path} must be an object with role and content")
        role = _ROLES.get(m.get("role"))
        if role is None:
            raise FieldError(f"{path}.role", "invalid", f"{path}.role must be system, user or assistant")
        content = m.get("content")
        if not isinstance(content, str):
            raise FieldError(f"{path}.content", "type", f"{path}.content must be a string")
        out.append({"role": role, "content": content})
    return out


def _answer(value: Any, field: str) -> str:
    """A string, or a message list that is one assistant turn."""
    if isinstance(value, str):
        return value
    msgs = _messages(value, field)
    if len(msgs) != 1 or msgs[0]["role"] != "assistant":
        raise FieldError(field, "invalid", f"{field} must be one assistant message")
    return msgs[0]["content"]


def _rest(obj: dict[str, Any], used: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in used}


def _split_shared(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]], field: str) -> tuple[Any, str, str]:
    """Two whole conversations -> (shared prompt, last chosen turn, last rejected turn)."""
    if chosen[-1]["role"] != "assistant" or rejected[-1]["role"] != "assistant":
        raise FieldError(field, "order", "both conversations must end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise FieldError(field, "no_shared_prompt",
                         "chosen and rejected do not share every turn before their last assistant turn")
    if not chosen[:-1] or chosen[-2]["role"] != "user":
        raise FieldError(field, "no_shared_prompt", "no user turn before the answers: there is no prompt")
    return chosen[:-1], chosen[-1]["content"], rejected[-1]["content"]


def _trl(obj: dict[str, Any]) -> dict[str, Any]:
    for f in ("chosen", "rejected"):
        if f not in obj:
            raise FieldError(f, "missing", f"{f} is required")
    if "prompt" not in obj:
        if isinstance(obj["chosen"], str) or isinstance(obj["rejected"], str):
            raise FieldError("prompt", "missing", "prompt is required (or chosen and rejected as whole conversations)")
        prompt, chosen, rejected = _split_shared(_messages(obj["chosen"], "chosen"),
                                                 _messages(obj["rejected"], "rejected"), "chosen")
    else:
        p = obj["prompt"]
        prompt = p if isinstance(p, str) else _messages(p, "prompt")
        chosen, rejected = _answer(obj["chosen"], "chosen"), _answer(obj["rejected"], "rejected")
    return {**_rest(obj, ("prompt", "chosen", "rejected")), "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _openai(obj: dict[str, Any]) -> dict[str, Any]:
    inp = obj.get("input")
    if not isinstance(inp, dict):
        raise FieldError("input", "missing" if inp is None else "type", "input must be an object with messages")
    if "messages" not in inp:
        raise FieldError("input.messages", "missing", "input.messages is required")
    out = {**_rest(obj, ("input", "preferred_output", "non_preferred_output")),
           "prompt": _messages(inp["messages"], "input.messages")}
    # tools, parallel_tool_calls, ...: kept with the line's metadata rather than dropped.
    extra = _rest(inp, ("messages",))
    if extra:
        out["input"] = extra
    for src, dst in (("preferred_output", "chosen"), ("non_preferred_output", "rejected")):
        if src not in obj:
            raise FieldError(src, "missing", f"{src} is required")
        out[dst] = _answer(obj[src], src)
    return out


def hh_turns(transcript: str, field: str) -> list[dict[str, Any]]:
    parts = _HH_TURN.split(transcript)
    if parts[0].strip():
        raise FieldError(field, "invalid", f"{field} has text before its first Human: or Assistant: turn")
    turns: list[dict[str, Any]] = []
    for speaker, text in zip(parts[1::2], parts[2::2], strict=True):
        role = "user" if speaker == "Human" else "assistant"
        if turns and turns[-1]["role"] == role:
            # HH has a few transcripts with two turns of one speaker in a row: one turn, as a reader sees it.
            turns[-1]["content"] += "\n\n" + text
        else:
            turns.append({"role": role, "content": text})
    if not turns:
        raise FieldError(field, "invalid", f"{field} has no Human: / Assistant: turns")
    return turns


def _hh(obj: dict[str, Any]) -> dict[str, Any]:
    for f in ("chosen", "rejected"):
        if not isinstance(obj.get(f), str):
            raise FieldError(f, "missing" if f not in obj else "type", f"{f} must be a transcript string")
    prompt, chosen, rejected = _split_shared(hh_turns(obj["chosen"], "chosen"),
                                             hh_turns(obj["rejected"], "rejected"), "chosen")
    return {**_rest(obj, ("chosen", "rejected")), "prompt": prompt, "chosen": chosen, "rejected": rejected}


def _oasst(obj: dict[str, Any]) -> list[dict[str, Any]]:
    root = obj.get("prompt")
    if not isinstance(root, dict) or root.get("role") != "prompter" or not isinstance(root.get("text"), str):
        raise FieldError("prompt", "invalid", "an OpenAssistant tree's prompt must be a prompter message")
    tree_id = str(obj.get("message_tree_id") or root.get("message_id") or "")
    out: list[dict[str, Any]] = []
    base_prov = obj.get("provenance") if isinstance(obj.get("provenance"), dict) else {}
    rest = _rest(obj, ("prompt", "provenance"))

    def usable(m: Any) -> bool:
        return isinstance(m, dict) and not m.get("deleted") and m.get("review_result") is not False \
            and isinstance(m.get("text"), str)

    # Iterative walk: trees can be deep, and a hostile one must not hit the recursion limit.
    stack: list[tuple[dict[str, Any], list[dict[str, Any]]]] = [(root, [])]
    while stack:
        node, path = stack.pop()
        role = "user" if node.get("role") == "prompter" else "assistant"
        conv = [*path, {"role": role, "content": node["text"]}]
        replies = [r for r in node.get("replies") or [] if usable(r)]
        if role == "user":
            ranked = sorted((r for r in replies if isinstance(r.get("rank"), int) and r.get("role") == "assistant"),
                            key=lambda r: r["rank"])
            for better, worse in combinations(ranked, 2):
                if better["rank"] == worse["rank"]:
                    continue
                ref = f"{tree_id}/{better.get('message_id')}/{worse.get('message_id')}"
                out.append({
                    **rest, "prompt": conv, "chosen": better["text"], "rejected": worse["text"],
                    "provenance": {**base_prov, "source_ref": ref},
                    "message_tree_id": tree_id, "parent_id": node.get("message_id"),
                    "chosen_id": better.get("message_id"), "rejected_id": worse.get("message_id"),
                    "chosen_rank": better["rank"], "rejected_rank": worse["rank"], "lang": node.get("lang"),
                })
        stack.extend((r, conv) for r in reversed(replies))
    if not out:
        raise FieldError("prompt", "no_pairs", "the tree has no prompter message with two ranked replies")
    return out
