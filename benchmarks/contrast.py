"""Registration across MR contrasts: ddmr models against ANTs SyN (issue 31).

    python benchmarks/contrast.py                                   # brain-mr and brain-mr-any, 8 pairs each
    python benchmarks/contrast.py --model runs/any/best.pt --pairs 2 --no-ants   # smoke test
    python benchmarks/contrast.py --refined        # also as ddmr register runs them (refined)
    python benchmarks/contrast.py --refined --swapped   # the roles swapped: T1 onto a T2/PD/... template
    python benchmarks/contrast.py --model brain-mr-any --second-pass runs/fine/best.pt --no-ants   # another second network
    python benchmarks/contrast.py --warp-mm 6     # local warps twice as large (beyond brain-mr's training)

The pairs. Fixed: the MNI ICBM152 2009a T1 template that ships inside nilearn, on a
``--spacing`` mm grid (default 2 mm, the whole template's field of view). Moving: the same
brain moved by a random rigid motion (up to 10 degrees about each axis, up to 15 mm) and a
smooth SimpleITK B-spline warp (4^3 mesh, control points N(0, 3 mm); ``--warp-mm``
sets the 3): neither made by ddmr's augmentation. Its contrast is one of

* ``T1``: the template itself;
* ``T2``: CSF bright, grey matter mid, white matter dark;
* ``PD``: grey matter brightest, CSF close, white matter darker;
* ``FLAIR``: CSF dark, grey matter bright, white matter mid;
* ``inverted``: ``1 - T1`` inside the brain, a dark background;

the four made from the template's tissue probability maps (``c_csf p_csf + c_gm p_gm +
c_wm p_wm``, tissue values jittered by 0.05 per pair, 1 % noise): a different remap from
the one ddmr's ``synth_contrast`` augmenter trains with (a random curve of the T1
intensities mixed with label-constant values).

With ``--swapped`` the roles are swapped: the template in the other contrast is the fixed
image and the T1 copy moves (T1 -> T2, ...), as when a T1 scan is registered to a template
or a scan of another contrast; the same pairs, the same label maps.

Every method gets the two arrays with their affine and no label maps (as a user runs
``ddmr register``); Dice per label (CSF/other, grey, white matter) is the moving label map
warped by the returned field (nearest neighbour) against the fixed one on the fixed grid.
ddmr: ``Registrar(model).register(..., original_resolution=True)``, the network alone (affine
start and network, and the second network the model's card names, if any: brain-mr-any
hands the pair to brain-mr; the first network alone is then also reported, ``NAME:first``),
and with ``--refined`` also ``Registrar(model, refine="auto")``, what
``ddmr register`` runs by default (``NAME+refine``); ANTs: the ``ants_syn``
baseline (affine + SyN, mutual information) for every contrast, and ``ants_syncc``
(cross-correlation) for T1 to T1 only. Runtime: the registration call (model load apart).
Folding: % of voxels with a non-positive Jacobian determinant of the returned field.
Prints a table and writes ``results.json`` and ``pairs.csv`` to ``--work``.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np

from brain_pairs import template, warp_pair

#: tissue intensities (CSF, grey matter, white matter) of each synthetic contrast
CONTRASTS = {
    "T2": (1.0, 0.55, 0.3),
    "PD": (0.85, 0.95, 0.7),
    "FLAIR": (0.08, 0.75, 0.5),
}
ALL = ("T1", "T2", "PD", "FLAIR", "inverted")


def moving_contrast(name: str, t1, tissues, rng) -> np.ndarray:
    if name == "T1":
        return t1.copy()
    brain = sum(tissues) > 0.05
    if name == "inverted":
        img = np.where(brain, t1.max() - t1, 0.0)
    else:
        values = np.asarray(CONTRASTS[name]) + rng.uniform(-0.05, 0.05, 3)
        img = sum(v * p for v, p in zip(values, tissues))
    img = img + rng.normal(0, 0.01 * float(img.max()), img.shape) * brain
    return np.clip(img, 0, None).astype(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", default=None,
                    help="registered model name or checkpoint (repeatable; default brain-mr and brain-mr-any)")
    ap.add_argument("--pairs", type=int, default=8, help="pairs per contrast (default 8)")
    ap.add_argument("--contrasts", nargs="+", default=list(ALL), choices=ALL)
    ap.add_argument("--spacing", type=float, default=2.0, help="grid spacing, mm (default 2)")
    ap.add_argument("--seed", type=int, default=31)
    ap.add_argument("--warp-mm", type=float, default=3.0,
                    help="standard deviation of the B-spline warp's control points, mm (default 3)")
    ap.add_argument("--no-ants", action="store_true")
    ap.add_argument("--refined", action="store_true",
                    help="also each model as ddmr register runs it by default (refine='auto': 24 annealed steps of NCC "
                         "on the working grid; for a model of several contrasts 40 finer, smoother steps with the "
                         "pair put into one contrast both ways), as 'NAME+refine'")
    ap.add_argument("--swapped", action="store_true",
                    help="swap the roles: the image in the other contrast is fixed, the T1 copy moves")
    ap.add_argument("--second-pass", default="auto", metavar="MODEL",
                    help="the second network of a model whose card names one: a model name or checkpoint "
                         "(default: the card's)")
    ap.add_argument("--work", default="bench_out/contrast")
    args = ap.parse_args(argv)
    if not args.warp_mm >= 0:
        ap.error(f"--warp-mm must be a non-negative number of millimetres, got {args.warp_mm:g}")

    from ddmr_core.registration.register import Registrar, dice_tre
    from ddmr_core.plugins.registry import Registry
    from ddmr_core.spatial.fields import folding_percentage, jacobian_determinant
    from ddmr_core.spatial.regrid import apply_field

    import torch

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    t1, tissues, fixed_lab, affine = template(args.spacing)
    spacing = tuple(float(s) for s in np.linalg.norm(affine[:3, :3], axis=0))
    models = args.model or ["brain-mr", "brain-mr-any"]
    methods = {}
    for m in models:
        try:
            methods[m] = Registrar(m, second_pass=args.second_pass)
            if methods[m].second is not None:  # the first network alone, for comparison
                methods[f"{m}:first"] = Registrar(m, second_pass=None)
            if args.refined:
                methods[f"{m}+refine"] = Registrar(m, refine="auto", second_pass=args.second_pass)
        except Exception as exc:  # a model not shipped in this checkout: say so and go on
            print(f"{m}: skipped ({exc})")
    baselines = {}
    if not args.no_ants:
        reg = Registry(bind_gin=False)
        baselines = {n: reg.create("baselines", n) for n in ("ants_syn", "ants_syncc")}
    roles = "fixed: the contrast below, moving: MNI T1" if args.swapped else "fixed: MNI T1, moving: the contrast below"
    print(f"{roles}; at {args.spacing:g} mm, grid {t1.shape}; {args.pairs} pairs per contrast; B-spline control "
          f"points N(0, {args.warp_mm:g} mm); torch threads {torch.get_num_threads()}")

    def score(disp, moving_lab):
        warped = apply_field(disp, affine, moving_lab, affine, labels=True)
        d = dice_tre(fixed_lab, warped, affine, (1, 2, 3))
        jac = jacobian_determinant(torch.from_numpy(np.ascontiguousarray(disp))[None].float())
        return d["dice_mean"], d["dice"], folding_percentage(jac)

    rows = []
    for contrast in args.contrasts:
        for i in range(args.pairs):
            rng = np.random.default_rng([args.seed, ALL.index(contrast), i])
            src = moving_contrast(contrast, t1, tissues, rng)
            fixed = t1
            if args.swapped:  # the same images, the other way round
                fixed, src = src, t1.copy()
            moving, moving_lab = warp_pair(t1.shape, affine, [src, fixed_lab], rng, [False, True], args.warp_mm)
            moving_lab = moving_lab.astype(np.uint8)
            before = dice_tre(fixed_lab, moving_lab, affine, (1, 2, 3))["dice_mean"]
            row = {"contrast": contrast, "pair": i, "before": before}
            for name, reg in methods.items():
                t = time.perf_counter()
                res = reg.register(fixed, moving, fixed_affine=affine, moving_affine=affine, original_resolution=True)
                row[f"{name}_s"] = time.perf_counter() - t
                row[name], per, row[f"{name}_fold"] = score(res.disp, moving_lab)
                row[f"{name}_labels"] = per
                row[f"{name}_trusted"] = res.metrics["trust"]["trusted"]
            for name, base in baselines.items():
                if name == "ants_syncc" and contrast != "T1":
                    continue
                t = time.perf_counter()
                disp = base.register(fixed, moving, spacing)
                row[f"{name}_s"] = time.perf_counter() - t
                row[name], per, row[f"{name}_fold"] = score(disp, moving_lab)
                row[f"{name}_labels"] = per
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                           if not k.endswith("_labels")), flush=True)

    names = list(methods) + list(baselines)
    summary = {}
    print(f"\n{'contrast':<9} {'method':<14} {'Dice':>12} {'CSF/GM/WM':>17} {'runtime s':>10} {'folding %':>9}")
    for contrast in args.contrasts:
        sub = [r for r in rows if r["contrast"] == contrast]
        summary[contrast] = {"before": statistics.mean(r["before"] for r in sub)}
        print(f"{contrast:<9} {'before':<14} {summary[contrast]['before']:>12.3f}")
        for n in names:
            got = [r for r in sub if n in r]
            if not got:
                continue
            d = [r[n] for r in got]
            per = [statistics.mean(r[f"{n}_labels"].get(str(k), float("nan")) for r in got) for k in (1, 2, 3)]
            summary[contrast][n] = {"dice": statistics.mean(d), "dice_sd": statistics.pstdev(d),
                                    "dice_labels": per, "runtime_s": statistics.median(r[f"{n}_s"] for r in got),
                                    "folding_pct": statistics.mean(r[f"{n}_fold"] for r in got)}
            s = summary[contrast][n]
            print(f"{'':<9} {n:<14} {s['dice']:>6.3f}±{s['dice_sd']:.3f} {'/'.join(f'{v:.2f}' for v in per):>17} "
                  f"{s['runtime_s']:>10.2f} {s['folding_pct']:>9.3f}")
    (work / "results.json").write_text(json.dumps({"spacing_mm": args.spacing, "pairs": args.pairs,
                                                   "swapped": args.swapped, "warp_mm": args.warp_mm,
                                                   "summary": summary}, indent=2))
    with open(work / "pairs.csv", "w", newline="") as fh:
        flat = [{k: v for k, v in r.items() if not k.endswith("_labels")} for r in rows]
        w = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in flat for k in r)))
        w.writeheader()
        w.writerows(flat)
    print(f"wrote {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
