"""Built-in datasets."""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_datasets():
    from .abdomen_phantom import AbdomenPhantomDataset
    from .mni_brain import MniBrainDataset
    from .nifti import ManifestDataset, NiftiFolderDataset
    from .prepared import PreparedDataset
    from .synthetic import SyntheticDataset

    return {"synthetic": SyntheticDataset, "nifti_folder": NiftiFolderDataset, "manifest": ManifestDataset,
            "mni_brain": MniBrainDataset, "abdomen_phantom": AbdomenPhantomDataset,
            "prepared": PreparedDataset}
