"""Built-in backbones: ``vxm_unet`` (the paper's U-Net) and ``monai_localnet`` (MONAI)."""

from ddmr_core.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_backbones():
    from .monai_localnet import monai_localnet
    from .vxm_unet import vxm_unet

    return {"vxm_unet": vxm_unet, "monai_localnet": monai_localnet}
