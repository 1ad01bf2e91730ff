"""Built-in trained models: ``ddmr register --model NAME``.

Each model is a ddmr checkpoint shipped inside this package, ``weights/<name>.pt``
(package data, see ``setup.cfg``); the file name without ``.pt`` is the model's name
(``brain-mr.pt`` -> ``brain-mr``). A name is registered only when its file is there, so
``ddmr plugins --kind models`` never lists a model that cannot load. ``docs/models.md``
describes each shipped model (training data, recipe, measured accuracy).

Checkpoints load like any other (``torch.load(weights_only=True)``, config bindings
only; :func:`ddmr_core.checkpoint.load_model`): shipping a model never runs code.
"""

from __future__ import annotations

from pathlib import Path

from ddmr_core.hookspecs import hookimpl

#: where the shipped checkpoints are
WEIGHTS = Path(__file__).resolve().parent / "weights"
SUFFIX = ".pt"


def _factory(path: Path):
    def model() -> Path:
        return path

    model.__doc__ = f"the checkpoint {path.name} shipped with ddmr"
    return model


def shipped() -> dict[str, Path]:
    """``{name: checkpoint path}`` of the weight files present in :data:`WEIGHTS`."""
    if not WEIGHTS.is_dir():
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(WEIGHTS.iterdir())
            if p.name.endswith(SUFFIX) and p.is_file() and not p.name.startswith(".")}


@hookimpl(trylast=True)
def ddmr_models():
    return {name: _factory(path) for name, path in shipped().items()}
