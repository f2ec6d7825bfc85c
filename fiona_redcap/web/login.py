"""Login with a password (embedded REDCap users), SSO from the REDCap module, logout."""

from __future__ import annotations

from flask import Blueprint, current_app, flash, redirect, render_template, request, session, url_for

from .. import logs
from . import auth

bp = Blueprint("auth", __name__)
log = logs.get_logger("fiona.web")


@bp.route("/login", methods=["GET", "POST"])
def login():
    cfg = current_app.extensions["fiona_cfg"]
    error = None
    if request.method == "POST":
        username = request.form.get("username", "").strip()
        password = request.form.get("password", "")
        ok = False
        db = cfg.embedded_redcap_db
        if db is not None and db.exists() and username and password:
            from ..embedded_redcap import admin

            ok = admin.verify_password(db, username, password)
        if ok:
            auth.login_user(username, "password")
            logs.log_event(log, "web.login", user=username, via="password")
            target = request.args.get("next") or url_for("assign.index")
            return redirect(target if target.startswith("/") and not target.startswith("//") else url_for("assign.index"))
        error = "Unknown user name or wrong password."
        logs.log_event(log, "web.login_failed", 30)
    return render_template("login.html", error=error, user=None), (401 if error else 200)


@bp.get("/sso")
def sso():
    cfg = current_app.extensions["fiona_cfg"]
    secret = cfg.resolve_secret(cfg.raw["web"].get("sso_secret"), "$.web.sso_secret")
    if not secret:
        return render_template("error.html", code=403, message="Sign-in from REDCap is not configured (web.sso_secret).", user=None), 403
    try:
        info = auth.verify_sso_token(secret, request.args.get("token", ""), current_app.extensions["fiona_nonces"])
    except auth.SsoError as exc:
        return render_template("error.html", code=403, message=str(exc), user=None), 403
    auth.login_user(info["username"], "redcap")
    session["redcap_project_id"] = info["redcap_project_id"]
    logs.log_event(log, "web.login", user=info["username"], via="redcap")
    return redirect(url_for("assign.index"))


@bp.post("/logout")
def logout():
    session.clear()
    flash("Signed out.")
    return redirect(url_for("auth.login"))
