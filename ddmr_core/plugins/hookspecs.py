"""Hook specifications: the one place that says what a ddmr plugin can provide.

There is one hook per kind of component. Each hook takes no arguments (pluggy calls
hooks with keyword arguments only, so adding an optional argument later stays
compatible) and returns a mapping ``name -> factory``. A factory is any callable
that builds the component; its keyword parameters are what gin configures, under
``ddmr.<kind>.<name>`` (for example ``ddmr.losses.ncc.win = 9``).

A plugin is a module or object with functions named like the hooks below, decorated
with :data:`hookimpl`, and announced through the ``ddmr`` entry-point group::

    [options.entry_points]
    ddmr =
        my_plugin = my_package.ddmr_plugin

Built-in components are registered the same way (see ``setup.cfg``) and marked
``trylast``. Two plugins giving the same name for one kind is an error naming both.

Contracts of the components (layouts follow ``docs/ARCHITECTURE.md``: tensors are
``(B, C, D, H, W)``, fields are ``(B, 3, D, H, W)`` pull displacements in voxels of the
fixed grid):

* augmenter -- ``nn.Module`` taking and returning the augmentation state dict
  (see :mod:`ddmr_plugins.augmenters`); composed into a pipeline from gin;
* backbone -- ``nn.Module``, ``forward(fixed, moving) -> disp``;
* loss -- ``nn.Module`` with a class attribute ``inputs`` in
  ``{"image", "segmentation", "field"}``: ``image`` losses get ``(warped, fixed)``,
  ``segmentation`` losses get ``(warped_segs, fixed_segs)`` (one-hot), ``field``
  losses (regularisers) get ``(disp,)``. Lower is better;
* loss weighting -- ``factory(loss_names, regulariser_names, **params)`` returning an
  ``nn.Module`` mapping ``{name: scalar}`` to one scalar, with ``weights()``;
* baseline -- object with ``register(fixed, moving, spacing) -> disp`` on NumPy arrays
  ``(D, H, W)``, returning a ``(3, D, H, W)`` voxel pull field;
* dataset -- object with ``split(name) -> torch.utils.data.Dataset`` of sample dicts
  ``{image, seg, spacing, affine, index}`` and a ``labels`` tuple;
* metric -- callable on one evaluated pair dict, returning a float or ``{suffix: float}``;
* model -- a trained model to register with: a factory taking no arguments and returning
  the checkpoint (a :class:`pathlib.Path`, or anything ``torch.load`` accepts) that
  ``ddmr register --model NAME`` loads. Model names are not gin configurables, and may
  hold hyphens (``brain-mr``).
"""

import pluggy

PROJECT = "ddmr"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: Plugin kinds, in the order ``ddmr plugins`` lists them; each has a hook ``ddmr_<kind>``.
KINDS = (
    "augmenters",
    "backbones",
    "losses",
    "loss_weightings",
    "baselines",
    "datasets",
    "metrics",
    "models",
)


@hookspec
def ddmr_augmenters():
    """Return ``{name: factory}`` of augmenters (geometric or intensity steps).

    An augmenter turns a fixed image into a training pair on the fly. Geometric ones
    (``tps``, ``rigid``, ``resize``) must compose their field into ``disp_true``, with
    :func:`ddmr_core.data.augment.add_geometric_step` (the state may hold its fields on a
    lattice: see :mod:`ddmr_core.data.augment`).
    """


@hookspec
def ddmr_backbones():
    """Return ``{name: factory}`` of networks predicting a displacement field.

    The module's ``forward(fixed, moving)`` takes two ``(B, 1, D, H, W)`` images in
    [0, 1] and returns a ``(B, 3, D, H, W)`` pull field in voxels.
    """


@hookspec
def ddmr_losses():
    """Return ``{name: factory}`` of loss terms and regularisers.

    Each built module declares ``inputs`` ("image", "segmentation" or "field").
    """


@hookspec
def ddmr_loss_weightings():
    """Return ``{name: factory}`` of strategies that combine loss terms into one scalar.

    ``factory(loss_names, regulariser_names, **params)`` builds an ``nn.Module`` whose
    ``forward(terms)`` returns the scalar and whose ``weights()`` returns the current
    weight of each term, for logging.
    """


@hookspec
def ddmr_baselines():
    """Return ``{name: factory}`` of classical registration methods (e.g. ANTs SyN)."""


@hookspec
def ddmr_datasets():
    """Return ``{name: factory}`` of datasets providing images, label maps, spacing, affine."""


@hookspec
def ddmr_metrics():
    """Return ``{name: factory}`` of evaluation metrics computed on one registered pair."""


@hookspec
def ddmr_models():
    """Return ``{name: factory}`` of trained models (``ddmr register --model NAME``).

    A factory takes no arguments and returns where the model's ddmr checkpoint is: a
    :class:`pathlib.Path` (or ``str``) of a file, or anything else ``torch.load`` accepts
    (an open binary file); or the model's versioned releases, a
    :class:`ddmr_core.model.zoo.Release` or a list of them (:func:`ddmr_core.model.zoo.folder_models`
    builds such a hook from a folder of weights, cards and their sha256). Factories are called when a name is looked up, so they should
    be cheap (no download: return a file shipped in the package). The checkpoint is an
    untrusted file like any other: it is read with ``torch.load(weights_only=True)`` and
    its gin config may only bind values (:func:`ddmr_core.model.checkpoint.load_model`).

    Names are letters, digits, ``-`` and ``_``, starting with a letter or digit (no
    ``.`` or ``/``, so a name is never mistaken for a file name); they are not bound in
    gin. Register a name only when its file exists, so that ``ddmr plugins`` never lists
    a model that cannot load. Built-in models: ``ddmr_plugins.models``.
    """
