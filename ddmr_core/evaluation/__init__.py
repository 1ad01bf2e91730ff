"""Evaluation on fixed test sets: the loop and tables (:mod:`.evaluate`), the report
(:mod:`.report`).

Floor: :mod:`ddmr_core.registration` and below.
"""
