"""Gallery of training pairs made by the augmentation pipeline (paper section 2.2).

Writes a PNG with one row per generated pair: the fixed image, the moving image, the
ground-truth field ``disp_true`` drawn as the fixed image's grid mapped into the moving
image (``x + disp_true(x)``, over the moving image), and the moving image registered back
with ``disp_true`` (geometrically the fixed image again; its intensities keep the random
gamma/brightness change). Mid slices along the first array axis.

    .venv/bin/python examples/augmentation_gallery.py                      # MNI brain, paper.gin
    .venv/bin/python examples/augmentation_gallery.py --dataset synthetic --out gallery.png
    .venv/bin/python examples/augmentation_gallery.py --config my_augment.gin --pairs 6

``--dataset mni_brain`` uses the MNI ICBM152 template that ships with nilearn (no
download); ``synthetic`` uses the toolkit's synthetic phantom (no anatomy implied).
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from ddmr_core.data import datasets as experiment  # noqa: E402
from ddmr_core.config.parsing import parse_config  # noqa: E402
from ddmr_core.registration.figures import draw_deformation_grid  # noqa: E402
from ddmr_core.spatial.fields import warp  # noqa: E402


def load_images(dataset: str, size, n: int):
    """``(image (n, 1, ...), spacing (n, 3), label)`` of ``n`` samples of a dataset plugin."""
    from ddmr_core.plugins.registry import Registry

    reg = Registry()
    if dataset == "synthetic":
        ds = reg.create("datasets", "synthetic", shape=size, spacing=(3.5, 3.5, 3.5))
    else:
        ds = reg.create("datasets", dataset, size=size)
    split = ds.split("train")
    items = [split[i % len(split)] for i in range(n)]
    image = torch.stack([torch.as_tensor(it["image"]).float() for it in items])
    spacing = torch.stack([torch.as_tensor(it["spacing"]).float() for it in items])
    return image, spacing


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mni_brain", help="dataset plugin (mni_brain, synthetic, ...)")
    p.add_argument("--config", default="mixins/augment/paper.gin", help="augmentation gin file")
    p.add_argument("--size", type=int, nargs=3, default=(64, 64, 64))
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="augmentation_gallery.png")
    args = p.parse_args(argv)

    size = tuple(args.size)
    parse_config([args.config], bindings=[f"SIZE = {size}", f"ddmr.build_augmentation.seed = {args.seed}"])
    pipeline = experiment.build_augmentation()
    try:
        image, spacing = load_images(args.dataset, size, args.pairs)
    except Exception as exc:  # e.g. nilearn's template missing: fall back, and say so
        print(f"dataset {args.dataset!r} unavailable ({exc}); using the synthetic phantom")
        image, spacing = load_images("synthetic", size, args.pairs)
    out = pipeline(image, spacing=spacing, index=torch.arange(args.pairs))
    back = warp(out["moving"], out["disp_true"], padding="border")

    z = out["fixed"].shape[2] // 2
    cols = ["fixed", "moving", "fixed grid in moving (x + disp_true)", "moving warped back by disp_true"]
    fig, axes = plt.subplots(args.pairs, len(cols), figsize=(3 * len(cols), 3 * args.pairs), squeeze=False)
    for r in range(args.pairs):
        f = out["fixed"][r, 0, z].numpy()
        m = out["moving"][r, 0, z].numpy()
        b = back[r, 0, z].numpy()
        u = out["disp_true"][r, 1:, z].numpy()  # in-plane components (axes 1, 2)
        mm = (out["disp_true"][r] * out["spacing"][r].view(3, 1, 1, 1)).norm(dim=0).max()
        panels = [f, m, m, b]
        for c, (ax, img) in enumerate(zip(axes[r], panels)):
            # axis 1 horizontal, axis 2 vertical, as every ddmr figure draws slices
            ax.imshow(img.T, cmap="gray", vmin=0, vmax=1, origin="lower")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        # where each fixed voxel is found in the moving image (x + disp_true)
        draw_deformation_grid(axes[r, 2], u, step=4, color="tab:orange")
        axes[r, 0].set_ylabel(f"pair {r}: max |u| {float(mm):.1f} mm", fontsize=8)
    fig.suptitle(f"{args.config} on {args.dataset} at {size}, slice {z} of axis 0", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
