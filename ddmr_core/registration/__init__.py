"""Registering users' images with a trained model: :class:`~.register.Registrar`
(:mod:`.register`), the output folder (:mod:`.output`) and its figures (:mod:`.figures`).

Floor: :mod:`ddmr_core.model` and below.
"""
