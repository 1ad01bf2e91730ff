"""Image and field geometry on tensors: grids, warping, resizing, composition, Jacobians
(:mod:`.fields`), fields and volumes between grids through world coordinates
(:mod:`.regrid`), similarities (:mod:`.similarity`), network layers (:mod:`.layers`), and
the classical optimisations around a network: global prealignment (:mod:`.prealign`)
and instance refinement (:mod:`.refine`), with the contrast map that lets the refinement
compare images of two contrasts (:mod:`.contrast`).

Floor: imports only :mod:`ddmr_core.errors` (no files, no config, no plugins).
"""
