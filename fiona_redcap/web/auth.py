"""Who may do what: password login (embedded REDCap users), SSO tokens from the REDCap module,
CSRF protection for every form, and per-project rights checked with REDCap itself.

SSO token format (what the PHP External Module produces)::

    token   = base64url(payload) + "." + base64url(HMAC-SHA256(sso_secret, base64url(payload)))
    payload = {"u": "<REDCap user name>", "p": <REDCap project id>, "iat": <unix time>, "n": "<random nonce>"}

base64url without padding; accepted for 120 seconds after ``iat`` (30 s clock skew), once.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import secrets
import threading
import time

from flask import abort, current_app, g, redirect, request, session, url_for

SSO_MAX_AGE = 120
SSO_SKEW = 30


class SsoError(Exception):
    pass


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def make_sso_token(secret: str, username: str, project_id: int, issued: float | None = None, nonce: str | None = None) -> str:
    """What the REDCap module does (also used by tests and scripts)."""
    payload = _b64(json.dumps({"u": username, "p": project_id, "iat": int(issued or time.time()), "n": nonce or secrets.token_hex(16)},
                              separators=(",", ":")).encode())
    sig = _b64(hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest())
    return f"{payload}.{sig}"


class NonceStore:
    """Nonces seen within the token lifetime: a token works once."""

    def __init__(self) -> None:
        self._seen: dict[str, float] = {}
        self._lock = threading.Lock()

    def use(self, nonce: str, now: float) -> bool:
        with self._lock:
            for n, t in list(self._seen.items()):
                if now - t > SSO_MAX_AGE + SSO_SKEW:
                    del self._seen[n]
            if nonce in self._seen:
                return False
            self._seen[nonce] = now
            return True


def verify_sso_token(secret: str, token: str, nonces: NonceStore, now: float | None = None) -> dict:
    now = now or time.time()
    try:
        payload_b64, sig_b64 = token.split(".")
        expected = hmac.new(secret.encode(), payload_b64.encode(), hashlib.sha256).digest()
        if not hmac.compare_digest(expected, _unb64(sig_b64)):
            raise SsoError("the sign-in link is not valid")
        payload = json.loads(_unb64(payload_b64))
        username, project_id, issued, nonce = str(payload["u"]), int(payload["p"]), int(payload["iat"]), str(payload["n"])
    except (ValueError, KeyError, TypeError, json.JSONDecodeError):
        raise SsoError("the sign-in link is not valid") from None
    if issued > now + SSO_SKEW or now - issued > SSO_MAX_AGE:
        raise SsoError("the sign-in link has expired; open FIONA from REDCap again")
    if len(nonce) < 16 or not nonces.use(nonce, now):
        raise SsoError("the sign-in link was already used; open FIONA from REDCap again")
    return {"username": username, "redcap_project_id": project_id}


# -- CSRF ---------------------------------------------------------------------------------------
def csrf_token() -> str:
    if "csrf" not in session:
        session["csrf"] = secrets.token_urlsafe(32)
    return session["csrf"]


def check_csrf() -> None:
    if request.method in ("POST", "PUT", "DELETE", "PATCH") and not request.path.startswith("/api/"):
        sent = request.form.get("csrf_token") or request.headers.get("X-CSRF-Token", "")
        if not sent or not hmac.compare_digest(sent, session.get("csrf", "")):
            abort(400, description="The form has expired or did not come from this site (CSRF check failed). Reload the page and try again.")


# -- sessions -----------------------------------------------------------------------------------
def current_user() -> str | None:
    user = session.get("user")
    if user and time.time() - session.get("since", 0) > current_app.config["SESSION_SECONDS"]:
        session.clear()
        return None
    return user


def login_user(username: str, via: str) -> None:
    csrf = session.get("csrf")
    session.clear()
    session["user"], session["via"], session["since"] = username, via, time.time()
    session["csrf"] = csrf or secrets.token_urlsafe(32)


def login_required(view):
    @functools.wraps(view)
    def wrapped(*args, **kwargs):
        user = current_user()
        if not user:
            return redirect(url_for("auth.login", next=request.path))
        g.user = user
        return view(*args, **kwargs)

    return wrapped
