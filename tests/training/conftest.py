from __future__ import annotations

import json


def dumps(x) -> str:
    return json.dumps(x, sort_keys=True)
