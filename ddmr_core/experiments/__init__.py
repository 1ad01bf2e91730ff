"""Experiments as library code: resumable multi-step protocols (:mod:`.protocol`) that
call training, test sets and evaluation.

Floor: :mod:`ddmr_core.training`, :mod:`ddmr_core.evaluation` and below.
"""
