"""Registering users' images with a trained model: :class:`~.register.Registrar`
(:mod:`.register`), which reads them (:mod:`.inputs`), brings them to the working grid
(:mod:`.working_grid`), carries the field to the output grid (:mod:`.resample`), measures
(:mod:`.metrics`) and checks (:mod:`.trust`) the result (:mod:`.result`); its defaults for the
refinement (:mod:`.refine_defaults`) and a second network for pairs of two contrasts
(:mod:`.second_pass`); the output folder
(:mod:`.output`) and its figures (:mod:`.figures`).

Floor: :mod:`ddmr_core.model` and below.
"""
