"""Single sign-on settings: a half-made configuration or a malformed group table stops the API at start."""

from __future__ import annotations

import json

import pytest

from app.core.config import SsoSettings

FULL = {"issuer": "https://idp.example", "client_id": "pedigree", "client_secret": "s", "redirect_url": "https://p/cb"}


def test_off_unless_an_issuer_is_set() -> None:
    SsoSettings().check()
    assert not SsoSettings().enabled


@pytest.mark.parametrize("missing", ["client_id", "client_secret", "redirect_url"])
def test_an_issuer_without_the_client_refuses_to_start(missing: str) -> None:
    with pytest.raises(ValueError, match=f"PEDIGREE_SSO_{missing.upper()}"):
        SsoSettings(**{k: v for k, v in FULL.items() if k != missing}).check()


@pytest.mark.parametrize(("table", "names"), [
    ("not json", "not JSON"),
    ("[]", "must be an object"),
    ('{"g": "reviewer"}', "group 'g' must map"),
    ('{"g": {"w": "owner"}}', "unknown role 'owner'"),
    ('{"g": {"w": "admin"}}', "admin is global"),
    ('{"g": {"*": "reviewer"}}', "admin is global"),
])
def test_a_malformed_group_table_names_the_entry(table: str, names: str) -> None:
    with pytest.raises(ValueError, match=names):
        SsoSettings(**FULL, group_roles=table).check()


def test_the_table_keeps_its_order_and_a_file_wins(tmp_path) -> None:
    f = tmp_path / "roles.json"
    f.write_text(json.dumps({"b": {"w": "curator"}, "a": {"w": "reviewer"}, "ops": {"*": "admin"}}))
    s = SsoSettings(**FULL, group_roles='{"x": {"y": "reviewer"}}', group_roles_file=f)
    s.check()
    assert s.group_role_table() == [("b", "w", "curator"), ("a", "w", "reviewer"), ("ops", "*", "admin")]


def test_scopes_must_ask_for_openid() -> None:
    with pytest.raises(ValueError, match="openid"):
        SsoSettings(**FULL, scopes="profile groups").check()


# --- the service, on the real databases ----------------------------------------------------------------------

def test_a_first_sign_in_racing_itself_takes_the_winners_identity(db: str) -> None:
    """Two tabs' first sign-ins at once: the second insert fails on (issuer, subject) in its savepoint and
    takes the first one's identity; the transaction goes on."""
    from app.core.db import session_scope
    from app.models.sso import SsoIdentity
    from app.sso import service

    with session_scope() as session:
        first = service._new_identity(session, "https://idp.example", "p1", "p1@example", "reviewer")
        second = service._new_identity(session, "https://idp.example", "p1", "p1@example", "reviewer")
        assert second.id == first.id
        assert session.query(SsoIdentity).count() == 1


def test_groups_map_by_the_table_order_and_unknown_workspaces_are_reported(db: str) -> None:
    from app.access import workspaces
    from app.core.auth import SYSTEM
    from app.core.db import session_scope
    from app.sso import service

    cfg = SsoSettings(**FULL, group_roles=json.dumps({
        "leads": {"onc": "curator"}, "rev": {"onc": "reviewer", "calls": "reviewer", "ghost": "auditor"}}))
    with session_scope() as session:
        for name in ("onc", "calls"):
            workspaces.create(session, name=name, actor=SYSTEM)
        m = service.map_groups(session, cfg, ["rev", "leads", "other"])
        assert sorted((w.name, r) for w, r in m.roles) == [("calls", "reviewer"), ("onc", "curator")]
        assert m.unmapped_groups == ["other"] and m.unknown_workspaces == ["ghost"] and not m.admin
        assert service.groups_of(cfg, {"groups": "rev"}) == ["rev"]
        assert service.groups_of(cfg, {"groups": [1, "rev", None]}) == ["rev"]
        assert service.groups_of(cfg, {}) == []
