"""Plugin infrastructure: the hook contract (:mod:`.hookspecs`), the one pluggy manager
(:mod:`.manager`) and the name -> factory registry bound into gin (:mod:`.registry`).

Floor: imports only :mod:`ddmr_core.errors`.
"""
