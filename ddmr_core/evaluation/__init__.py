"""Evaluation on fixed test sets: the loop and tables (:mod:`.evaluate`), the methods compared
(:mod:`.methods`), one pair's scoring (:mod:`.scoring`), the report (:mod:`.report`).

Floor: :mod:`ddmr_core.registration` and below.
"""
