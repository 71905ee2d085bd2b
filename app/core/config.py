"""One validated settings object, read from the environment (prefix PEDIGREE_), built once.

With no database URL and no Redis URL the service runs in the *embedded* mode: a SQLite file under
./var/, Celery tasks executed in-process, a key file for the vault created on first use. Outside that
mode the default secrets are refused at start-up, because a production deployment that silently runs
with a well-known secret is worse than one that does not start.
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urljoin

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET = "embedded-insecure-secret-change-me"
# The roles a group may map to (app/models/auth.py ROLES; core imports no model, so named again here).
SSO_ROLES = ("admin", "curator", "reviewer", "trainer", "auditor")
VAR_DIR = Path("var")

PiiMode = Literal["ner", "pattern_only"]

# libphonenumber matching runs once per region over every text; each region costs about as much as the
# rest of the pattern recognizers together, so the list is explicit and short. Numbers with a +country
# prefix are found whatever the list; LoosePhoneRecognizer covers other national formats with context.
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IN")


# Sections: each reads its own flat variables (PEDIGREE_PII_SPACY_MODEL, not PEDIGREE_PII__SPACY_MODEL),
# the names the README documents, and, as before the sections existed, only from the environment.


class PiiSettings(BaseSettings):
    """PEDIGREE_PII_*: the PII engine and the raw-text vault (docs/pii.md)."""

    model_config = SettingsConfigDict(env_prefix="PEDIGREE_PII_", extra="ignore")

    # en_core_web_md: held-out PERSON recall 0.934 against sm's 0.885 (docs/pii.md, "A stronger model").
    # "en_core_web_sm" is the light option (smaller, its own pin in requirements/spacy-model.txt).
    spacy_model: str = "en_core_web_md"
    # "pattern_only" runs without NER: PERSON and LOCATION are then found only through cues. It must be
    # chosen explicitly, and it is written on every finding.
    mode: PiiMode = "ner"
    phone_regions: tuple[str, ...] = DEFAULT_PHONE_REGIONS
    custom_recognizers: bool = True
    # The first-name gazetteer recognizer (part of the custom set; off only to measure what it adds).
    name_gazetteer: bool = True
    # A JSON file of deployment-wide regex recognizers (an organisation's own identifiers), each
    # {"name", "entity_type", "patterns": [{"regex", "score"}], "context"}: part of the recognizer set, so
    # changing it revalidates the examples it could change (docs/governance.md).
    extra_recognizers: Path | None = None
    batch_size: int = 64
    # "kid:base64(32 bytes),..." newest first. Unset: embedded mode uses a key file, other modes refuse.
    vault_keys: str | None = None
    vault_key_file: Path = VAR_DIR / "pii-vault.key"


class OpenLineageSettings(BaseSettings):
    """PEDIGREE_OPENLINEAGE_*: where run events for freezes and training runs go (unset url: nowhere)."""

    model_config = SettingsConfigDict(env_prefix="PEDIGREE_OPENLINEAGE_", extra="ignore")

    url: str | None = None
    endpoint: str = "api/v1/lineage"
    namespace: str = "pedigree"
    api_key: str | None = None
    timeout_s: float = 5.0


class ErasureSettings(BaseSettings):
    """PEDIGREE_ERASURE_*: how broad a selector may be without confirm=true, and the batch size."""

    model_config = SettingsConfigDict(env_prefix="PEDIGREE_ERASURE_", extra="ignore")

    # A selector matching more than this share of a dataset, or more than `confirm_max_examples` in all,
    # needs confirm=true: a typo in a metadata value must not wipe a dataset. One example is never broad.
    confirm_share: float = Field(0.5, gt=0, le=1)
    confirm_max_examples: int = Field(1000, ge=1)
    batch_size: int = Field(2000, ge=1, le=50_000)
    # How long the erased subject's strings are held (sealed) for the re-test of a retrained version
    # (app/lineage/retest.py): dropped when the re-test is done, or after this many days regardless.
    retest_hold_days: float = Field(90.0, gt=0, le=3650)


class SsoSettings(BaseSettings):
    """PEDIGREE_SSO_*: OpenID Connect sign-in for the web pages (docs/security.md, "Single sign-on").
    Off while `issuer` is unset; the API-key sign-in of the page works either way."""

    model_config = SettingsConfigDict(env_prefix="PEDIGREE_SSO_", extra="ignore")

    # The provider's issuer URL; its /.well-known/openid-configuration gives the endpoints and keys.
    issuer: str | None = None
    client_id: str | None = None
    client_secret: str | None = None
    # This server's callback as registered with the provider, e.g. https://pedigree.example/review/sso/callback
    redirect_url: str | None = None
    # Where the provider sends the browser after ending its session at sign-out (RP-initiated logout);
    # register it with the provider as a post_logout_redirect_uri. Default: /review/sso/signed-out on
    # redirect_url's origin.
    post_logout_redirect_url: str | None = None
    scopes: str = "openid profile email groups"
    # The ID token claim holding the person's groups (a list of strings, or one string).
    groups_claim: str = "groups"
    # The claim shown as the person's name in reviews and the audit log (falls back to sub).
    name_claim: str = "email"
    # Group -> {workspace name: role}, as JSON; "*": "admin" makes a group's members global admins.
    # Or a file holding that JSON (group_roles_file wins when both are set).
    group_roles: str = "{}"
    group_roles_file: Path | None = None
    session_ttl_s: float = Field(8 * 3600.0, gt=0, le=7 * 86400)
    # Seconds of clock skew allowed on exp / iat of an ID token.
    leeway_s: int = Field(60, ge=0, le=600)
    # The button's label on the sign-in page.
    label: str = "Sign in with single sign-on"

    @property
    def enabled(self) -> bool:
        return bool(self.issuer)

    @property
    def post_logout_url(self) -> str:
        if self.post_logout_redirect_url:
            return self.post_logout_redirect_url
        return urljoin(self.redirect_url or "", "/review/sso/signed-out")

    def check(self) -> None:
        """Called by the API at start-up (not on every settings load: each variable is set alone in tests):
        an incomplete configuration or a malformed role table stops it, naming what is wrong."""
        if not self.enabled:
            return
        missing = [n for n in ("client_id", "client_secret", "redirect_url") if not getattr(self, n)]
        if missing:
            raise ValueError("PEDIGREE_SSO_ISSUER is set but not " + ", ".join(f"PEDIGREE_SSO_{n.upper()}" for n in missing))
        if "openid" not in self.scopes.split():
            raise ValueError("PEDIGREE_SSO_SCOPES must include openid")
        self.group_role_table()

    def group_role_table(self) -> list[tuple[str, str, str]]:
        """(group, workspace name or "*", role), in the table's order: where two of a person's groups give
        one workspace two roles, the earlier entry wins (a membership holds one role)."""
        raw = self.group_roles_file.read_text() if self.group_roles_file else self.group_roles
        where = str(self.group_roles_file) if self.group_roles_file else "PEDIGREE_SSO_GROUP_ROLES"
        try:
            table = json.loads(raw)
        except ValueError as e:
            raise ValueError(f"{where}: not JSON ({e})") from None
        if not isinstance(table, dict):
            raise ValueError(f"{where}: must be an object of group -> {{workspace: role}}")  # noqa: TRY004 (pydantic wants ValueError)
        out = []
        for group, roles in table.items():
            if not isinstance(roles, dict):
                raise ValueError(f"{where}: group {group!r} must map to an object of workspace -> role")  # noqa: TRY004
            for ws, role in roles.items():
                if role not in SSO_ROLES:
                    raise ValueError(f"{where}: group {group!r}, workspace {ws!r}: unknown role {role!r}")
                if (ws == "*") != (role == "admin"):
                    raise ValueError(f"{where}: group {group!r}: admin is global, so only as \"*\": \"admin\" "
                                     f"(and \"*\" only for admin)")
                out.append((str(group), str(ws), role))
        return out


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PEDIGREE_", env_file=".env", extra="ignore")

    database_url: str = Field(default_factory=lambda: f"sqlite:///{VAR_DIR / 'pedigree.db'}")
    # PostgreSQL connections each process keeps open. A connection beyond them (up to 20 more) is closed
    # when returned, so a pool smaller than the requests a process serves at once opens and closes
    # connections all the time under load: at 10, bench.review's API started a new PostgreSQL session
    # every ~6 decisions (~2.5 ms of API CPU and a forked backend each).
    db_pool_size: int = Field(20, ge=1, le=1000)
    # Unset: Celery tasks run eagerly inside the process that enqueues them (embedded default).
    redis_url: str | None = None
    # Used to sign session cookies of the reviewer page and to key PII hashing.
    secret_key: str = DEFAULT_SECRET
    # Explicit opt-in to the embedded mode's conveniences when a database URL is set (tests, demos).
    embedded: bool | None = None

    # Ingestion limits: large enough for long multi-turn chats, small enough that one line cannot
    # exhaust a worker. A refused line names the limit in its error.
    max_example_bytes: int = 256 * 1024
    max_field_chars: int = 100_000
    max_messages: int = 256
    ingest_batch_size: int = 5000
    # An open import batch with no write for this long is marked `interrupted` (by the sweeper and at
    # API start-up): its import died. Longer than any pause of a live import between two batches.
    import_lease_s: float = 120.0

    api_url: str = "http://127.0.0.1:8000"
    artifact_root: str = str(VAR_DIR / "artifacts")
    # Folders a local `base_model` path must resolve into (os.pathsep-separated). Unset: `models`
    # beside the artifact root. Without a bound, a curator could point a run at any file the API can
    # see (/proc/self/environ was queued once) and learn from the answer whether a path exists.
    model_roots: str | None = None
    # CrowS-Pairs (crows_pairs_anonymized.csv, CC BY-SA 4.0) for the `bias` evaluation suite: not shipped
    # with Pedigree (its license is share-alike). Unset: the bias suite is refused with `bias_corpus_missing`.
    crows_pairs_path: str | None = None
    # A running training run with no event or heartbeat for this long is failed as worker_lost by the
    # reaper. The trainer heartbeats every 10 s; the margin covers a long checkpoint save or GC pause.
    training_heartbeat_timeout_s: float = 120.0
    # Pipeline recovery (docs/reliability.md). A running stage task renews its lease every third of
    # stage_lease_s; the sweeper (every sweep_interval_s, from beat) re-enqueues the examples of a lease
    # that expired, so a killed worker's batch is running again within lease + interval + one batch.
    stage_lease_s: float = 30.0
    sweep_interval_s: float = 10.0
    # Redis re-delivers an unacked message after this long. It must exceed the slowest task (else a
    # running batch is handed to a second worker, which finds it locked and does nothing); the lease
    # sweeper, not this, is what recovers a killed worker's batch.
    broker_visibility_timeout_s: int = 600
    log_sql: bool = False
    # Serve /docs and /openapi.json; default: only in the embedded mode.
    api_docs: bool | None = None
    # Operations (docs/operations.md). Prometheus metrics: recorded when true, served at GET /metrics
    # (admin key) and, when metrics_port is set, by a Celery worker's own exporter on that port.
    metrics: bool = True
    metrics_port: int | None = Field(None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    # "json": one JSON object a line with the request id; "text": uvicorn's and Celery's own formats.
    # Default: json outside the embedded mode, text inside it (the demo prints to a terminal).
    log_format: Literal["json", "text"] | None = None
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Celery beat verifies the audit chain this often (incremental from the checkpoint).
    audit_verify_interval_s: float = Field(3600.0, gt=0)
    # How often the worker compares validation records with its versions (docs/governance.md).
    revalidation_check_interval_s: float = Field(3600.0, ge=10)
    # Examples per revalidation transaction: what a crash can cost, and how often progress commits.
    revalidation_batch_size: int = Field(500, ge=1, le=10_000)

    # API keys (docs/security.md, "Key lifecycle"). last_used_at is written at most this often per key
    # and API process; a rotation keeps the old secret valid this long unless the request says otherwise.
    key_last_used_interval_s: float = Field(300.0, gt=0)
    key_rotation_overlap_s: float = Field(86400.0, ge=0, le=30 * 86400)
    # Failed authentication: more than `auth_failure_limit` refusals (401) for one client address within
    # `auth_failure_window_s` and that address gets 429 on every request until the window ends.
    auth_failure_limit: int = Field(20, ge=1)
    auth_failure_window_s: float = Field(300.0, gt=0)

    pii: PiiSettings = Field(default_factory=PiiSettings)
    openlineage: OpenLineageSettings = Field(default_factory=OpenLineageSettings)
    erasure: ErasureSettings = Field(default_factory=ErasureSettings)
    sso: SsoSettings = Field(default_factory=SsoSettings)

    @property
    def is_embedded(self) -> bool:
        if self.embedded is not None:
            return self.embedded
        return self.database_url.startswith("sqlite") and self.redis_url is None

    @property
    def model_root_list(self) -> list[Path]:
        if self.model_roots:
            return [Path(p) for p in self.model_roots.split(os.pathsep) if p.strip()]
        if "://" in self.artifact_root:  # an object store: no folder beside it on this host
            return [VAR_DIR / "models"]
        return [Path(self.artifact_root).parent / "models"]

    @property
    def log_format_resolved(self) -> str:
        if self.log_format is not None:
            return self.log_format
        return "text" if self.is_embedded else "json"

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def tasks_eager(self) -> bool:
        return self.redis_url is None

    @model_validator(mode="after")
    def _refuse_default_secrets(self) -> Settings:
        if not self.is_embedded and self.secret_key == DEFAULT_SECRET:
            raise ValueError(
                "PEDIGREE_SECRET_KEY is the built-in default; set a random secret "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(48))'`) "
                "or run in the embedded mode (no PEDIGREE_DATABASE_URL / PEDIGREE_REDIS_URL)."
            )
        if len(self.secret_key) < 16:
            raise ValueError("PEDIGREE_SECRET_KEY must be at least 16 characters")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


def reset_settings() -> None:
    """Forget the cached settings (tests and the CLI change the environment)."""
    get_settings.cache_clear()
