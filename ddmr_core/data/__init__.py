"""Data in and out: NIfTI images and checks (:mod:`.io`), field files (:mod:`.field_io`),
checks before work and output locks (:mod:`.guards`, :mod:`.locks`), preprocessing
(:mod:`.preprocess`), the augmentation pipeline (:mod:`.augment`), the dataset and
augmentation builders (:mod:`.datasets`), the prepared cache (:mod:`.prepare`) and fixed
test sets (:mod:`.testset`, :mod:`.build_testset`).

Floor: :mod:`ddmr_core.spatial`, :mod:`ddmr_core.config`, :mod:`ddmr_core.plugins`.
"""
