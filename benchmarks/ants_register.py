"""What a user of ANTs runs to register one pair: the process that
``benchmarks/register_end_to_end.py`` times against ``ddmr register``.

    python benchmarks/ants_register.py FIXED MOVING MOVING_SEG OUT_DIR [--transform SyN]

Imports antspyx, reads both images and the moving label map, registers (antspyx's
``SyN`` preset: affine then SyN, mutual information, its default parameters), warps the
moving image (linear) and label map (nearest neighbour) onto the fixed grid and writes
``warped.nii.gz`` and ``warped_seg.nii.gz`` to ``OUT_DIR``.
"""

import argparse
import os

import ants


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("fixed")
    ap.add_argument("moving")
    ap.add_argument("moving_seg")
    ap.add_argument("out")
    ap.add_argument("--transform", default="SyN")
    args = ap.parse_args()
    fixed, moving = ants.image_read(args.fixed), ants.image_read(args.moving)
    moving_seg = ants.image_read(args.moving_seg)
    reg = ants.registration(fixed, moving, type_of_transform=args.transform)
    os.makedirs(args.out, exist_ok=True)
    ants.image_write(reg["warpedmovout"], os.path.join(args.out, "warped.nii.gz"))
    seg = ants.apply_transforms(fixed, moving_seg, reg["fwdtransforms"], interpolator="nearestNeighbor")
    ants.image_write(seg, os.path.join(args.out, "warped_seg.nii.gz"))


if __name__ == "__main__":
    main()
