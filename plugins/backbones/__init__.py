"""Built-in backbones: ``vxm_unet`` (the paper's U-Net), ``monai_localnet`` (MONAI) and
``affine_cascade`` (a learnt affine stage in front of another backbone)."""

from ddmr_core.plugins.hookspecs import hookimpl


@hookimpl(trylast=True)
def ddmr_backbones():
    from .affine import affine_cascade
    from .monai_localnet import monai_localnet
    from .vxm_unet import vxm_unet

    return {"vxm_unet": vxm_unet, "monai_localnet": monai_localnet, "affine_cascade": affine_cascade}
