"""Per-dataset PII policy and the shapes the scrubber hands back.

The policy is stored as JSON on the dataset and validated here, so a bad regex or an unknown entity type is a
422 at the API, never a crash in a worker.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from app.core.schemas import Items, JsonObject, Out
from app.examples.schemas import PiiFindingOut

# Every type the engine can emit. A policy may name these plus the types of its own custom recognizers.
KNOWN_ENTITIES: frozenset[str] = frozenset(
    {
        "PERSON",
        "LOCATION",
        "STREET_ADDRESS",
        "ORGANIZATION",
        "NRP",
        "DATE_TIME",
        "DATE_OF_BIRTH",
        "EMAIL_ADDRESS",
        "PHONE_NUMBER",
        "CREDIT_CARD",
        "IBAN_CODE",
        "US_SSN",
        "US_ITIN",
        "US_PASSPORT",
        "US_DRIVER_LICENSE",
        "US_BANK_NUMBER",
        "UK_NHS",
        "IP_ADDRESS",
        "CRYPTO",
        "MEDICAL_LICENSE",
        "URL",
        "SECRET",
    }
)

# What a dataset scrubs when its policy says nothing. DATE_TIME, NRP, ORGANIZATION and URL are left out on
# purpose: in instruction data they are mostly not personal ("in 1990", "Google", a docs link) and scrubbing
# them would wreck the examples; a policy can add them. DATE_OF_BIRTH is a date after a birth cue or in a
# person's record (app/pii/recognizers/records.py), which does identify.
DEFAULT_ENTITIES: tuple[str, ...] = (
    "PERSON",
    "LOCATION",
    "STREET_ADDRESS",
    "DATE_OF_BIRTH",
    "EMAIL_ADDRESS",
    "PHONE_NUMBER",
    "CREDIT_CARD",
    "IBAN_CODE",
    "US_SSN",
    "US_ITIN",
    "US_PASSPORT",
    "US_BANK_NUMBER",
    "UK_NHS",
    "IP_ADDRESS",
    "CRYPTO",
    "MEDICAL_LICENSE",
    "SECRET",
)

_ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")
EntityName = Annotated[str, Field(pattern=_ENTITY_NAME.pattern)]


class OperatorType(StrEnum):
    placeholder = "placeholder"  # "<PERSON>"
    surrogate = "surrogate"  # a realistic fake, the same for the same value within one example
    mask = "mask"  # "************1234"
    hash = "hash"  # "<PERSON:3f2a9c0d1e4b>", HMAC with the service key: equal values hash equally
    redact = "redact"  # removed


class OperatorSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: OperatorType = OperatorType.placeholder
    masking_char: str = Field(default="*", min_length=1, max_length=1)
    # None masks every character; otherwise the last `keep_last` characters stay (card numbers, phones).
    keep_last: int | None = Field(default=None, ge=0, le=8)


class DenyList(BaseModel):
    """Values that are always PII for this dataset (e.g. internal project code names)."""

    model_config = ConfigDict(extra="forbid")

    entity_type: EntityName
    values: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(min_length=1, max_length=5000)


class CustomPattern(BaseModel):
    model_config = ConfigDict(extra="forbid")

    regex: str = Field(min_length=1, max_length=1000)
    score: float = Field(default=0.6, ge=0.0, le=1.0)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"invalid regex: {exc}") from exc
        return value


class CustomRecognizer(BaseModel):
    """A regex recognizer the dataset owner adds, e.g. internal customer ids `CUST-\\d{8}`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.-]+$")
    entity_type: EntityName
    patterns: list[CustomPattern] = Field(min_length=1, max_length=50)
    context: list[str] = Field(default_factory=list, max_length=50)


class ContextRules(BaseModel):
    """Where the name finders (spaCy's PERSON/LOCATION/ORG/NRP, the first-name gazetteer, cue-based names,
    street addresses) are not run. Validated patterns (email, IBAN, Luhn-checked cards, SSN, IP, secrets),
    the policy's own deny lists and custom recognizers run everywhere, code included."""

    model_config = ConfigDict(extra="forbid")

    # Fenced (``` or ~~~) blocks, inline `code`, and indented blocks whose lines read as code.
    code_spans: bool = True
    # Code-like lines outside any fence (identifiers, calls, operators): "auto" in a field where most lines
    # are code (a bare code answer), "on" everywhere (code datasets), "off" never.
    code_lines: Literal["off", "auto", "on"] = "auto"
    # The curated list of technologies, products, languages, foods and common nouns that NER mislabels
    # (app/pii/data/allow_terms.txt), on top of the policy's own allow_list.
    builtin_allow_list: bool = True


class PiiPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    entities: list[EntityName] = Field(default_factory=lambda: list(DEFAULT_ENTITIES))
    score_threshold: float = Field(default=0.4, ge=0.0, le=1.0)
    default_operator: OperatorSpec = Field(default_factory=OperatorSpec)
    operators: dict[EntityName, OperatorSpec] = Field(default_factory=dict)
    # Exact values (case-insensitive) that are never scrubbed, e.g. the company's own support address.
    allow_list: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=5000
    )
    # Values allowed by their token from the PII report (app/pii/tokens.py), for curators, who never see the
    # value itself. Same effect as the value on allow_list.
    allow_tokens: list[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]] = Field(default_factory=list, max_length=5000)
    deny_lists: list[DenyList] = Field(default_factory=list, max_length=50)
    custom_recognizers: list[CustomRecognizer] = Field(default_factory=list, max_length=50)
    language: str = Field(default="en", pattern=r"^[a-z]{2}$")
    # Longer fields are scrubbed in windows and flagged `oversize`; nothing is cut off.
    max_chars: int = Field(default=20_000, ge=200, le=1_000_000)
    # "keep": well-known places (countries, their first-level regions, cities of 20,000 people or more,
    # continents) and public figures from a curated list stay in the text; "scrub" treats them as any name.
    # docs/pii.md ("Public entities") says why keep is the default and what the lists cannot know.
    public_entities: Literal["keep", "scrub"] = "keep"
    context: ContextRules = Field(default_factory=ContextRules)

    @model_validator(mode="after")
    def _entities_known(self) -> PiiPolicy:
        own = {r.entity_type for r in self.custom_recognizers} | {d.entity_type for d in self.deny_lists}
        unknown = sorted(set(self.entities) - KNOWN_ENTITIES - own)
        if unknown:
            raise ValueError(f"unknown entity types {unknown}; known: {sorted(KNOWN_ENTITIES)} or a custom type")
        unknown_ops = sorted(set(self.operators) - set(self.entities))
        if unknown_ops:
            raise ValueError(f"operators given for entity types not scrubbed by this policy: {unknown_ops}")
        # A custom or deny-listed type is scrubbed even when the owner forgot to list it: that is the point.
        for extra in sorted(own - set(self.entities)):
            self.entities.append(extra)
        return self

    def operator_for(self, entity_type: str) -> OperatorSpec:
        return self.operators.get(entity_type, self.default_operator)


class FindingOut(BaseModel):
    """One detected span, as the API shows it: types, spans and operators, never the raw value."""

    id: str | None = None
    field_path: str
    entity_type: str
    start: int
    end: int
    scrubbed_start: int
    scrubbed_end: int
    score: float
    recognizer: str
    operator: str
    engine: str
    model: str
    verdict: str | None = None



# --- request and response bodies of the PII routes ---------------------------------------------------------


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    verdict: Literal["confirmed", "false_positive"]


class MissedSpanIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    field_path: str = Field(min_length=1, max_length=200)
    # Offsets are integer columns.
    start: int = Field(ge=0, le=2**31 - 1)
    end: int = Field(ge=1, le=2**31 - 1)
    entity_type: EntityName


class AllowIn(BaseModel):
    """One value to allow: as itself, or as its token from the PII report (what a curator can see)."""

    model_config = ConfigDict(extra="forbid")

    value: str | None = Field(default=None, min_length=1, max_length=200)
    token: str | None = Field(default=None, pattern=r"^[0-9a-f]{16}$")

    @model_validator(mode="after")
    def _one(self) -> AllowIn:
        if (self.value is None) == (self.token is None):
            raise ValueError("give exactly one of value or token")
        if self.value is not None and not self.value.strip():
            raise ValueError("value is blank")
        return self


class PiiPolicyIn(PiiPolicy):
    # What GET returns can be PUT back as it is: the profile rides along, and changes the dataset's
    # profile when it names another one.
    pii_profile: str | None = Field(default=None, max_length=40)

    @field_validator("pii_profile")
    @classmethod
    def _profile(cls, value: str | None) -> str | None:
        return None if value is None else check_profile(value)


class PiiPolicyOut(PiiPolicy):
    """The effective policy (the profile with the dataset's own settings laid over it) and its profile."""

    pii_profile: str


