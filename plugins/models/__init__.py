"""Built-in trained models: ``ddmr register --model NAME[@VERSION]``.

The folder ``weights/`` (package data, see ``setup.cfg``) is a zoo folder
(:mod:`ddmr_core.model.zoo`): each release is ``weights/<name>@<version>.pt`` (a ddmr
checkpoint), its model card ``weights/<name>@<version>.json`` (:mod:`ddmr_core.model.card`)
and its line in ``weights/SHA256SUMS``, checked before the file is loaded. Notices a card
names (the MNI ICBM152 copyright and permission notice for brain-mr) lie beside them. A
name is registered only when one of its weight files is there, so ``ddmr models`` never
lists a model that is not shipped. ``docs/models.md`` describes each model and how to add
a release.

Checkpoints load like any other (``torch.load(weights_only=True)``, config bindings
only; :func:`ddmr_core.model.checkpoint.load_model`): shipping a model never runs code.
"""

from __future__ import annotations

from pathlib import Path

from ddmr_core.plugins.hookspecs import hookimpl
from ddmr_core.model.zoo import folder_models, folder_releases

#: where the shipped releases are
WEIGHTS = Path(__file__).resolve().parent / "weights"


def shipped() -> dict:
    """``{name: [Release, oldest first]}`` of the releases in :data:`WEIGHTS`."""
    return folder_releases(WEIGHTS)


@hookimpl(trylast=True)
def ddmr_models():
    return folder_models(WEIGHTS)
