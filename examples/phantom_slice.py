"""Write a PNG of the SYNTHETIC abdominal CT phantom (``abdomen_phantom``) for the README.

    python examples/phantom_slice.py [--patient 0] [--out docs/img/abdomen_phantom.png]

Left: an axial slice of the generated CT (window -150..250 HU) with the liver (red) and
liver-vessel (yellow) label contours; middle: a coronal slice; right: the same patient
after the default preprocessing (crop around the liver, 1 mm, 128^3, window to [0, 1]).
It is a procedural phantom, not patient data.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ddmr_plugins.datasets.abdomen_phantom import CT_WINDOW, AbdomenPhantomDataset  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patient", type=int, default=0)
    p.add_argument("--out", default="docs/img/abdomen_phantom.png")
    args = p.parse_args(argv)

    ds = AbdomenPhantomDataset(size=(128, 128, 128))
    hu, seg, affine = ds.load_raw(args.patient)
    image, pseg, _ = ds.preprocessing.apply(hu, affine, seg)
    c = np.argwhere(seg == 1).mean(0).astype(int)  # liver centre
    sx, sy, sz = np.abs(np.diag(affine)[:3])
    lo, hi = CT_WINDOW

    fig, ax = plt.subplots(1, 3, figsize=(10, 3.6), gridspec_kw={"width_ratios": [1.35, 1.35, 1]})
    # array axis 0 runs to the patient's left, axis 1 to posterior: transposed, this is
    # the radiological view (patient's right on the image's left, anterior up)
    ax[0].imshow(np.clip(hu[:, :, c[2]].T, lo, hi), cmap="gray", aspect=sy / sx)
    ax[0].contour(seg[:, :, c[2]].T == 1, [0.5], colors="r", linewidths=0.8)
    ax[0].contour(seg[:, :, c[2]].T == 2, [0.5], colors="y", linewidths=0.8)
    ax[0].set_title("axial (HU)", fontsize=9)
    ax[1].imshow(np.clip(hu[:, c[1], :].T, lo, hi), cmap="gray", origin="lower", aspect=sz / sx)
    ax[1].contour(seg[:, c[1], :].T == 1, [0.5], colors="r", linewidths=0.8)
    ax[1].contour(seg[:, c[1], :].T == 2, [0.5], colors="y", linewidths=0.8)
    ax[1].set_title("coronal (HU)", fontsize=9)
    k = image.shape[2] // 2
    ax[2].imshow(image[:, :, k].T, cmap="gray", vmin=0, vmax=1)
    ax[2].contour(pseg[:, :, k].T == 2, [0.5], colors="y", linewidths=0.6)
    ax[2].set_title("preprocessed 128³, [0, 1]", fontsize=9)
    for a in ax:
        a.set_axis_off()
    fig.suptitle(f"SYNTHETIC abdominal CT phantom (ddmr abdomen_phantom, patient {args.patient}): "
                 "liver red, vessels yellow", fontsize=9)
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=72)
    plt.close(fig)
    # an adaptive 64-colour palette keeps the README image small (< 100 KB)
    from PIL import Image

    Image.open(out).convert("RGB").quantize(colors=64).save(out, optimize=True)
    print(f"wrote {out} ({out.stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
