"""``ddmr register``: register users' NIfTI images with a trained checkpoint.

One pair::

    ddmr register --fixed F.nii.gz --moving M.nii.gz [--fixed-seg FS] [--moving-seg MS] \\
        --model {model.pt | NAME} --out DIR [--original-resolution] [--device cuda]

``--model`` takes a checkpoint file or a shipped model: ``brain-mr`` (its newest release)
or ``brain-mr@1`` (that release; ``ddmr models`` lists them); a path to an existing file
wins. An input that does not look like what the model's card expects (CT given to an MR
model...) gets one warning line; ``--strict`` refuses it instead.

Many pairs, model loaded once: ``--pairs pairs.csv`` with columns ``fixed,moving`` and
optionally ``fixed_seg,moving_seg`` and ``pair`` (an output sub-folder name; default
``pair_000``, ...). Relative paths are read relative to the CSV's folder. Each pair goes
to ``DIR/<pair>/``; ``DIR/summary.json`` and ``DIR/summary.csv`` gather metrics and timings.

Output files: see :mod:`ddmr_core.registration.output`. Everything is written to a temporary
folder beside ``DIR`` first, which replaces ``DIR`` as a whole only when all pairs
succeeded (an existing ``DIR`` must be empty or an earlier ``ddmr register`` output).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import time
from pathlib import Path

from ..errors import DataError, DdmrError
# constants only, no torch: ``ddmr --help`` must not import the library's torch stack
from ..registration.refine_defaults import AUTO_REFINE_ITERATIONS, CROSS_CONTRAST_REFINE_ITERATIONS


#: as ddmr_core.registration.output says (kept here: ``ddmr --help`` must not import the
#: library's torch stack)
DEFAULT_OUTPUTS = ("field", "warped", "results")

PAIR_COLUMNS = ("fixed", "moving", "fixed_seg", "moving_seg")


def _refine_steps(text: str):
    """``--refine``: ``auto`` or a non-negative integer (an argparse type)."""
    if text == "auto":
        return text
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"invalid steps {text!r}: a non-negative integer or auto")
    return int(text)
#: what ``--pairs`` writes beside the pair folders (so no pair may be named so)
SUMMARY_FILES = ("summary.json", "summary.csv")


def add_arguments(parser):
    parser.add_argument("--fixed", metavar="F", help="fixed image (NIfTI)")
    parser.add_argument("--moving", metavar="M", help="moving image (NIfTI)")
    parser.add_argument("--fixed-seg", metavar="FS", help="fixed label map (optional; gives Dice/TRE)")
    parser.add_argument("--moving-seg", metavar="MS", help="moving label map (optional; warped with nearest neighbour)")
    parser.add_argument("--pairs", metavar="CSV", help="CSV of pairs (columns fixed,moving[,fixed_seg,moving_seg][,pair])")
    parser.add_argument("--model", metavar="CKPT|NAME[@VERSION]", required=True,
                        help="ddmr checkpoint, or a shipped model: NAME (its newest release) or NAME@VERSION "
                             "(`ddmr models` lists them)")
    parser.add_argument("--out", metavar="DIR", required=True, help="output folder")
    parser.add_argument(
        "--original-resolution",
        action="store_true",
        help="write outputs on the fixed image's original grid (default: the working grid, the fixed "
             "image after the model's crop and resampling)",
    )
    parser.add_argument("--outputs", metavar="LIST", default=",".join(DEFAULT_OUTPUTS),
                        help="comma-separated outputs to write, among field (ITK/ANTs field.nii.gz), warped (the "
                             "warped image and label map), fixed (the output grid's fixed image), npz (field.npz), "
                             "overview (overview.png), results (results.json); or all "
                             f"(default: {','.join(DEFAULT_OUTPUTS)})")
    parser.add_argument("--uncompressed", action="store_true",
                        help="write .nii instead of .nii.gz (faster to write, larger files)")
    parser.add_argument("--refine", metavar="N|auto", default="auto", type=_refine_steps,
                        help="instance optimisation steps on the working grid after the network (0: none); auto "
                             "(default): the model's own if its config refines, else "
                             f"{AUTO_REFINE_ITERATIONS} steps of NCC (for a model of several contrasts, "
                             f"{CROSS_CONTRAST_REFINE_ITERATIONS} steps with the pair put into one contrast both ways)")
    parser.add_argument("--no-second-pass", action="store_true",
                        help="the model's own field only: no second network on the pair put into one contrast, "
                             "for a model whose card names one (brain-mr-any names brain-mr)")
    parser.add_argument("--strict", action="store_true",
                        help="refuse images that do not look like what the model's card says it expects (e.g. CT "
                             "given to an MR model); default: one warning line, and register anyway")
    parser.add_argument("--device", default="cpu", help="torch device for the network: cpu, cuda, cuda:N or mps "
                        "(default: cpu)")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="register even when the estimated memory need exceeds what is available")


def read_pairs(csv_path: str | Path) -> list[dict]:
    """Rows of a pairs CSV as dicts ``{pair, fixed, moving, fixed_seg, moving_seg}``
    (absent or empty segmentation cells are ``None``; paths resolved against the CSV's
    folder). Checks that every named file exists before anything runs."""
    from ..data.io import read_csv

    csv_path = Path(csv_path)
    header, rows = read_csv(csv_path, "pairs CSV")
    if not rows:
        raise DataError(f"pairs CSV {str(csv_path)!r} has no rows")
    missing = [c for c in ("fixed", "moving") if c not in header]
    if missing:
        raise DataError(f"pairs CSV {str(csv_path)!r} lacks column(s) {missing}; it has {header}")
    base = csv_path.parent
    out, seen = [], set()
    for i, row in enumerate(rows):
        line = i + 2  # header is line 1
        pair = (row.get("pair") or "").strip() or f"pair_{i:03d}"
        if not re.fullmatch(r"[\w.-]+", pair) or pair in (".", "..") or len(pair) > 200:
            raise DataError(f"pairs CSV {str(csv_path)!r} line {line}: pair name {pair!r} is not a plain folder name")
        if pair.lower() in SUMMARY_FILES:
            raise DataError(f"pairs CSV {str(csv_path)!r} line {line}: pair name {pair!r} is the name of a summary "
                            f"file of the output folder ({', '.join(SUMMARY_FILES)}); choose another")
        if pair in seen:
            raise DataError(f"pairs CSV {str(csv_path)!r} line {line}: pair name {pair!r} appears twice")
        seen.add(pair)
        item = {"pair": pair}
        for col in PAIR_COLUMNS:
            val = (row.get(col) or "").strip()
            if not val:
                if col in ("fixed", "moving"):
                    raise DataError(f"pairs CSV {str(csv_path)!r} line {line}: empty {col!r}")
                item[col] = None
                continue
            p = Path(val)
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise DataError(f"pairs CSV {str(csv_path)!r} line {line}: {col} {str(p)!r} not found")
            item[col] = str(p)
        out.append(item)
    return out


def _flat(pair: str, res) -> dict:
    """One summary row: pair, NCC and mean Dice/TRE before and after, timings."""
    row = {"pair": pair}
    for when in ("before", "after"):
        m = res.metrics.get(when, {})
        row[f"ncc_{when}"] = m.get("ncc")
        row[f"dice_mean_{when}"] = m.get("dice_mean")
        row[f"tre_mm_mean_{when}"] = m.get("tre_mm_mean")
    trust = res.metrics.get("trust") or {}
    row["trusted"] = trust.get("trusted")
    for k, v in res.timings.items():
        row[f"time_{k}_s"] = v
    return row


def _print(pair, res):
    t = res.timings
    msg = f"{pair}: predict {t['predict']:.3f} s, apply {t['apply']:.3f} s"
    after, before = res.metrics.get("after"), res.metrics.get("before")
    if after and after.get("ncc") is not None and before.get("ncc") is not None:
        msg += f", NCC {before['ncc']:.3f} -> {after['ncc']:.3f}"
    if after and after.get("dice_mean") is not None:
        msg += f", Dice {before['dice_mean']:.3f} -> {after['dice_mean']:.3f}"
    if after and after.get("tre_mm_mean") is not None and before.get("tre_mm_mean") is not None:
        msg += f", TRE {before['tre_mm_mean']:.2f} -> {after['tre_mm_mean']:.2f} mm"
    trust = res.metrics.get("trust")
    if trust is not None:
        msg += f", NMI {trust['nmi_before']:.3f} -> {trust['nmi_after']:.3f}"
        if not trust["trusted"]:
            msg += " (UNTRUSTED: see the warning above)"
    print(msg)


def run(args) -> int:
    from ..data import prefetch

    if not args.pairs:  # read while the library's imports (torch) take their second
        prefetch.prefetch([args.fixed, args.moving, args.fixed_seg, args.moving_seg])
    try:
        return _checked_run(args)
    finally:
        prefetch.discard()  # what a failed run did not read is not kept by a longer-lived caller


def _checked_run(args) -> int:
    from ..data.locks import output_lock
    from ..registration.output import check_out

    single = args.fixed is not None or args.moving is not None
    if args.pairs and (single or args.fixed_seg or args.moving_seg):
        raise DdmrError("give either --pairs CSV or --fixed/--moving (with optional segmentations), not both")
    if not args.pairs:
        if args.fixed is None or args.moving is None:
            raise DdmrError("both --fixed and --moving are needed (or --pairs CSV)")
        pairs = None
    else:
        pairs = read_pairs(args.pairs)
    out = check_out(Path(args.out))  # writable, and replaceable if it exists: before any work
    with output_lock(out, "register"):
        return _run(args, out, pairs)


def _suitability(reg, ref) -> str | None:
    """The one line of :func:`ddmr_core.model.card.suitability` for the loaded model."""
    from ..model import zoo
    from ..model.card import suitability
    from ..plugins.registry import Registry

    registry = Registry(bind_gin=False)
    others = []
    own = str(ref).split("@")[0]
    for name in registry.names("models"):
        if name == own:
            continue
        try:
            release = zoo.pick(zoo.entry_releases(registry.entry("models", name)), None)
        except Exception:  # a third-party model that lists no releases: not suggested
            continue
        if release is not None and release.card:
            others.append((name, release.card))
    return suitability(ref, reg.card, others)


def _run(args, out: Path, pairs) -> int:
    from ..data.guards import check_inputs_outside, release_large_blocks
    from ..registration.register import Registrar
    from ..registration.output import atomic_output, parse_outputs, write_into

    inputs = {"--pairs CSV": args.pairs, "--model": args.model if Path(str(args.model)).exists() else None}
    for item in pairs or [vars(args)]:
        inputs.update({col + (f" of pair {item['pair']!r}" if pairs else ""): item.get(col) for col in PAIR_COLUMNS})
    check_inputs_outside(out, inputs)  # the folder is replaced as a whole
    release_large_blocks()  # peak memory: the largest phase's, not their sum
    outputs = parse_outputs(args.outputs)
    reg = Registrar(args.model, device=args.device, strict=args.strict, refine=args.refine,
                    second_pass=None if args.no_second_pass else "auto")
    reg.memory_check = not args.no_memory_check
    ref = reg.model_info.get("ref") or args.model
    source = "" if reg.name == args.model else f" ({reg.name})"
    sha = reg.model_info.get("sha256")
    print(f"model {ref}{source}{f' sha256 {sha[:12]}' if sha else ''} loaded in {reg.load_time:.2f} s (network grid {reg.input_size}, "
          f"device {reg.device}, refinement {reg.model.refine_iterations} steps)")
    if reg.second is not None:
        print(f"second network {reg.second.model_info.get('ref') or reg.second.name} on the pair put into one contrast")
    hint = _suitability(reg, ref)
    if hint:
        print(hint)
    if pairs is None:
        res = reg.register(
            args.fixed, args.moving, args.fixed_seg, args.moving_seg,
            original_resolution=args.original_resolution,
        )
        with atomic_output(out) as tmp:
            write_into(res, tmp, outputs, not args.uncompressed)
        _print("pair", res)
        print(f"wrote {out}")
        return 0

    rows = []
    t0 = time.perf_counter()
    with atomic_output(out) as tmp:
        for item in pairs:
            res = reg.register(
                item["fixed"], item["moving"], item["fixed_seg"], item["moving_seg"],
                original_resolution=args.original_resolution,
            )
            sub = tmp / item["pair"]
            sub.mkdir()
            write_into(res, sub, outputs, not args.uncompressed)
            rows.append(_flat(item["pair"], res))
            _print(item["pair"], res)
            del res  # written: the next pair's peak memory is then its own, not both pairs' outputs
        summary = {
            "model": str(args.model),
            "model_info": reg.model_info,
            "checkpoint": reg.name,
            "model_load_s": reg.load_time,
            "total_s": time.perf_counter() - t0,
            "pairs": rows,
        }
        from ..registration.result import _jsonable

        (tmp / "summary.json").write_text(json.dumps(_jsonable(summary), indent=2, allow_nan=False))
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(tmp / "summary.csv", "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    print(f"wrote {len(rows)} pairs to {out}")
    return 0
