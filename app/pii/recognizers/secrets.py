"""Credentials in text and code (entity type SECRET): cloud keys, tokens, private keys.

Each shape is one a provider documents and is rare by chance (a fixed prefix and length, a JWT whose first
part decodes to a JSON header, a PEM armour line); a value in an assignment to a secret-named variable is
taken only when it looks random (letters and digits mixed, no placeholder words). These run inside code
spans too: a key pasted into a code sample is the commonest leak of all.
"""

from __future__ import annotations

import base64
import binascii
import json
import re

from presidio_analyzer import LocalRecognizer

from app.pii.recognizers.common import make_result

_SHAPES: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("aws_access_key", re.compile(r"(?<![A-Z0-9])(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)"
                                  r"[A-Z0-9]{16}(?![A-Z0-9])"), 0.9),
    ("github_token", re.compile(r"(?<![\w])(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{60,255})"), 0.95),
    ("gitlab_token", re.compile(r"(?<![\w])glpat-[A-Za-z0-9_-]{20,}"), 0.95),
    ("slack_token", re.compile(r"(?<![\w])xox[abposr]-[A-Za-z0-9-]{10,250}"), 0.9),
    ("slack_webhook", re.compile(r"https://hooks\.slack\.com/services/T[A-Z0-9]+/B[A-Z0-9]+/[A-Za-z0-9]{16,}"), 0.95),
    ("google_api_key", re.compile(r"(?<![\w-])AIza[0-9A-Za-z_-]{35}(?![\w-])"), 0.9),
    ("stripe_key", re.compile(r"(?<![\w])(?:sk|rk|pk)_(?:live|test)_[0-9A-Za-z]{16,247}"), 0.9),
    ("openai_key", re.compile(r"(?<![\w-])sk-(?:proj-|svcacct-)?[A-Za-z0-9_-]{32,}(?![\w-])"), 0.8),
    ("private_key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----[\s\S]*?"
                               r"(?:-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"), 1.0),
)
_JWT = re.compile(r"(?<![\w-])eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{16,}(?![\w-])")
# `password = "hunter2x9"`, `"api_key": "..."`, `AWS_SECRET_ACCESS_KEY=...`: the value is group 1.
_ASSIGNED = re.compile(
    r"(?i)\b[\w-]*(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?key|auth[_-]?token|token|"
    r"client[_-]?secret|private[_-]?key)[\w-]*[\"']?\s*[:=]\s*[\"']?([A-Za-z0-9+/=_\-.!@#$%^&*]{12,200})[\"']?"
)
_PLACEHOLDER = re.compile(r"(?i)your|example|xxxx|changeme|placeholder|secret|password|token|dummy|sample|"
                          r"test|foo|bar|\*\*\*|<|>|\{|\}")


def _looks_random(value: str) -> bool:
    if _PLACEHOLDER.search(value):
        return False
    classes = sum(bool(re.search(p, value)) for p in (r"[a-z]", r"[A-Z]", r"\d"))
    return classes >= 2 and any(c.isdigit() for c in value) and len(set(value)) >= 8


def _jwt_ok(token: str) -> bool:
    head = token.split(".", 1)[0]
    try:
        decoded = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return False
    return isinstance(decoded, dict) and "alg" in decoded


class SecretRecognizer(LocalRecognizer):
    NAME = "SecretRecognizer"

    def __init__(self, supported_language: str = "en"):
        super().__init__(supported_entities=["SECRET"], supported_language=supported_language, name=self.NAME)

    def load(self) -> None:
        pass

    def analyze(self, text, entities, nlp_artifacts=None):
        if "SECRET" not in entities:
            return []
        out = []
        for _, pattern, score in _SHAPES:
            for m in pattern.finditer(text):
                out.append(make_result("SECRET", m.start(), m.end(), score, self.NAME, self.id))
        for m in _JWT.finditer(text):
            if _jwt_ok(m.group()):
                out.append(make_result("SECRET", m.start(), m.end(), 0.95, self.NAME, self.id))
        for m in _ASSIGNED.finditer(text):
            value = m.group(1)
            if _looks_random(value):
                out.append(make_result("SECRET", m.start(1), m.end(1), 0.7, self.NAME, self.id))
        return out
