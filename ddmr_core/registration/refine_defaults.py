"""``ddmr register``'s default refinement (``refine="auto"``): how many steps of
:func:`ddmr_core.spatial.refine.refine_field` run on the working grid after the network,
with which options, for a model of one contrast and for a model of several
(:attr:`ddmr_core.registration.register.Registrar.match_contrast`). The figures in the
comments are the brain benchmarks each value was chosen on."""

#: ``ddmr register``'s refinement steps for a model whose config has none (:meth:`~.register.Registrar.auto_refinement`)
AUTO_REFINE_ITERATIONS = 24
#: and their options (:func:`ddmr_core.spatial.refine.refine_field`): the raw images' global NCC,
#: about 48^3 voxels scored per step (a sub-lattice of the working grid), the step annealed
#: to 0, twice refine_field's smoothness penalty. Brain benchmark, 8 pairs (Dice;
#: benchmarks/register_end_to_end.py's pairs; ANTs SyN 0.931 at 1 mm, 0.922 at 2 mm): 40
#: steps at a constant step 0.929 / 0.928; annealed, penalty 0.1: 40 steps 0.944 / 0.931, 32
#: 0.942 / 0.929, 24 0.934 / 0.926; penalty 0.2: 32 0.944 / 0.933, 24 0.938 / 0.930 (0.3: 0.937
#: / 0.931). 24: the 1 mm speed target. 32^3 voxels a step did worse (0.915 at 1 mm, 40 steps)
AUTO_REFINE_OPTIONS = {"window": 0, "step_voxels": 48**3, "anneal": True, "smoothness": 0.2}
#: ... and a correction with a node every this many mm (4 voxels at 1 mm, 2 at 2 mm; on
#: the 1 mm brain benchmark, 40 annealed steps, nodes every 3 mm gave 0.941 and every 2 mm
#: 0.942 for 1.8x the time, against 4 mm's 0.944)
AUTO_REFINE_NODE_MM = 4.0
#: for a model whose card lists several contrasts (:attr:`~.register.Registrar.match_contrast`): more
#: steps on a correction twice as fine. The network left more to do on such pairs (brain
#: benchmark at 2 mm, brain-mr-any's own field, 3 pairs per contrast, 80 steps against 40:
#: inverted T1 0.809 -> 0.849, T2 0.844 -> 0.853, T1 0.931 -> 0.936, PD and FLAIR within
#: 0.003). Since its second network (brain-mr) starts the refinement closer, 40 steps do
#: as well at half the time (3 pairs each, 80 / 40 steps: T2 0.874 / 0.873, PD 0.863 /
#: 0.861, inverted 0.841 / 0.841, PD fixed 0.855 / 0.851, T1 0.934 / 0.930); annealed, 40
#: steps lost 0.006 on inverted and 0.009 with a PD fixed, 24 steps at 4 mm 0.02 on inverted
CROSS_CONTRAST_REFINE_ITERATIONS = 40
CROSS_CONTRAST_NODE_MM = 2.0
#: ... under a smoothness penalty twice refine_field's default (0.1). The two ways of putting
#: the pair into one contrast are pooled, and the way that maps from the image that cannot
#: tell the tissues apart shows structure that is not there (a PD-like fixed image mapped to
#: T1: CSF and a grey/white-matter mix share a value); a correction that fine and that free
#: fits it. Brain benchmark at 2 mm, 8 pairs each (Dice; ANTs SyN with MI): PD fixed, T1 moving
#: 0.798 -> 0.830 (0.849); T1 fixed, inverted moving 0.846 -> 0.833 (0.839); at 0.3 0.841, 0.822
CROSS_CONTRAST_SMOOTHNESS = 0.2
#: ... at a constant step (lr 0.4 annealed / 0.2 constant: T2 0.861 / 0.858, PD 0.877 / 0.884,
#: inverted 0.832 / 0.834, PD fixed 0.829 / 0.831, inverted fixed 0.895 / 0.892)
CROSS_CONTRAST_REFINE_OPTIONS = {**AUTO_REFINE_OPTIONS, "smoothness": CROSS_CONTRAST_SMOOTHNESS,
                                 "anneal": False}
