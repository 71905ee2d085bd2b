import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_default_secret_refused_outside_embedded(monkeypatch):
    from app.core.config import DEFAULT_SECRET, Settings

    monkeypatch.delenv("PEDIGREE_EMBEDDED", raising=False)
    with pytest.raises(ValueError, match="PEDIGREE_SECRET_KEY"):
        Settings(database_url="postgresql+psycopg://x@h/db", secret_key=DEFAULT_SECRET, embedded=None)
    s = Settings(database_url="sqlite:///var/x.db", secret_key=DEFAULT_SECRET, redis_url=None, embedded=None)
    assert s.is_embedded and s.tasks_eager


def test_import_contracts_hold():
    # The console script, not `python -m importlinter.cli`: that module has no __main__ guard, so it
    # exits 0 having checked nothing (which is how a broken contract once sat here unnoticed).
    exe = Path(sys.executable).parent / "lint-imports"
    assert exe.exists(), f"import-linter is a dev dependency: {exe} missing"
    r = subprocess.run([str(exe), "--no-cache", "--config", str(ROOT / "pyproject.toml")], cwd=ROOT,
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: " in r.stdout and " kept, 0 broken." in r.stdout, r.stdout


_REGISTRIES = "import json; from app.wiring import registered; print(json.dumps(registered()))"
_ENTRY_POINTS = {
    # Every module that used to fill a registry as a side effect of being imported, and nothing else.
    "imports only": "import app.examples.router, app.pii.router, app.dedup.router, app.review.router, "
                    "app.lineage.router, app.training.router, app.training.embedded, app.pipeline.service",
    "api": "from app.main import create_app; create_app()",
    "celery": "import workers.celery_app",
    "cli": "from typer.testing import CliRunner; from app.cli import app; "
           "assert CliRunner().invoke(app, ['db', '--help']).exit_code == 0",
}


def _registries(code: str) -> dict:
    env = {**os.environ, "PEDIGREE_DATABASE_URL": "sqlite:////tmp/pedigree-wiring-test.db", "PEDIGREE_EMBEDDED": "true"}
    r = subprocess.run([sys.executable, "-c", f"{code}; {_REGISTRIES}"], cwd=ROOT, env=env, capture_output=True,
                       text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_every_entry_point_wires_the_same_registries_and_imports_wire_nothing():
    got = {name: _registries(code) for name, code in _ENTRY_POINTS.items()}
    assert all(v == [] for v in got.pop("imports only").values())
    assert got["api"] == got["celery"] == got["cli"]
    wired = got["api"]
    assert [s.split("@")[0] for s in wired["stages"]] == ["quality", "pii", "dedup"]
    assert wired["stages"][0].endswith(":app.examples.quality.quality_handler")
    assert wired["view_hooks"] == ["app.pii.service.view_hook", "app.dedup.service.view_hook",
                                   "app.review.service.review_view", "app.examples.validation.view_hook"]
    assert wired["audit_subscribers"] == ["app.lineage.facets.on_audit", "app.lineage.openlineage.on_audit",
                                          "app.pii.rescrub.on_audit", "app.revalidation.service.on_audit"]
    assert wired["on_validated"] == ["app.examples.validation.record_pipeline"]
    assert wired["dedup_view"] == ["app.pii.queries.dedup_views"]
    assert {h.split(":")[0] for h in wired["local_handlers"]} == {
        "pedigree.pipeline.run_stage", "pedigree.pipeline.sweep", "pedigree.dedup.rebuild",
        "pedigree.dedup.eval_sweep", "pedigree.train.run", "pedigree.pii.rescrub", "pedigree.evaluate.run",
        "pedigree.revalidation.run", "pedigree.revalidation.check"}


def test_an_unwired_process_refuses_instead_of_doing_less():
    code = ("from app.core.errors import NotWired; from app.pipeline import stages; from app.examples import service\n"
            "for call in (stages.stage_names, lambda: service.view(None, None, None)):\n"
            "    try: call()\n    except NotWired: pass\n    else: raise SystemExit('no NotWired')\n"
            "print('{}')")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


# Service modules that still open their own sessions. The request (or a job in app/<domain>/jobs.py)
# owns the transaction; a service takes a session and never commits. Shrink this list, never grow it:
# the test fails on a newcomer and on an entry that no longer needs to be here.
_SESSION_OPENERS: set[str] = set()
_OPENERS = {"session_scope", "session_factory"}


def _opens_sessions(path: Path) -> bool:
    import ast

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "app.core.db" and \
                any(a.name in _OPENERS for a in node.names):
            return True
        if isinstance(node, ast.Attribute) and node.attr in _OPENERS:
            return True
    return False


def test_services_take_a_session_instead_of_opening_one():
    opening = {str(p.relative_to(ROOT)) for p in sorted((ROOT / "app").rglob("service.py")) if _opens_sessions(p)}
    assert not opening - _SESSION_OPENERS, "services open sessions (move that function to jobs.py)"
    assert not _SESSION_OPENERS - opening, "no longer opens sessions: remove it from _SESSION_OPENERS"


def test_api_does_not_import_torch():
    code = "import app.main, app.cli, workers.celery_app, workers.tasks.pipeline, sys; " \
           "bad=[m for m in ('torch','transformers','peft') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_pii_engine_loads_without_the_training_stack():
    pytest.importorskip("torch")  # only a box with the [train] extra can show the difference
    code = ("from app.pii import service; service.engine(); from app.pii import scrub; import sys; "
            "bad=[m for m in ('torch','transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    env = {**os.environ, "PEDIGREE_PII_MODE": "pattern_only"}
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_file_wires_the_services():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "api", "worker"):
        assert name in services, name
    for name in ("api", "worker"):
        svc = services[name]
        assert "build" in svc or "image" in svc
        env = svc.get("environment", {})
        assert "PEDIGREE_DATABASE_URL" in env and "PEDIGREE_REDIS_URL" in env
        assert "postgres" in env["PEDIGREE_DATABASE_URL"] and "redis" in env["PEDIGREE_REDIS_URL"]
        assert "PEDIGREE_SECRET_KEY" in env
        deps = svc.get("depends_on", {})
        assert "postgres" in deps and "redis" in deps
    assert "upgrade" in " ".join(services["migrate"]["command"])
    trainer = services["trainer"]
    assert trainer["build"]["target"] == "trainer"
    assert trainer["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "PEDIGREE_TRAINER_KEY" in trainer["environment"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.count("FROM ") >= 2, "multi-stage build expected"
    if shutil_which("docker"):
        r = subprocess.run(["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                           capture_output=True, text=True, check=False)
        # The client may exist without the compose plugin; only a real parse error fails the test.
        if "is not a docker command" not in r.stderr and "unknown" not in r.stderr.lower():
            assert r.returncode == 0, r.stderr


def shutil_which(cmd):
    import shutil

    return shutil.which(cmd)


def test_api_docs_are_off_outside_the_embedded_mode(monkeypatch):
    from fastapi.testclient import TestClient

    from app.core.config import reset_settings
    from app.main import create_app

    monkeypatch.setenv("PEDIGREE_EMBEDDED", "false")
    monkeypatch.setenv("PEDIGREE_DATABASE_URL", "sqlite:////tmp/pedigree-docs-test.db")
    reset_settings()
    try:
        client = TestClient(create_app())
        assert client.get("/openapi.json").status_code == 404
        assert client.get("/docs").status_code == 404
        monkeypatch.setenv("PEDIGREE_API_DOCS", "true")
        reset_settings()
        assert TestClient(create_app()).get("/openapi.json").status_code == 200
    finally:
        monkeypatch.undo()
        reset_settings()


# Every variable a user can set, what it is set to here, and where the one settings object shows it. The
# names are a contract (the README's settings table): moving a setting into a section must not rename it.
ENV_TABLE = [
    ("PEDIGREE_DATABASE_URL", "postgresql+psycopg://u@h/db", lambda s: s.database_url, "postgresql+psycopg://u@h/db"),
    ("PEDIGREE_REDIS_URL", "redis://h:1/0", lambda s: s.redis_url, "redis://h:1/0"),
    ("PEDIGREE_DB_POOL_SIZE", "33", lambda s: s.db_pool_size, 33),
    ("PEDIGREE_SECRET_KEY", "s" * 20, lambda s: s.secret_key, "s" * 20),
    ("PEDIGREE_EMBEDDED", "false", lambda s: s.embedded, False),
    ("PEDIGREE_MAX_EXAMPLE_BYTES", "1000", lambda s: s.max_example_bytes, 1000),
    ("PEDIGREE_MAX_FIELD_CHARS", "900", lambda s: s.max_field_chars, 900),
    ("PEDIGREE_MAX_MESSAGES", "9", lambda s: s.max_messages, 9),
    ("PEDIGREE_INGEST_BATCH_SIZE", "77", lambda s: s.ingest_batch_size, 77),
    ("PEDIGREE_IMPORT_LEASE_S", "7.5", lambda s: s.import_lease_s, 7.5),
    ("PEDIGREE_API_URL", "http://api:1", lambda s: s.api_url, "http://api:1"),
    ("PEDIGREE_ARTIFACT_ROOT", "s3://b/a", lambda s: s.artifact_root, "s3://b/a"),
    ("PEDIGREE_MODEL_ROOTS", "/m1", lambda s: s.model_roots, "/m1"),
    ("PEDIGREE_TRAINING_HEARTBEAT_TIMEOUT_S", "33", lambda s: s.training_heartbeat_timeout_s, 33.0),
    ("PEDIGREE_STAGE_LEASE_S", "3", lambda s: s.stage_lease_s, 3.0),
    ("PEDIGREE_SWEEP_INTERVAL_S", "2", lambda s: s.sweep_interval_s, 2.0),
    ("PEDIGREE_BROKER_VISIBILITY_TIMEOUT_S", "700", lambda s: s.broker_visibility_timeout_s, 700),
    ("PEDIGREE_LOG_SQL", "true", lambda s: s.log_sql, True),
    ("PEDIGREE_API_DOCS", "true", lambda s: s.api_docs, True),
    ("PEDIGREE_METRICS", "false", lambda s: s.metrics, False),
    ("PEDIGREE_METRICS_PORT", "9101", lambda s: s.metrics_port, 9101),
    ("PEDIGREE_METRICS_HOST", "0.0.0.0", lambda s: s.metrics_host, "0.0.0.0"),
    ("PEDIGREE_LOG_FORMAT", "json", lambda s: s.log_format, "json"),
    ("PEDIGREE_LOG_LEVEL", "DEBUG", lambda s: s.log_level, "DEBUG"),
    ("PEDIGREE_AUDIT_VERIFY_INTERVAL_S", "60", lambda s: s.audit_verify_interval_s, 60.0),
    ("PEDIGREE_REVALIDATION_CHECK_INTERVAL_S", "600", lambda s: s.revalidation_check_interval_s, 600.0),
    ("PEDIGREE_REVALIDATION_BATCH_SIZE", "50", lambda s: s.revalidation_batch_size, 50),
    ("PEDIGREE_KEY_LAST_USED_INTERVAL_S", "30", lambda s: s.key_last_used_interval_s, 30.0),
    ("PEDIGREE_KEY_ROTATION_OVERLAP_S", "600", lambda s: s.key_rotation_overlap_s, 600.0),
    ("PEDIGREE_AUTH_FAILURE_LIMIT", "5", lambda s: s.auth_failure_limit, 5),
    ("PEDIGREE_AUTH_FAILURE_WINDOW_S", "60", lambda s: s.auth_failure_window_s, 60.0),
    ("PEDIGREE_CROWS_PAIRS_PATH", "/data/crows.csv", lambda s: s.crows_pairs_path, "/data/crows.csv"),
    ("PEDIGREE_PII_SPACY_MODEL", "en_core_web_lg", lambda s: s.pii.spacy_model, "en_core_web_lg"),
    ("PEDIGREE_PII_MODE", "pattern_only", lambda s: s.pii.mode, "pattern_only"),
    ("PEDIGREE_PII_PHONE_REGIONS", '["DE", "AT"]', lambda s: s.pii.phone_regions, ("DE", "AT")),
    ("PEDIGREE_PII_CUSTOM_RECOGNIZERS", "false", lambda s: s.pii.custom_recognizers, False),
    ("PEDIGREE_PII_NAME_GAZETTEER", "false", lambda s: s.pii.name_gazetteer, False),
    ("PEDIGREE_PII_EXTRA_RECOGNIZERS", "/etc/pedigree/recognizers.json", lambda s: str(s.pii.extra_recognizers),
     "/etc/pedigree/recognizers.json"),
    ("PEDIGREE_PII_BATCH_SIZE", "8", lambda s: s.pii.batch_size, 8),
    ("PEDIGREE_PII_VAULT_KEYS", "k1:QUFB", lambda s: s.pii.vault_keys, "k1:QUFB"),
    ("PEDIGREE_PII_VAULT_KEY_FILE", "/tmp/v.key", lambda s: s.pii.vault_key_file, Path("/tmp/v.key")),
    ("PEDIGREE_OPENLINEAGE_URL", "http://marquez:5000", lambda s: s.openlineage.url, "http://marquez:5000"),
    ("PEDIGREE_OPENLINEAGE_ENDPOINT", "api/v2/lineage", lambda s: s.openlineage.endpoint, "api/v2/lineage"),
    ("PEDIGREE_OPENLINEAGE_NAMESPACE", "ns", lambda s: s.openlineage.namespace, "ns"),
    ("PEDIGREE_OPENLINEAGE_API_KEY", "olk", lambda s: s.openlineage.api_key, "olk"),
    ("PEDIGREE_OPENLINEAGE_TIMEOUT_S", "1.5", lambda s: s.openlineage.timeout_s, 1.5),
    ("PEDIGREE_ERASURE_CONFIRM_SHARE", "0.25", lambda s: s.erasure.confirm_share, 0.25),
    ("PEDIGREE_ERASURE_CONFIRM_MAX_EXAMPLES", "10", lambda s: s.erasure.confirm_max_examples, 10),
    ("PEDIGREE_ERASURE_BATCH_SIZE", "100", lambda s: s.erasure.batch_size, 100),
    ("PEDIGREE_ERASURE_RETEST_HOLD_DAYS", "7.5", lambda s: s.erasure.retest_hold_days, 7.5),
    ("PEDIGREE_SSO_ISSUER", "https://idp.example", lambda s: s.sso.issuer, "https://idp.example"),
    ("PEDIGREE_SSO_CLIENT_ID", "pedigree", lambda s: s.sso.client_id, "pedigree"),
    ("PEDIGREE_SSO_CLIENT_SECRET", "cs", lambda s: s.sso.client_secret, "cs"),
    ("PEDIGREE_SSO_REDIRECT_URL", "https://p/review/sso/callback", lambda s: s.sso.redirect_url,
     "https://p/review/sso/callback"),
    ("PEDIGREE_SSO_POST_LOGOUT_REDIRECT_URL", "https://p/review/sso/signed-out",
     lambda s: s.sso.post_logout_redirect_url, "https://p/review/sso/signed-out"),
    ("PEDIGREE_SSO_SCOPES", "openid groups", lambda s: s.sso.scopes, "openid groups"),
    ("PEDIGREE_SSO_GROUPS_CLAIM", "roles", lambda s: s.sso.groups_claim, "roles"),
    ("PEDIGREE_SSO_NAME_CLAIM", "name", lambda s: s.sso.name_claim, "name"),
    ("PEDIGREE_SSO_GROUP_ROLES", '{"g": {"w": "reviewer"}}', lambda s: s.sso.group_role_table(), [("g", "w", "reviewer")]),
    ("PEDIGREE_SSO_GROUP_ROLES_FILE", "/etc/p/roles.json", lambda s: s.sso.group_roles_file, Path("/etc/p/roles.json")),
    ("PEDIGREE_SSO_SESSION_TTL_S", "600", lambda s: s.sso.session_ttl_s, 600.0),
    ("PEDIGREE_SSO_LEEWAY_S", "5", lambda s: s.sso.leeway_s, 5),
    ("PEDIGREE_SSO_LABEL", "Sign in with Okta", lambda s: s.sso.label, "Sign in with Okta"),
]
# Options of the remote-API CLI commands (typer reads them), not of the settings object.
CLI_ENV = {"PEDIGREE_API_URL_FOR_CLI", "PEDIGREE_API_KEY"}


@pytest.mark.parametrize(("var", "raw", "read", "expected"), ENV_TABLE, ids=[row[0] for row in ENV_TABLE])
def test_each_variable_takes_effect(monkeypatch, var, raw, read, expected):
    from app.core.config import Settings, get_settings, reset_settings

    assert read(Settings()) != expected, "the value under test must differ from the default"
    monkeypatch.setenv(var, raw)
    reset_settings()
    try:
        assert read(get_settings()) == expected
    finally:
        monkeypatch.undo()
        reset_settings()


def test_sections_are_built_once():
    from app.core.config import get_settings

    s = get_settings()
    assert get_settings() is s
    assert s.pii is get_settings().pii and s.openlineage is get_settings().openlineage


def test_every_setting_has_a_row_in_the_table():
    from app.core.config import Settings

    sections = {"pii", "openlineage", "erasure", "sso"}
    names = {f"PEDIGREE_{f.upper()}" for f in Settings.model_fields if f not in sections}
    for sec in sections:
        names |= {f"PEDIGREE_{sec.upper()}_{f.upper()}" for f in Settings.model_fields[sec].annotation.model_fields}
    assert names == {row[0] for row in ENV_TABLE}


def _readme_variables() -> set[str]:
    """The variables in the README's settings table; `_MODE` beside `PEDIGREE_PII_SPACY_MODEL` is short for
    the same prefix (which prefix: the one that names a known variable)."""
    known = {row[0] for row in ENV_TABLE} | CLI_ENV
    found: set[str] = set()
    for line in (ROOT / "README.md").read_text().splitlines():
        if not line.startswith("| `PEDIGREE_"):
            continue
        cell = line.split("|")[1]
        tokens = re.findall(r"`(_?[A-Z][A-Z0-9_]*)`", cell)
        first = tokens[0]
        found.add(first)
        parts = first.split("_")
        for short in tokens[1:]:
            if short.startswith("PEDIGREE_"):
                found.add(short)
                continue
            options = ["_".join(parts[:i]) + short for i in range(1, len(parts))]
            hits = [o for o in options if o in known]
            assert hits, f"README row {first}: {short} names no known variable ({options})"
            found.add(hits[-1])
    return found


def test_the_readme_settings_table_names_only_variables_that_take_effect():
    readme = _readme_variables()
    assert len(readme) >= 20  # the table was found and read
    assert readme - {row[0] for row in ENV_TABLE} - CLI_ENV == set()


def test_the_cli_reads_its_remote_api_variables():
    import click
    import typer

    from app.cli import app

    def envvars(cmd: click.Command) -> set[str]:
        out = {e for p in cmd.params for e in ([p.envvar] if isinstance(p.envvar, str) else p.envvar or [])}
        for sub in getattr(cmd, "commands", {}).values():
            out |= envvars(sub)
        return out

    assert CLI_ENV <= envvars(typer.main.get_command(app))


def test_the_postgresql_pool_keeps_db_pool_size_connections(monkeypatch):
    from app.core.config import reset_settings
    from app.core.db import get_engine

    monkeypatch.setenv("PEDIGREE_DATABASE_URL", "postgresql+psycopg://u@127.0.0.1:1/never-connected")
    monkeypatch.setenv("PEDIGREE_DB_POOL_SIZE", "33")
    reset_settings()
    try:
        pool = get_engine().pool  # built without connecting
        assert pool.size() == 33 and pool._max_overflow == 20
    finally:
        monkeypatch.undo()
        reset_settings()
