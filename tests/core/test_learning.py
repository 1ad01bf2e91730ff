"""Real learning: a tiny vxm_unet registers one synthetic 32^3 pair on CPU.

The pair is a ``synthetic`` phantom (fixed) and the same phantom warped with a known
smooth field of up to 3.5 voxels (moving), so the structures overlap poorly before
registration. A segmentation-guided model (NCC + soft Dice + grad_l2, fixed weights of
equation 1) is trained on that one pair; the training loss must fall and the Dice of the
nearest-neighbour-warped label map must rise by at least 0.2 over no registration.
"""

import math

import numpy as np
import torch

from ddmr_core.model.registration_model import RegistrationModel
from ddmr_core.spatial.fields import one_hot, warp
from ddmr_plugins.backbones.vxm_unet import vxm_unet
from ddmr_plugins.datasets.synthetic import make_phantom
from ddmr_plugins.loss_weightings.fixed import fixed
from ddmr_plugins.losses.image import ncc
from ddmr_plugins.losses.regularisers import grad_l2
from ddmr_plugins.losses.segmentation import dice

SIZE = 32
LABELS = (1, 2)
STEPS = 200


def _pair():
    image, labels = make_phantom((SIZE,) * 3, len(LABELS), seed=3)
    fixed_img = torch.from_numpy(image)[None, None]
    fixed_lab = torch.from_numpy(labels)[None, None]
    g = torch.stack(torch.meshgrid(*[torch.linspace(0, 1, SIZE)] * 3, indexing="ij"))
    # a smooth pull field, one low-frequency sine per component, 3.5 voxels at most
    u = 3.5 * torch.stack([
        torch.sin(math.pi * g[1] + 0.3),
        torch.sin(math.pi * g[2] + 1.0),
        torch.cos(math.pi * g[0]),
    ])[None]
    moving_img = warp(fixed_img, u, padding="border")
    moving_lab = warp(fixed_lab, u, mode="nearest")
    return fixed_img, fixed_lab, moving_img, moving_lab


def _dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """Hard Dice of two label maps, mean over LABELS (hand formula 2|A&B| / (|A|+|B|))."""
    scores = []
    for lab in LABELS:
        x, y = (a == lab), (b == lab)
        scores.append(2.0 * (x & y).sum().item() / (x.sum() + y.sum()).item())
    return float(np.mean(scores))


def test_tiny_backbone_learns_to_register_one_pair():
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest and deterministic
    try:
        fixed_img, fixed_lab, moving_img, moving_lab = _pair()
        before = _dice(moving_lab, fixed_lab)
        assert before < 0.6  # the deformation really misaligns the structures

        # tiny and at half resolution to keep the test fast; the smooth field needs no more
        backbone = vxm_unet(widths=(4, 8, 8), head=(8,), size=(SIZE,) * 3, half_res=True)
        model = RegistrationModel(backbone, {"ncc": ncc(), "dice": dice(), "grad_l2": grad_l2()}, fixed)
        batch = {
            "fixed": fixed_img,
            "moving": moving_img,
            "fixed_segs": one_hot(fixed_lab, LABELS),
            "moving_segs": one_hot(moving_lab, LABELS),
        }
        opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        losses = []
        for _ in range(STEPS):
            opt.zero_grad()
            total, _, _ = model.compute_loss(batch)
            total.backward()
            opt.step()
            losses.append(total.item())

        model.eval()
        with torch.no_grad():
            disp = model(fixed_img, moving_img)["disp"]
        after = _dice(warp(moving_lab, disp, mode="nearest"), fixed_lab)
    finally:
        torch.set_num_threads(threads)

    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])
    assert after >= before + 0.2, (before, after)

