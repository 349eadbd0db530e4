"""The rater web app (Flask): login with a token, then one item at a time.

Routes
------
``GET /login``, ``POST /login`` (form: token, csrf)   sign in; sets the session cookie
``POST /logout``                                        (X-CSRF-Token header)
``GET /``                                               the rating page
``GET /api/next``                                       current item + progress
``GET /api/last``                                       latest answered item (to change it)
``GET /api/answers``                                    the caller's own answers
``POST /api/answer``  JSON {item, choice, revise?, ms?} record an answer
``GET /api/items/<id>/<slot>.png``                      slot: ref, left or right

Security model
--------------
* Authentication: ``Authorization: Bearer <token>`` on any request, or the session cookie
  set by ``/login``. A presented bearer token that is unknown gives 401 even with a valid
  cookie. Only the SHA-256 of a token is stored; the session holds the rater id and that
  hash, so rotating a token or deactivating a rater ends their sessions.
* Cookie: signed (Flask), HttpOnly, SameSite=Strict, Secure when ``secure_cookies``.
* CSRF: cookie-authenticated POSTs must carry the per-session token in ``X-CSRF-Token``
  (login: a hidden form field); bearer requests are exempt (a browser never adds that
  header on its own). No CORS headers are sent, so other origins cannot read responses.
* Isolation: every query is filtered by the caller's rater id; there is no route that
  takes a rater id. Answers follow the change rule of :mod:`cxr_tf.judge.db`.
* Items: ids not in the served test set give 404; a malformed body 400. Image paths are
  built only from the validated manifest (never from the URL), and a slot outside
  ref/left/right is 404, so nothing outside the test set can be read.
* Headers: a strict Content-Security-Policy (no inline script), nosniff, no referrer,
  no framing.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from datetime import timedelta
from functools import wraps

from cxr_tf.errors import CXRConfigError

from .db import AnswerConflict, JudgeDBError, JudgmentStore, RaterInfo
from .service import ItemNotFound, NotCurrentItem, RatingService

logger = logging.getLogger("cxr_tf.judge")

try:
    import flask
except ImportError:  # optional extra
    flask = None

MAX_RESPONSE_MS = 24 * 3600 * 1000
_HERE = os.path.dirname(os.path.abspath(__file__))


def create_app(testset_dir: str, db: str, *, secret_key: bytes | None = None, secure_cookies: bool = False,
               display_px: int = 256):
    """The Flask app serving ``testset_dir`` with judgments in ``db``.

    Args:
        testset_dir: the BAPPS-layout test set folder (with manifest.csv).
        db: SQLAlchemy URL or SQLite file path.
        secret_key: signs session cookies; default ``$CXR_JUDGE_SECRET_KEY`` or a random key
            (sessions then end when the server restarts; progress is kept in the database).
        secure_cookies: mark the cookie Secure (serve over HTTPS, e.g. behind a proxy).
        display_px: width in CSS pixels of each image on the page.
    """
    if flask is None:
        raise CXRConfigError("the rater app needs Flask: pip install 'cxr_tf[judge]'")
    store = JudgmentStore(db)
    service = RatingService(testset_dir, store)
    app = flask.Flask("cxr_tf.judge", root_path=_HERE, static_folder="static", template_folder="templates")
    env_key = os.environ.get("CXR_JUDGE_SECRET_KEY")
    app.config.update(
        SECRET_KEY=secret_key or (env_key.encode() if env_key else secrets.token_bytes(32)),
        SESSION_COOKIE_NAME="cxr_judge",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Strict",
        SESSION_COOKIE_SECURE=secure_cookies,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=12),
        MAX_CONTENT_LENGTH=16 * 1024,
    )
    app.extensions["cxr_judge"] = service

    def current_rater() -> RaterInfo | None:
        """The caller, from a bearer token or the session; ``None`` when not authenticated."""
        auth = flask.request.headers.get("Authorization")
        flask.g.via_bearer = auth is not None
        if auth is not None:
            scheme, _, token = auth.partition(" ")
            return store.rater_for_token(token.strip()) if scheme.lower() == "bearer" else None
        rid, th = flask.session.get("rater_id"), flask.session.get("token_hash")
        if not isinstance(rid, int) or not isinstance(th, str):
            return None
        rater = store.rater(rid)
        if rater is None or not rater.active or not hmac.compare_digest(rater.token_hash, th):
            flask.session.clear()
            return None
        return rater

    def csrf_token() -> str:
        if "csrf" not in flask.session:
            flask.session["csrf"] = secrets.token_urlsafe(32)
        return flask.session["csrf"]

    def csrf_ok(sent: str | None) -> bool:
        expected = flask.session.get("csrf")
        return bool(expected) and isinstance(sent, str) and hmac.compare_digest(expected, sent)

    def error(status: int, message: str):
        return flask.jsonify(error=message), status

    def api(write: bool = False):
        def deco(fn):
            @wraps(fn)
            def wrapper(*a, **kw):
                rater = current_rater()
                if rater is None:
                    return error(401, "invalid or missing token; log in again")
                if write and not flask.g.via_bearer and not csrf_ok(flask.request.headers.get("X-CSRF-Token")):
                    return error(403, "missing or wrong X-CSRF-Token")
                flask.g.rater = rater
                return fn(*a, **kw)
            return wrapper
        return deco

    def item_json(shown) -> dict:
        slots = ("ref", "left", "right") if shown.item.kind == "2afc" else ("left", "right")
        return {
            "id": shown.item_id,
            "kind": shown.item.kind,
            "choices": list(("left", "right") if shown.item.kind == "2afc" else ("same", "different")),
            "images": {s: flask.url_for("image", item_id=shown.item_id, slot=s) for s in slots},
        }

    def progress_json(rater) -> dict:
        done, total = service.progress(rater)
        return {"answered": done, "total": total}

    @app.after_request
    def security_headers(resp):
        resp.headers["Content-Security-Policy"] = ("default-src 'none'; img-src 'self'; script-src 'self'; "
                                                   "style-src 'self'; connect-src 'self'; form-action 'self'; "
                                                   "frame-ancestors 'none'; base-uri 'none'")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        resp.headers["Referrer-Policy"] = "no-referrer"
        resp.headers["X-Frame-Options"] = "DENY"
        if flask.request.path.startswith("/api/") and "Cache-Control" not in resp.headers:
            resp.headers["Cache-Control"] = "no-store"
        return resp

    @app.get("/login")
    def login_form():
        return flask.render_template("login.html", csrf=csrf_token(), error=None)

    @app.post("/login")
    def login():
        if not csrf_ok(flask.request.form.get("csrf")):
            return flask.render_template("login.html", csrf=csrf_token(), error="Form expired; try again."), 403
        rater = store.rater_for_token(flask.request.form.get("token", "").strip())
        if rater is None:
            return flask.render_template("login.html", csrf=csrf_token(), error="Unknown token."), 401
        flask.session.clear()
        flask.session.permanent = True
        flask.session.update(rater_id=rater.id, token_hash=rater.token_hash, csrf=secrets.token_urlsafe(32))
        return flask.redirect(flask.url_for("index"), code=303)

    @app.post("/logout")
    @api(write=True)
    def logout():
        flask.session.clear()
        return flask.jsonify(ok=True)

    @app.get("/")
    def index():
        rater = current_rater()
        if rater is None:
            return flask.redirect(flask.url_for("login_form"))
        return flask.render_template("rate.html", rater=rater.name, csrf=csrf_token(), display_px=int(display_px))

    @app.get("/api/next")
    @api()
    def next_item():
        shown = service.next_item(flask.g.rater)
        return flask.jsonify(progress=progress_json(flask.g.rater), item=None if shown is None else item_json(shown))

    @app.get("/api/last")
    @api()
    def last_item():
        last = service.last_answered(flask.g.rater)
        if last is None:
            return flask.jsonify(item=None, choice=None)
        return flask.jsonify(item=item_json(last[0]), choice=last[1])

    @app.get("/api/answers")
    @api()
    def my_answers():
        rater = flask.g.rater
        answers = store.answers(rater.id)
        out = [{"item": i, "choice": service.shown(rater, i).choice_for(a)} for i, a in answers.items()
               if i in service.item_by_id]
        return flask.jsonify(rater=rater.name, answers=out)

    @app.post("/api/answer")
    @api(write=True)
    def answer():
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "expected a JSON object {item, choice, revise?, ms?}")
        item_id, choice, revise, ms = body.get("item"), body.get("choice"), body.get("revise", False), body.get("ms")
        if not isinstance(item_id, int) or isinstance(item_id, bool):
            return error(400, "item must be an integer id")
        if not isinstance(choice, str) or not isinstance(revise, bool):
            return error(400, "choice must be a string and revise a boolean")
        if ms is not None and (not isinstance(ms, int) or isinstance(ms, bool) or not 0 <= ms <= MAX_RESPONSE_MS):
            return error(400, "ms must be a non-negative integer (milliseconds)")
        try:
            out = service.answer(flask.g.rater, item_id, choice, revise=revise, response_ms=ms)
        except ItemNotFound as e:
            return error(404, str(e))
        except (NotCurrentItem, AnswerConflict) as e:
            return error(409, str(e))
        except JudgeDBError as e:
            return error(400, str(e))
        return flask.jsonify(status=out.status, progress=progress_json(flask.g.rater)), (201 if out.status == "created" else 200)

    @app.get("/api/items/<int:item_id>/<slot>.png")
    @api()
    def image(item_id: int, slot: str):
        try:
            shown = service.shown(flask.g.rater, item_id)
            role = shown.role(slot)
            path = service.testset.image_path(shown.item, role)
        except (ItemNotFound, KeyError):
            return error(404, "no such image")
        resp = flask.send_file(path, mimetype="image/png", max_age=0, conditional=False, etag=False)
        resp.headers["Cache-Control"] = "private, no-store"
        return resp

    return app


def serve(testset_dir: str, db: str, host: str = "127.0.0.1", port: int = 8765, threads: int = 8,
          secure_cookies: bool = False) -> None:
    """Run the app under waitress (a multi-threaded production WSGI server)."""
    try:
        import waitress
    except ImportError as e:
        raise CXRConfigError("serving needs waitress: pip install 'cxr_tf[judge]'") from e
    app = create_app(testset_dir, db, secure_cookies=secure_cookies)
    if host not in ("127.0.0.1", "localhost", "::1") and not secure_cookies:
        logger.warning("warning: serving beyond localhost over plain HTTP exposes tokens; put it behind HTTPS "
                       "and pass --secure-cookies")
    logger.info(f"rater app on http://{host}:{port}/ ({app.extensions['cxr_judge'].total} items)")
    waitress.serve(app, host=host, port=port, threads=threads)
