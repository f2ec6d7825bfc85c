"""FIONA's web pages (Assign, Coupling lists, Status, Review) and JSON API: a Flask app factory
with one blueprint per page group, served by waitress (``fiona web``)."""

from __future__ import annotations

import datetime as dt

from flask import Flask, g, jsonify, render_template, request

from .. import __version__, logs
from ..config import Config
from . import auth
from .access import Access

log = logs.get_logger("fiona.web")


def create_app(cfg: Config) -> Flask:
    app = Flask("fiona_redcap.web")
    web = cfg.raw["web"]
    secret = cfg.resolve_secret(web.get("secret_key"), "$.web.secret_key")
    if not secret:
        from ..datadir import read_or_create_secret

        secret = read_or_create_secret(cfg.data_dir / "secrets" / "web-secret-key")
    app.config.update(
        SECRET_KEY=secret,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=bool(web.get("secure_cookies")),
        SESSION_COOKIE_NAME="fiona_session",
        SESSION_SECONDS=int(web.get("session_minutes", 480)) * 60,
        MAX_CONTENT_LENGTH=4 * 1024 * 1024,
    )
    app.extensions["fiona_cfg"] = cfg
    app.extensions["fiona_access"] = Access(cfg)
    app.extensions["fiona_nonces"] = auth.NonceStore()

    from .api import bp as api_bp
    from .assign import bp as assign_bp
    from .coupling import bp as coupling_bp
    from .login import bp as login_bp
    from .review import bp as review_bp
    from .status import bp as status_bp

    for bp in (login_bp, assign_bp, coupling_bp, status_bp, review_bp, api_bp):
        app.register_blueprint(bp)

    app.before_request(auth.check_csrf)
    app.jinja_env.globals.update(csrf_token=auth.csrf_token, version=__version__)

    @app.after_request
    def headers(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        resp.headers.setdefault("Referrer-Policy", "same-origin")
        resp.headers.setdefault("Content-Security-Policy", "default-src 'self'; style-src 'self'; script-src 'self'; img-src 'self' data:")
        return resp

    @app.get("/health")
    def health():
        return jsonify(status="ok", version=__version__)

    @app.errorhandler(400)
    @app.errorhandler(403)
    @app.errorhandler(404)
    @app.errorhandler(413)
    def error(exc):
        message = getattr(exc, "description", str(exc))
        if exc.code == 413:
            message = "The upload is too large (at most 2 MiB)."
        if request.path.startswith("/api/"):
            return jsonify(error=message), exc.code
        return render_template("error.html", code=exc.code, message=message, user=g.get("user")), exc.code

    from ..state import client as redcap_client

    @app.errorhandler(redcap_client.RedcapUnavailable)
    @app.errorhandler(redcap_client.RedcapRejected)
    def redcap_error(exc):
        unavailable = isinstance(exc, redcap_client.RedcapUnavailable)
        code = 503 if unavailable else 502
        message = ("REDCap cannot be reached right now; nothing was changed. Try again in a minute." if unavailable
                   else "REDCap refused the change; nothing was stored. An administrator can see the details in REDCap's log.")
        logs.log_event(log, "web.redcap_error", 40, status=code)
        if request.path.startswith("/api/"):
            return jsonify(error=message), code
        return render_template("error.html", code=code, message=message, user=g.get("user")), code

    @app.template_filter("plain_error")
    def plain_error(text: str) -> str:
        return (text or "").replace("RedcapRejected", "").strip()

    @app.context_processor
    def now():
        return {"today": dt.date.today().isoformat()}

    return app


def cfg_of(app: Flask) -> Config:
    return app.extensions["fiona_cfg"]
