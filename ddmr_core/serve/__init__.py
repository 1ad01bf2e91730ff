"""``ddmr serve``: register a pair in the browser and look at the result, offline.

* :mod:`.app` -- the Flask application factory :func:`create_app` (routes only);
* :mod:`.server` -- models loaded once, uploads, registrations (no web framework);
* :mod:`.store` -- per-request folders and results under random ids, expiring;
* :mod:`.view` -- one result as the page shows it: slices on request, metrics, downloads;
* :mod:`.slices` -- 2-D slices to colours and PNG;
* :mod:`.example` -- the built-in example pair (MNI template and a deformed copy);
* ``templates/index.html``, ``static/`` -- the page, its script and style (package data;
  nothing is loaded from the internet).

Importing this package does not import Flask (``create_app`` does).
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """:func:`ddmr_core.serve.app.create_app` (Flask is imported only now)."""
    from .app import create_app as _create_app

    return _create_app(*args, **kwargs)
