"""Hook specifications: the one place that says what a ddmr plugin can provide.

There is one hook per kind of component (:data:`KINDS`). Each hook takes no arguments
(pluggy calls hooks with keyword arguments only, so adding an optional argument later stays
compatible) and returns a mapping ``name -> factory``. A factory is any callable that
builds the component; its keyword parameters are what gin configures, under
``ddmr.<kind>.<name>`` (for example ``ddmr.losses.ncc.win = 9``); models are the
exception (a model names a checkpoint file, not a configurable).

A plugin is a module or object with functions named like the hooks below, decorated
with :data:`hookimpl`, and announced through the ``ddmr`` entry-point group::

    [options.entry_points]
    ddmr =
        my_plugin = my_package.ddmr_plugin

Built-in components are registered the same way (see ``setup.cfg``) and marked
``trylast``. Two plugins giving the same name for one kind is an error naming both.

Each hook's docstring is the contract of its components (layouts and units follow
``docs/ARCHITECTURE.md``: images ``(B, 1, D, H, W)`` float32 in [0, 1], fields
``(B, 3, D, H, W)`` pull displacements in voxels of the fixed grid). ``docs/plugin_hooks.md``
shows them in a block generated from this module (:mod:`ddmr_core.plugins.contract`).
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

#: What a loss module may declare as its ``inputs``, and what it is then called with:
#: ``image`` ``(warped, fixed)``, ``segmentation`` ``(warped_segs, fixed_segs)`` (one-hot),
#: ``field`` ``(disp,)`` (a regulariser), ``displacement`` ``(disp, disp_true)`` (against the
#: pair's ground-truth field, e.g. ``epe``).
LOSS_INPUTS = ("image", "segmentation", "field", "displacement")


@hookspec
def ddmr_augmenters():
    """Return ``{name: factory}`` of augmenters: steps of the on-the-fly augmentation
    pipeline (``ddmr.build_augmentation.steps``) that turn one image into a training pair
    with its ground-truth field.

    An augmenter is an ``nn.Module`` called on the pipeline's state dict and returning it;
    :class:`ddmr_core.data.augment.AugmentationPipeline` ``(steps, seed)`` is called as
    ``pipeline(image, segs=None, spacing=None, affine=None, index=None)`` with ``image``
    ``(B, 1, D, H, W)``, ``segs`` one-hot ``(B, L, D, H, W)`` or None, ``spacing`` ``(B, 3)``
    mm, ``affine`` ``(B, 4, 4)`` and ``index`` ``(B,)`` sample indices, and returns
    ``{"fixed", "moving", "fixed_segs", "moving_segs", "disp_true", "spacing", "affine"}``;
    ``disp_true`` is the pull field that maps the fixed grid into the moving image (warping
    ``moving`` with it gives back ``fixed``). Randomness: one ``torch.Generator`` per sample
    seeded from ``(seed, index)``, drawn on the CPU.

    Geometric steps (``tps``, ``rigid``, ``resize``) fold their map into the state with
    :func:`ddmr_core.data.augment.add_geometric_step` ``(state, u, w)`` (pull fields at every
    voxel or on a lattice spanning the image) or, for a closed-form map such as an affine one,
    ``add_geometric_step(state, None, None, u_at=..., w_at=...)``. The state's ``disp_true``
    and ``warp`` may be held on the coarser TPS lattice until the pair is rendered: a step
    that reads them directly calls :func:`ddmr_core.data.augment.to_full_resolution` first.
    Intensity steps (``gamma``, ``brightness``, ``contrast``, ``normalize``) change images only.
    """


@hookspec
def ddmr_backbones():
    """Return ``{name: factory}`` of networks predicting a displacement field.

    The module's ``forward(fixed, moving)`` takes two ``(B, 1, D, H, W)`` images in [0, 1]
    and returns a ``(B, 3, D, H, W)`` pull field in voxels. For transfer learning a backbone
    may offer ``parameter_groups() -> {"encoder": [...], "decoder": [...]}`` (the head counts
    as decoder). Backbones nest: ``affine_cascade(deformable=...)`` puts a learnt affine stage
    in front of another backbone (the stage counts as encoder).
    """


@hookspec
def ddmr_losses():
    """Return ``{name: factory}`` of loss terms and regularisers.

    Each built module is an ``nn.Module`` with a class attribute ``inputs``, one of
    :data:`LOSS_INPUTS`: ``image`` losses are called ``(warped, fixed)``, ``segmentation``
    losses ``(warped_segs, fixed_segs)`` (one-hot), ``field`` losses (regularisers)
    ``(disp,)``, ``displacement`` losses ``(disp, disp_true)`` against the pair's ground-truth
    field (``epe``; ``ddmr.build_model.supervision`` adds one such term to any design,
    outside its weighting, reported as the term ``supervision``). Always "lower is better"
    (NCC, SSIM and Dice losses are ``1 - similarity`` or ``-similarity``).
    """


@hookspec
def ddmr_loss_weightings():
    """Return ``{name: factory}`` of strategies that combine loss terms into one scalar.

    ``factory(loss_names, regulariser_names, **params)`` builds an ``nn.Module`` whose
    ``forward(terms: {name: scalar})`` returns the scalar and whose ``weights()`` returns
    ``{name: float}``, the current weight of each term, for logging. Learnable parameters are
    trained by the same optimiser as the network.
    """


@hookspec
def ddmr_baselines():
    """Return ``{name: factory}`` of classical registration methods (e.g. ANTs SyN).

    A baseline is an object with ``register(fixed, moving, spacing) -> disp`` on NumPy
    arrays ``(D, H, W)`` (``spacing`` a 3-tuple in mm), returning a ``(3, D, H, W)`` voxel pull
    field in the toolkit's convention, and ``available()``: whether its library is installed.
    """


@hookspec
def ddmr_datasets():
    """Return ``{name: factory}`` of datasets providing images, label maps, spacing, affine.

    A dataset is an object with ``labels`` (tuple of foreground label values) and
    ``split(name)`` for ``name`` in ``train``, ``validation``, ``test``, returning a
    ``torch.utils.data.Dataset`` whose items are ``{"image": float32 (1, D, H, W), "seg":
    uint8 (1, D, H, W) (optional), "spacing": float32 (3,), "affine": float64 (4, 4),
    "index": int}``.
    """


@hookspec
def ddmr_metrics():
    """Return ``{name: factory}`` of evaluation metrics computed on one registered pair.

    A metric is a callable on one pair dict with the keys ``fixed``, ``moving``, ``warped``
    (``(D, H, W)`` float arrays), ``fixed_seg``, ``moving_seg``, ``warped_seg`` (uint8 label
    maps, or None), ``disp`` (``(3, D, H, W)`` voxel field), ``disp_true`` (or None),
    ``spacing`` (``(3,)`` mm), ``labels`` and ``runtime`` (seconds), returning a float or
    ``{suffix: float}`` (per-label values; suffix ``""`` is the main value, CSV columns are
    ``<name>`` and ``<name>_<suffix>``). Optional attributes used by the summary:
    ``higher_is_better`` (bool), ``title``, ``unit``. Missing inputs give NaN.
    """


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
