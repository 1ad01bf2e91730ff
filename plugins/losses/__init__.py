"""Built-in losses: image (ncc, lncc, ssim, mi), segmentation (dice, hausdorff), field (grad_l2,
bending), and supervised (epe, against the augmentation's ground-truth field)."""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_losses():
    from .image import lncc, mi, ncc, ssim
    from .regularisers import bending, grad_l2
    from .segmentation import dice, hausdorff
    from .supervised import epe

    return {"ncc": ncc, "lncc": lncc, "ssim": ssim, "mi": mi, "dice": dice, "hausdorff": hausdorff,
            "grad_l2": grad_l2, "bending": bending, "epe": epe}
