"""gin configs: parsing, shipped-config lookup, macros (:mod:`.parsing`), the model's part of
a config and a checkpoint's config read as untrusted data (:mod:`.model_config`), and configs
treated as data (:mod:`.trust`).

Floor: :mod:`ddmr_core.plugins`.
"""