class RawContent(Out):
    id: str
    revision_id: str = Field(description="the ingest revision")
    content: JsonObject
    source: Literal["vault", "revision"] = Field(description="vault, or the ingest revision where nothing "
                                                            "was ever found")


class FindingList(Items[PiiFindingOut]):
    revision_id: str = Field(description="the current revision, whose findings these are")


class VerdictResult(Out):
    finding: PiiFindingOut
    revision_id: str = Field(description="the current revision after the verdict (new for a false positive)")


class MissedResult(Out):
    revision_id: str = Field(description="the new revision, with the span scrubbed")
    added: list[str] = Field(description="ids of the findings added (one per occurrence)")
    findings: list[PiiFindingOut]


class EntityCounts(Out):
    found: int
    confirmed: int
    false_positive: int
    added: int


class TopValue(Out):
    token: str
    findings: int
    examples: int
    allowed: bool
    value: str | None = Field(None, description="with reveal=true (admin only, audited)")


class PiiReport(Out):
    dataset_id: str
    examples_scrubbed: int
    findings: int
    by_entity: dict[str, EntityCounts]
    reviewed: int
    false_positives: int
    false_positive_rate: float | None
    missed_added: int
    flags: dict[str, int]
    top_values: dict[str, list[TopValue]]
    rescrub_pending: int


class RescrubQueued(Out):
    queued: bool
    candidates: int
    policy_sha256: str


class AllowResult(Out):
    token: str
    pii_policy: PiiPolicy
    rescrub: RescrubQueued

# --- dataset profiles ----------------------------------------------------------------------------------------

# Presets a dataset picks at creation (`pii_profile`); its own `pii_policy` is laid over the preset (one
# level deep for `operators` and `context`), so an owner changes one knob without restating the rest.
# docs/pii.md ("Profiles") says what each is for and why.
_NAME_SURROGATE = {"type": "surrogate"}
PROFILES: dict[str, dict[str, Any]] = {
    # Instruction and chat data: public places and figures are the facts the examples are about.
    "default": {},
    # Code-instruction data: every code-like line is code (no name finders there); keys and tokens matter.
    "code": {"context": {"code_lines": "on"}},
    # Word problems: the people and places are invented, and the arithmetic depends on telling them apart.
    # A consistent surrogate per value and example keeps "Tom has 3 apples... Tom gives 1 to Ann" solvable
    # (a placeholder would turn both names into <PERSON>), and still replaces a real name that slipped in.
    "math_word_problems": {
        "operators": {"PERSON": _NAME_SURROGATE, "LOCATION": _NAME_SURROGATE},
    },
    # Customer-support logs: every name, place and date is the customer's, famous or not; speakers keep a
    # consistent surrogate name so the dialogue still reads.
    "support_transcripts": {
        "entities": [*DEFAULT_ENTITIES, "DATE_TIME", "URL"],
        "public_entities": "scrub",
        "operators": {"PERSON": _NAME_SURROGATE},
    },
    # Clinical notes, after HIPAA Safe Harbor's identifier list: names, places below state level, dates,
    # contact details, record, licence and account numbers, URLs; a lower threshold trades precision
    # for recall.
    "clinical": {
        "entities": [*DEFAULT_ENTITIES, "DATE_TIME", "URL", "US_DRIVER_LICENSE", "ORGANIZATION"],
        "public_entities": "scrub",
        "score_threshold": 0.3,
    },
}
DEFAULT_PROFILE = "default"


def check_profile(name: str) -> str:
    if name not in PROFILES:
        raise ValueError(f"unknown pii_profile {name!r}; known: {sorted(PROFILES)}")
    return name


def layered(profile: str, stored: dict[str, Any] | None) -> dict[str, Any]:
    """The preset with the dataset's own policy over it (the dict a PiiPolicy is validated from)."""
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, dict) else v) for k, v in PROFILES[profile].items()}
    stored = stored or {}
    for key, value in stored.items():
        if key in ("operators", "context") and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    if "entities" in stored and "operators" in out:
        # The preset's operator for a type the owner no longer scrubs goes; the owner's own stays (and is
        # refused by the policy's check, as without a profile).
        own = set(stored.get("operators") or {})
        out["operators"] = {k: v for k, v in out["operators"].items() if k in own or k in stored["entities"]}
    return out


def effective_policy(profile: str | None, stored: dict[str, Any] | None) -> PiiPolicy:
    return PiiPolicy.model_validate(layered(profile or DEFAULT_PROFILE, stored))
