"""The affine start (``ddmr_core.spatial.prealign.fit_affine``): accuracy and time per pair.

    python benchmarks/prealign_fit.py [--size 64] [--pairs 8] [--iterations 8,3 4,1 20,10]

Pairs: the brain template (shipped in nilearn) and moving images made from it by the
paper's augmentation (``mixins/augment/paper.gin``: TPS, up to 30 mm and 10 degrees of
rigid motion, gamma and brightness), as training sees them. For each setting of the
Levenberg-Marquardt iterations at 1/4 and 1/2 resolution it prints the mean global NCC of
the moving image warped by the fit with the fixed one, the mean end-point error of the
affine field against the pair's ground-truth field (voxels; the TPS part is left for the
network, so it does not go to 0) and the median time per pair after one warm-up (CPU,
the process's torch threads). ``--iterations 0,0`` is the centroid start alone.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--iterations", nargs="+", default=["0,0", "4,1", "8,3", "10,4", "20,10"],
                    metavar="COARSE,FINE")
    args = ap.parse_args()

    from ddmr_core.config.parsing import parse_config
    from ddmr_core.data.datasets import build_augmentation
    from ddmr_core.spatial.prealign import affine_field, fit_affine
    from ddmr_core.spatial.similarity import global_ncc
    from ddmr_core.spatial.fields import warp

    s = args.size
    reg = parse_config(["mixins/augment/paper.gin", "mixins/data/mni_brain.gin"], [f"SIZE = ({s}, {s}, {s})"])
    data = reg.create("datasets", "mni_brain", size=(s, s, s))
    aug = build_augmentation()
    sample = data.split("validation")[0]
    torch.manual_seed(2023)
    with torch.no_grad():
        pairs = [aug(sample["image"][None], spacing=sample["spacing"][None], affine=sample["affine"][None],
                     index=torch.tensor([i])) for i in range(args.pairs)]
    print(f"{args.pairs} augmented brain pairs at {s}^3, torch threads {torch.get_num_threads()}")
    print(f"{'iterations':>10} {'ncc':>7} {'epe_vox':>8} {'ms/pair':>8}")
    for text in args.iterations:
        its = tuple(int(n) for n in text.split(","))
        fit_affine(pairs[0]["fixed"], pairs[0]["moving"], iterations=its)  # warm-up
        ncc, epe, times = [], [], []
        for p in pairs:
            t = time.perf_counter()
            theta = fit_affine(p["fixed"], p["moving"], iterations=its)
            times.append(time.perf_counter() - t)
            field = affine_field(theta, (s, s, s))
            ncc.append(float(global_ncc(warp(p["moving"], field, padding="border"), p["fixed"])))
            epe.append(float((field - p["disp_true"]).norm(dim=1).mean()))
        print(f"{text:>10} {statistics.mean(ncc):7.4f} {statistics.mean(epe):8.3f} "
              f"{1000 * statistics.median(times):8.1f}")


if __name__ == "__main__":
    main()
