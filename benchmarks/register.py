"""Time ``ddmr register`` stages: model load, preprocess, predict, apply, write.

A paper-size ``vxm_unet`` (random weights: timings do not depend on them) on a synthetic
pair. Run::

    .venv/bin/python benchmarks/register.py [--size 128] [--device cpu] [--original-shape 182 218 182]

Prints one line per stage (seconds, mean of --repeats runs after one warm-up). The
default output grid is the working grid (the input after the recipe's resampling to
1 mm, here the input's own grid); the network runs on --size^3 inside the prediction."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="model grid edge (multiple of 64)")
    ap.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128, 256, 512, 1024])
    ap.add_argument("--original-shape", type=int, nargs=3, default=[182, 218, 182], help="1 mm input volume")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from ddmr_core.model.checkpoint import save_checkpoint
    from ddmr_core.config.parsing import config_text, parse_config
    from ddmr_core.model.build import build_model
    from ddmr_core.data.preprocess import Preprocess
    from ddmr_core.registration.register import Registrar

    torch.set_num_threads(torch.get_num_threads())
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        size = (args.size,) * 3
        parse_config(text=f"ddmr.build_model.backbone = @ddmr.backbones.vxm_unet()\n"
                          f"ddmr.backbones.vxm_unet.widths = {tuple(args.widths)}\n")
        model = build_model()
        save_checkpoint(d / "m.pt", {"model": model.state_dict(), "gin_config": config_text(),
                                     "input_size": list(size), "labels": [1],
                                     "preprocess": Preprocess(spacing=(1.0,) * 3, size=size).to_dict()})
        rng = np.random.default_rng(0)
        shape = tuple(args.original_shape)
        for name in ("f", "m"):
            vol = rng.random(shape, dtype=np.float32)
            nib.save(nib.Nifti1Image(vol, np.eye(4)), str(d / f"{name}.nii.gz"))
        t = time.perf_counter()
        reg = Registrar(d / "m.pt", device=args.device)
        print(f"model load: {time.perf_counter() - t:.2f} s ({sum(p.numel() for p in reg.model.parameters()) / 1e6:.1f} M parameters)")
        for original in (False, True):
            reg.register(d / "f.nii.gz", d / "m.nii.gz", original_resolution=original)  # warm-up
            acc = {}
            for r in range(args.repeats):
                res = reg.register(d / "f.nii.gz", d / "m.nii.gz", original_resolution=original)
                t = time.perf_counter()
                res.save(d / f"out{r}")
                res.timings["write"] = time.perf_counter() - t
                for k, v in res.timings.items():
                    acc[k] = acc.get(k, 0.0) + v / args.repeats
            grid = res.warped.shape  # original: the input's grid; else the recipe's 1 mm working grid
            print(f"output grid {grid} ({'original' if original else 'working'} resolution), device {reg.device}, "
                  f"{torch.get_num_threads()} threads:")
            for k, v in acc.items():
                print(f"  {k:>10}: {v:.3f} s")


if __name__ == "__main__":
    main()
