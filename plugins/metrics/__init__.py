"""Built-in metrics, computed on one evaluated pair (see :mod:`ddmr_plugins.metrics.base`).

The paper's (Section 2.6): ``ssim``, ``ncc``, ``dsc``, ``hd``, ``hd95``, ``tre``, ``runtime``;
beyond it: ``folding``, ``sdlogj``, ``epe``. Each metric object says whether higher is
better (``higher_is_better``), which the summary table uses to mark the best method.
"""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_metrics():
    from .field import epe, folding, sdlogj
    from .image import ncc, ssim
    from .runtime import runtime
    from .segmentation import dsc, hd, hd95, tre

    return {"ssim": ssim, "ncc": ncc, "dsc": dsc, "hd": hd, "hd95": hd95, "tre": tre, "runtime": runtime,
            "folding": folding, "sdlogj": sdlogj, "epe": epe}
