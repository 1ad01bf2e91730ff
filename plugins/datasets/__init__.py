"""Built-in datasets."""

from ddmr_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_datasets():
    from .synthetic import SyntheticDataset

    return {"synthetic": SyntheticDataset}
