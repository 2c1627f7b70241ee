"""Login hardening against a real database (SQLite and PostgreSQL): a throttle on failed
logins, password change semantics, scrypt at OWASP's parameters with upgrade at login, the
production secret, signed links instead of tokens in URLs."""

from __future__ import annotations

import hashlib
import secrets

import pytest

from backend.db.models import User
from backend.db.session import session_scope
from backend.services import users
from backend.settings import Settings
from tests.backend.test_auth import make_user


@pytest.fixture
def auth_on(monkeypatch):
    monkeypatch.setenv("VLSTUDIO_AUTH_ENABLED", "true")


@pytest.fixture
def fresh_throttle(monkeypatch):
    monkeypatch.setattr(users, "THROTTLE", users.LoginThrottle())


def login(api, name: str, password: str):  # noqa: ANN201
    return api.post("/api/auth/login", json={"username": name, "password": password})


def test_failed_logins_are_throttled_per_username_and_address(auth_on, fresh_throttle, api, monkeypatch):
    make_user(api, "mallory")
    for _ in range(10):
        assert login(api, "mallory", "guess-guess").status_code == 401
    r = login(api, "mallory", "mallory-password")  # even the right password, until the window passes
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "too many" in r.json()["detail"]
    # the client address is throttled too: spraying other usernames from it does not help
    assert login(api, "someone-else", "guess-guess").status_code == 429
    monkeypatch.setattr(users, "THROTTLE", users.LoginThrottle())
    assert login(api, "mallory", "mallory-password").status_code == 200


def test_throttle_window_slides():
    t = users.LoginThrottle(window_s=0.05)
    t.failed(["user:a"])
    with pytest.raises(users.TooManyAttempts):
        t.check(["user:a"], limit=1)
    import time

    time.sleep(0.06)
    t.check(["user:a"], limit=1)


def test_password_change_checks_the_current_one_and_ends_other_sessions(auth_on, fresh_throttle, api):
    here = make_user(api, "carol")
    other = {"Authorization": "Bearer " + login(api, "carol", "carol-password").json()["access_token"]}
    script = {"Authorization": "Bearer " + api.post("/api/auth/tokens", json={"name": "ci"}, headers=here)
              .json()["token"]}
    r = api.put("/api/auth/password", json={"current_password": "wrong-one", "password": "carol-new-password"},
                headers=here)
    assert r.status_code == 422 and r.json()["errors"][0]["field"] == "current_password"
    assert api.put("/api/auth/password", json={"password": "carol-new-password"}, headers=here).status_code == 422
    r = api.put("/api/auth/password", json={"current_password": "carol-password", "password": "carol-new-password"},
                headers=here)
    assert r.status_code == 204, r.text
    assert api.get("/api/auth/me", headers=here).status_code == 200  # the session that changed it
    assert api.get("/api/auth/me", headers=other).status_code == 401  # every other login session ended
    assert api.get("/api/auth/me", headers=script).status_code == 200  # API tokens are revoked one by one
    assert login(api, "carol", "carol-password").status_code == 401
    assert login(api, "carol", "carol-new-password").status_code == 200


def test_scrypt_default_is_owasp_and_weaker_hashes_are_upgraded_at_login(auth_on, fresh_throttle, api,
                                                                         monkeypatch):
    assert Settings.model_fields["scrypt_log_n"].default == 17
    make_user(api, "dave")
    salt = secrets.token_bytes(16)
    old = hashlib.scrypt(b"dave-password", salt=salt, n=2**10, r=8, p=1)  # an old deployment's hash
    with session_scope() as s:
        u = s.query(User).filter_by(username="dave").one()
        u.password_hash = f"scrypt$1024$8$1${salt.hex()}${old.hex()}"
    from backend.settings import get_settings

    monkeypatch.setattr(get_settings(), "scrypt_log_n", 17)
    assert login(api, "dave", "dave-password").status_code == 200
    with session_scope() as s:
        stored = s.query(User).filter_by(username="dave").one().password_hash
    assert stored.startswith("scrypt$131072$8$1$")
    assert users.verify_password("dave-password", stored) and not users.needs_rehash(stored)
    assert login(api, "dave", "dave-password").status_code == 200


@pytest.mark.parametrize("key", ["", "   ", "short-secret", "x" * 31])
def test_production_refuses_an_empty_or_short_secret(key):
    with pytest.raises(RuntimeError, match="VLSTUDIO_SECRET_KEY"):
        Settings(database_url="postgresql+psycopg://x/y", secret_key=key).check_secret()
    Settings(database_url="postgresql+psycopg://x/y", secret_key="k" * 32).check_secret()
    Settings(database_url=None, broker_url=None, secret_key=key).check_secret()  # embedded: fine


def test_links_carry_a_short_lived_signature_never_a_token(auth_on, fresh_throttle, api):
    alice, bob = make_user(api, "alice2"), make_user(api, "bob2")
    token = alice["Authorization"].split()[1]
    job_files = "/api/jobs/1/files/spec.json"
    assert api.get("/api/auth/me", params={"access_token": token}, headers={"Authorization": ""}).status_code == 401
    sig = api.post("/api/auth/link", json={"path": "/api/jobs/1/"}, headers=alice).json()["sig"]
    anon = {"Authorization": ""}
    assert api.get(job_files, params={"sig": sig}, headers=anon).status_code == 404  # authenticated: no such job
    assert api.get("/api/jobs/2/files/spec.json", params={"sig": sig}, headers=anon).status_code == 401  # other job
    assert api.get("/api/auth/me", params={"sig": sig}, headers=anon).status_code == 401  # other resource
    assert api.post("/api/jobs/1/cancel", params={"sig": sig}, headers=anon).status_code == 401  # GET only
    forged = sig[:-1] + ("1" if sig[-1] != "1" else "2")
    assert api.get(job_files, params={"sig": forged}, headers=anon).status_code == 401
    uid, exp, mac = sig.split(".")
    assert api.get(job_files, params={"sig": f"{uid}.{int(exp) + 9999}.{mac}"}, headers=anon).status_code == 401
    assert bob and token not in sig
