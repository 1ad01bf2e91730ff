"""gin configs: parsing, shipped-config lookup, macros (:mod:`.parsing`), and configs
treated as data (:mod:`.trust`).

Floor: :mod:`ddmr_core.plugins`.
"""
