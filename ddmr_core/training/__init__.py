"""Training: the trainer (:mod:`.trainer`), its loop (:mod:`.loop`), validation
(:mod:`.validation`), reports (:mod:`.log`), torchrun (:mod:`.distributed`) and transfer
learning (:mod:`.transfer`).

Floor: :mod:`ddmr_core.model` and below.
"""
