"""Users and access against a real database (SQLite and PostgreSQL), with login required:
passwords, tokens, the admin role, and an authorization matrix over datasets, jobs, logs and
run-folder files."""

from __future__ import annotations

import pytest

from backend.db.session import session_scope
from backend.services import jobs
from backend.settings import Settings
from tests.backend.test_api import demo_files, zip_bytes


@pytest.fixture
def auth_on(monkeypatch):
    monkeypatch.setenv("VLSTUDIO_AUTH_ENABLED", "true")


def make_user(api, name: str, admin: bool = False) -> dict[str, str]:
    r = api.post("/api/users", json={"username": name, "password": f"{name}-password", "is_admin": admin})
    assert r.status_code == 201, r.text
    token = api.post("/api/auth/login", json={"username": name, "password": f"{name}-password"}).json()
    return {"Authorization": f"Bearer {token['access_token']}"}


def test_login_me_tokens_and_logout(auth_on, api):
    anon = {"Authorization": ""}
    assert api.get("/api/jobs", headers=anon).status_code == 401
    r = api.post("/api/auth/login", json={"username": "admin", "password": "wrong-password"})
    assert r.status_code == 401 and r.json()["detail"] == "wrong username or password"
    alice = make_user(api, "alice")
    me = api.get("/api/auth/me", headers=alice).json()
    assert (me["username"], me["is_admin"]) == ("alice", False)
    assert "password" not in str(me)

    new = api.post("/api/auth/tokens", json={"name": "ci script"}, headers=alice).json()
    script = {"Authorization": f"Bearer {new['token']}"}
    assert api.get("/api/auth/me", headers=script).json()["username"] == "alice"
    assert [t["name"] for t in api.get("/api/auth/tokens", headers=alice).json()] == ["ci script"]
    assert api.get("/api/jobs", params={"access_token": new["token"]}, headers=anon).status_code == 401  # never in a URL
    assert api.delete(f"/api/auth/tokens/{new['id']}", headers=alice).status_code == 204
    assert api.get("/api/auth/me", headers=script).status_code == 401

    assert api.post("/api/auth/logout", headers=alice).status_code == 204
    assert api.get("/api/auth/me", headers=alice).status_code == 401


def test_only_admins_manage_users_and_passwords_are_checked(auth_on, api):
    bob = make_user(api, "bob")
    r = api.post("/api/users", json={"username": "eve", "password": "eve-password"}, headers=bob)
    assert r.status_code == 403
    r = api.post("/api/users", json={"username": "bad name!", "password": "short"})
    assert r.status_code == 422 and {e["field"] for e in r.json()["errors"]} == {"username", "password"}
    assert api.post("/api/users", json={"username": "bob", "password": "another-password"}).status_code == 409
    assert [u["username"] for u in api.get("/api/users").json()] == ["admin", "bob"]


def test_authorization_matrix(auth_on, api, tmp_path):
    a, b = make_user(api, "usera"), make_user(api, "userb")
    ds = upload_as(api, a)
    job = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1}, headers=a).json()
    run = tmp_path / "run"
    run.mkdir()
    (run / "spec.json").write_text('{"secret": "of user a"}')
    with session_scope() as s:
        jobs.get_job(s, job["id"]).run_dir = str(run)
        jobs.append_logs(s, job["id"], 1, ["a private line"])
    jid = job["id"]
    reads = [f"/api/datasets/{ds}", f"/api/jobs/{jid}", f"/api/jobs/{jid}/logs", f"/api/jobs/{jid}/metrics",
             f"/api/jobs/{jid}/events", f"/api/jobs/{jid}/files/spec.json"]
    writes = [f"/api/jobs/{jid}/cancel", f"/api/jobs/{jid}/resume", f"/api/jobs/{jid}/retry"]
    for url in reads:
        assert api.get(url, headers=b).status_code == 404, url  # 404, not 403: ids of others do not leak
    for url in writes:
        assert api.post(url, headers=b).status_code == 404, url
    assert api.get("/api/datasets", headers=b).json() == [] and api.get("/api/jobs", headers=b).json() == []
    r = api.post("/api/jobs", json={"dataset_id": ds, "model_id": 1, "priority": 5}, headers=b)
    assert r.status_code == 422
    assert [e["field"] for e in r.json()["errors"]] == ["dataset_id", "priority"]  # not theirs; not an admin
    # the owner and the admin see it all; the built-in model is shared
    for who in (a, {}):
        assert api.get(f"/api/jobs/{jid}/files/spec.json", headers=who).json() == {"secret": "of user a"}
        assert [row["line"] for row in api.get(f"/api/jobs/{jid}/logs", headers=who).json()] == ["a private line"]
        assert [d["id"] for d in api.get("/api/datasets", headers=who).json()] == [ds]
    assert [m["builtin"] for m in api.get("/api/models", headers=b).json()] == [True]
    assert api.get(f"/api/jobs/{jid}/files/../../etc/passwd", headers=a).status_code == 404
    assert api.post(f"/api/jobs/{jid}/cancel", headers=a).json()["status"] == "cancelled"


def upload_as(api, headers) -> int:
    r = api.post("/api/datasets", files={"file": ("d.zip", zip_bytes(demo_files(2)), "application/zip")},
                 headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]


def test_without_a_token_embedded_mode_acts_as_local_admin_and_production_refuses(api):
    from backend.settings import get_settings

    plain = {"Authorization": ""}
    r = api.get("/api/auth/me", headers=plain)
    if get_settings().embedded:  # login is off by default in the single-user embedded mode
        assert r.status_code == 200 and r.json()["is_admin"] and r.json()["username"] == "admin"
    else:
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"


def test_default_secret_is_refused_outside_the_embedded_mode():
    prod = Settings(database_url="postgresql+psycopg://x/y", secret_key="vlstudio-embedded-default-secret")
    with pytest.raises(RuntimeError, match="VLSTUDIO_SECRET_KEY"):
        prod.check_secret()
    Settings(database_url=None, broker_url=None, secret_key="vlstudio-embedded-default-secret").check_secret()
    assert prod.auth_required and not Settings(database_url=None, broker_url=None).auth_required


def test_oversized_body_metrics_and_no_stack_traces(api):
    r = api.post("/api/jobs", content=b"{" + b" " * (2 << 20) + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and "exceeds the limit" in r.json()["detail"]
    text = api.get("/metrics").text
    assert 'vlstudio_jobs{state="queued"} 0' in text and "vlstudio_queue_length 0" in text
    r = api.get("/api/jobs/not-a-number")
    assert r.status_code == 422 and "Traceback" not in r.text


def test_embedded_local_owner_gets_the_first_admin_password_when_login_is_turned_on(api):
    from backend.services import users

    with session_scope() as s:
        owner = users.local_owner(s)  # as the embedded mode creates it: no usable password
        owner.password_hash = users.UNUSABLE
        s.commit()
        assert api.post("/api/auth/login", json={"username": owner.username, "password": "!"}).status_code == 401
        users.ensure_first_admin(s, Settings(first_admin_password="now-a-password"))
    r = api.post("/api/auth/login", json={"username": owner.username, "password": "now-a-password"})
    assert r.status_code == 200 and r.json()["user"]["is_admin"], r.text
