"""Built-in backbones (filled in by its issue)."""

from ddmr_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_backbones():
    return {}
