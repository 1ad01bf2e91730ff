"""Built-in loss weightings: ``fixed`` (eq. 1), ``uw`` (uncertainty weighting), ``dtp``
(dynamic task prioritisation), ``dwa`` (dynamic weight average)."""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_loss_weightings():
    from .dtp import dtp
    from .dwa import dwa
    from .fixed import fixed
    from .uw import uw

    return {"fixed": fixed, "uw": uw, "dtp": dtp, "dwa": dwa}
