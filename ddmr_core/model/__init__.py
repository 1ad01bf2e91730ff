"""The registration model: :class:`~.registration_model.RegistrationModel`, its gin builder
(:mod:`.build`), checkpoints (:mod:`.checkpoint`, :mod:`.checkpoint_checks`), model
releases (:mod:`.zoo`, :mod:`.publish`), the run's step-dependent :mod:`.schedule` and model cards (:mod:`.card`).

Floor: :mod:`ddmr_core.data`, :mod:`ddmr_core.spatial`, :mod:`ddmr_core.config`.
"""
