"""Snapshot export formats as pure functions of one example's content: no database, no web framework, so the
exporters, the trainer's tests and bench.dpo (which runs on a GPU host without the API's dependencies) all use
the one definition of what a TRL or OpenAI DPO line is."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

JSONL_FORMATS = ("pedigree", "openai-chat", "alpaca", "completion", "openai-dpo", "trl")
PREFERENCE_ONLY = ("openai-dpo", "trl")


def _user_text(instruction: str, inp: str) -> str:
    return f"{instruction}\n\n{inp}" if inp else instruction


def _prompt_messages(prompt: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt


def _prompt_text(prompt: str | list[dict[str, Any]]) -> str:
    return prompt if isinstance(prompt, str) else prompt[-1]["content"]


def _messages(fmt: str, c: dict[str, Any]) -> list[dict[str, Any]]:
    if fmt == "chat":
        return c["messages"]
    if fmt == "instruction":
        return [{"role": "user", "content": _user_text(c["instruction"], c.get("input", ""))},
                {"role": "assistant", "content": c["output"]}]
    if fmt == "completion":
        return [{"role": "user", "content": c["prompt"]}, {"role": "assistant", "content": c["completion"]}]
    return [*_prompt_messages(c["prompt"]), {"role": "assistant", "content": c["chosen"]}]


def to_openai_dpo(fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    return {"input": {"messages": _prompt_messages(c["prompt"])},
            "preferred_output": [{"role": "assistant", "content": c["chosen"]}],
            "non_preferred_output": [{"role": "assistant", "content": c["rejected"]}]}


def to_trl(fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": _prompt_messages(c["prompt"]), "chosen": [{"role": "assistant", "content": c["chosen"]}],
            "rejected": [{"role": "assistant", "content": c["rejected"]}]}


def to_openai_chat(fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    if fmt == "preference":
        return to_openai_dpo(fmt, c)
    return {"messages": _messages(fmt, c)}


def to_alpaca(fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    if fmt == "instruction":
        return {"instruction": c["instruction"], "input": c.get("input", ""), "output": c["output"]}
    if fmt == "completion":
        return {"instruction": c["prompt"], "input": "", "output": c["completion"]}
    if fmt == "preference":
        out = _alpaca_turns(_prompt_messages(c["prompt"]))
        out.update(chosen=c["chosen"], rejected=c["rejected"])
        return out
    msgs = c["messages"]
    out: dict[str, Any] = {}
    if msgs and msgs[0]["role"] == "system":
        out["system"] = msgs[0]["content"]
        msgs = msgs[1:]
    # Validated chats alternate user/assistant and end with the assistant.
    pairs = [(msgs[i]["content"], msgs[i + 1]["content"]) for i in range(0, len(msgs) - 1, 2)]
    last_user, last_answer = pairs[-1]
    out.update(instruction=last_user, input="", output=last_answer)
    if len(pairs) > 1:
        out["history"] = [list(p) for p in pairs[:-1]]
    return out


def _alpaca_turns(msgs: list[dict[str, Any]]) -> dict[str, Any]:
    """A preference prompt (ending with the user) as LLaMA-Factory's system / history / instruction."""
    out: dict[str, Any] = {}
    if msgs[0]["role"] == "system":
        out["system"] = msgs[0]["content"]
        msgs = msgs[1:]
    out.update(instruction=msgs[-1]["content"], input="")
    if len(msgs) > 1:
        out["history"] = [[msgs[i]["content"], msgs[i + 1]["content"]] for i in range(0, len(msgs) - 1, 2)]
    return out


def to_completion(fmt: str, c: dict[str, Any]) -> dict[str, Any]:
    if fmt == "completion":
        return {"prompt": c["prompt"], "completion": c["completion"]}
    if fmt == "instruction":
        return {"prompt": _user_text(c["instruction"], c.get("input", "")), "completion": c["output"]}
    if fmt == "preference":
        if isinstance(c["prompt"], list):
            return {"prompt": c["prompt"], "completion": [{"role": "assistant", "content": c["chosen"]}]}
        return {"prompt": c["prompt"], "completion": c["chosen"]}
    msgs = c["messages"]
    return {"prompt": msgs[:-1], "completion": msgs[-1:]}


CONVERTERS: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
    "openai-chat": to_openai_chat, "alpaca": to_alpaca, "completion": to_completion,
    "openai-dpo": to_openai_dpo, "trl": to_trl,
}
