"""Registering users' images with a trained model: :class:`~.register.Registrar`
(:mod:`.register`), which reads them (:mod:`.inputs`), brings them to the working grid
(:mod:`.working_grid`), carries the field to the output grid (:mod:`.resample`), measures
(:mod:`.metrics`) and checks (:mod:`.trust`) the result (:mod:`.result`); the output folder
(:mod:`.output`) and its figures (:mod:`.figures`).

Floor: :mod:`ddmr_core.model` and below.
"""
