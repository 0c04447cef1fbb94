"""The user's tokens (label, scopes, created, expiry, a short id: never the token itself);
revoking one."""

from __future__ import annotations

from flask import Response, redirect, request, url_for
from werkzeug.exceptions import NotFound

from ..context import fed
from ..scopes import MANAGE
from . import bp, session


@bp.get("/tokens")
def tokens() -> tuple[str, int]:
    user = session.user()
    records = sorted(fed().store.tokens.tokens_of("user", user), key=lambda t: t["created"])
    return session.render("console/tokens.html", tokens=records,
                          current=session.current()["token"], section="tokens")


@bp.post("/tokens/revoke")
def revoke() -> Response:
    """Revoke one of the user's tokens (its hash names it); revoking the one this session
    was opened with signs the session out."""
    user = session.require(MANAGE)
    token_hash = request.form.get("token_id", "")
    store = fed().store
    if token_hash not in {t["hash"] for t in store.tokens.tokens_of("user", user)}:
        raise NotFound("token not found")
    store.revoke_token(token_hash)
    if token_hash == session.current()["token"]:
        store.delete_session(session.current()["key"])
        return redirect(url_for("console.login_form"), 303)
    session.flash(f"Token {token_hash[:8]} revoked: it is refused from now on.")
    return redirect(url_for("console.tokens"), 303)
