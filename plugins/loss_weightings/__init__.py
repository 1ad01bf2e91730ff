"""Built-in loss_weightings (filled in by its issue)."""

from ddmr_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_loss_weightings():
    return {}
