"""Field paths inside example content: "messages[2].content", "chosen[0].content", "instruction"."""

from __future__ import annotations

import re
from typing import Any

_PATH_TOKEN = re.compile(r"([^.\[\]]+)|\[(\d+)\]")


def parse_path(path: str) -> list[str | int]:
    return [int(i) if i else k for k, i in _PATH_TOKEN.findall(path)]


def get_path(content: Any, path: str) -> Any:
    node = content
    for part in parse_path(path):
        node = node[part]
    return node


def set_path(content: Any, path: str, value: Any) -> None:
    parts = parse_path(path)
    node = content
    for part in parts[:-1]:
        node = node[part]
    node[parts[-1]] = value
