"""The Flask application of ``ddmr serve`` (:func:`create_app`).

Routes (JSON errors carry ``{"error": message}``):

=========================================================  ==========================================
``GET /``                                                  the page (template and static files are
                                                           package data: nothing from the internet)
``GET /api/models``                                        models, the default, upload limit
``POST /api/register``                                     multipart form: ``source`` (``example`` or
                                                           ``upload``), ``model``, ``grid`` (``fixed``
                                                           or ``working``), files ``fixed``, ``moving``,
                                                           ``fixed_seg``, ``moving_seg``; the result's
                                                           summary (:meth:`ResultView.summary`)
``GET /api/results/<id>``                                  the summary again
``GET /api/results/<id>/slice/<view>/<axis>/<index>.png``  one slice (``?labels=1``: label maps over it)
``GET /api/results/<id>/files/<name>``                     a download, by its fixed name only
=========================================================  ==========================================

A ``POST`` whose ``Origin`` is another site is refused (403). Bad input is a 4xx with a
message, never a dead server: a :class:`~ddmr_core.errors.DdmrError` is a 400, an upload
over the limit a 413 (``MAX_CONTENT_LENGTH``), an unknown or expired result a 404;
anything else is a 500 with its message (and the server goes on).

Flask is imported inside the functions that build the app: ``ddmr --help`` and the rest of the library
never import it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import DdmrError

PACKAGE_DIR = Path(__file__).resolve().parent
#: default upload limit (a whole request: all files together), in MiB
MAX_UPLOAD_MB = 512

log = logging.getLogger("ddmr.serve")


def create_app(models=("brain-mr",), *, device="cpu", max_upload_mb: float = MAX_UPLOAD_MB, max_results: int = 8,
               result_ttl_s: float = 1800.0, max_voxels: int | None = None, server=None):
    """A Flask application registering with ``models`` (names or checkpoints, loaded
    now, once; the first is the default).

    Args:
        device: torch device of the networks.
        max_upload_mb: the largest request accepted (all uploaded files together), MiB.
        max_results: results kept at once (least recently used first out).
        result_ttl_s: seconds a result is kept after its last use.
        max_voxels: the largest uploaded volume (default :data:`server.MAX_VOXELS`).
        server: a ready :class:`~ddmr_core.serve.server.Server` instead (tests share one).

    The :class:`~ddmr_core.serve.server.Server` is ``app.extensions["ddmr"]``; call its
    ``close()`` to remove the result folders.

    Raises:
        DdmrError: a model that does not load.
    """
    import flask

    from .server import MAX_VOXELS, Server
    from .store import ResultStore

    if server is None:
        store = ResultStore(max_results=max_results, ttl_s=result_ttl_s)
        try:
            server = Server(models, device=device, store=store, max_voxels=max_voxels or MAX_VOXELS)
        except BaseException:  # a model that does not load: no folder left behind
            store.close()
            raise
    app = flask.Flask("ddmr_core.serve", root_path=str(PACKAGE_DIR), static_folder="static",
                      template_folder="templates")
    app.config["MAX_CONTENT_LENGTH"] = int(max_upload_mb * 2 ** 20)
    app.config["DDMR_MAX_UPLOAD_MB"] = max_upload_mb
    app.extensions["ddmr"] = server
    _error_handlers(app, max_upload_mb)
    _routes(app, server, max_upload_mb)
    _guards(app)
    return app


def _error(message: str, status: int):
    """A JSON error response: ``{"error": message}`` with HTTP ``status``."""
    import flask

    return flask.jsonify(error=message), status


def _error_handlers(app, max_upload_mb: float) -> None:
    """Every failure answers one JSON line naming the problem: the client's with 4xx,
    a bug with 500 (logged; the server goes on)."""
    from werkzeug.exceptions import HTTPException, RequestEntityTooLarge


    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc):
        return _error(f"the upload is larger than this server's limit of {max_upload_mb:g} MB "
                     "(ddmr serve --max-upload-mb)", 413)

    @app.errorhandler(DdmrError)
    def bad_input(exc):
        from ..cli import one_line

        return _error(one_line(exc), 400)

    @app.errorhandler(HTTPException)
    def http_error(exc):
        return _error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def unexpected(exc):  # a bug, not the client's fault: logged, reported, the server goes on
        log.exception("ddmr serve: unexpected error")
        return _error(f"internal error: {type(exc).__name__}: {exc}", 500)


def _routes(app, server, max_upload_mb: float) -> None:
    """The page and its JSON API (README "ddmr serve"): models, register, results, slices
    and downloads; closures over this app's ``server`` and its result store."""
    import flask

    from .server import ROLES
    from .view import VIEWS


    def result_or_404(rid: str):
        view = server.store.get(rid)
        if view is None:
            flask.abort(404, description="no such result (it may have expired): register again")
        return view

    @app.get("/")
    def index():
        return flask.render_template("index.html", max_upload_mb=max_upload_mb)

    @app.get("/api/models")
    def models_():
        return flask.jsonify(models=server.model_list(), default=server.default_model,
                             max_upload_mb=max_upload_mb, roles=ROLES)

    @app.post("/api/register")
    def register():
        form = flask.request.form
        uploads = {}
        for role in ROLES:
            f = flask.request.files.get(role)
            if f is not None and (f.filename or f.content_length):
                uploads[role] = f
        _, view = server.register(form.get("source", "example"), form.get("model") or None,
                                  form.get("grid", "fixed"), uploads)
        return flask.jsonify(view.summary())

    @app.get("/api/results/<rid>")
    def result(rid):
        return flask.jsonify(result_or_404(rid).summary())

    @app.get("/api/results/<rid>/slice/<view>/<int:axis>/<int:index>.png")
    def slice_png(rid, view, axis, index):
        res = result_or_404(rid)
        if view not in VIEWS:
            return _error(f"unknown view {view!r}; one of {', '.join(VIEWS)}", 400)
        try:
            res.check_slice(axis, index)
        except ValueError as exc:
            return _error(str(exc), 400)
        labels = flask.request.args.get("labels", "0") in ("1", "true", "on")
        resp = flask.Response(res.slice_png(view, axis, index, labels), mimetype="image/png")
        resp.headers["Cache-Control"] = "private, max-age=3600"  # a result never changes
        return resp

    @app.get("/api/results/<rid>/files/<name>")
    def download(rid, name):
        res = result_or_404(rid)
        path = res.download_path(name)
        if path is None:
            return _error(f"no file {name!r} here; available: {', '.join(res.available_downloads())}", 404)
        return flask.send_file(path, as_attachment=True, download_name=path.name, max_age=0)


def _guards(app) -> None:
    """Checks of every request and headers of every response."""
    import flask

    @app.before_request
    def same_origin_only():
        # another web site open in the same browser may send forms to 127.0.0.1 too: a
        # request that says it comes from elsewhere does not run a registration
        origin = flask.request.headers.get("Origin")
        if flask.request.method == "POST" and origin and urlsplit(origin).netloc != flask.request.host:
            return _error(f"cross-site request from {origin!r} refused", 403)
        return None

    @app.after_request
    def no_sniffing(resp):
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp
