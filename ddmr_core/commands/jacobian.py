"""``ddmr jacobian``: the Jacobian determinant map of a saved displacement field.

    ddmr jacobian --field DIR/field.nii.gz --out DIR/jacobian.nii.gz

Writes the determinant of the Jacobian of ``x -> x + u(x)``
(:func:`ddmr_core.spatial.fields.jacobian_determinant`: central differences inside, one-sided at
the borders) on the field's grid, float32, and prints the folding percentage: voxels
whose determinant is <= 0 (:func:`ddmr_core.spatial.fields.folding_percentage`, the ``folding``
metric). The determinant has no unit: it is the same in voxel and in millimetre
coordinates (1 keeps volumes, < 1 shrinks, > 1 expands). The field is ``field.nii.gz``
(ITK/ANTs) or ``field.npz`` (ddmr). The output is written atomically, and never when it
would not be finite or would replace the field itself.
"""

from __future__ import annotations

from . import add_field_argument



def add_arguments(parser):
    add_field_argument(parser)
    parser.add_argument("--out", required=True, metavar="J", help="output NIfTI (.nii or .nii.gz) on the field's grid")


def run(args) -> int:
    import numpy as np
    import torch

    from ..data.field_io import load_field
    from ..data.guards import check_not_input, check_spacing
    from ..data.io import check_field, check_finite, save_image
    from ..data.files import check_output_file
    from ..spatial.fields import folding_percentage, jacobian_determinant

    out = check_output_file(args.out)  # before any work
    check_not_input(out, {"field": args.field})
    disp, affine = load_field(args.field)
    check_spacing(affine, f"field {args.field!r}")
    # a field moving voxels by more than 10 grid extents is no registration, and its
    # derivatives' products overflow float32 (a ~1e14 field gave an all-NaN map)
    check_field(f"field {args.field!r}", disp)
    jac = jacobian_determinant(torch.from_numpy(disp)[None].double())[0].float().numpy()
    check_finite(f"the Jacobian determinant of field {args.field!r}", jacobian=jac)  # never written as a result
    save_image(out, jac, affine)
    folded = int(np.count_nonzero(jac <= 0))
    print(f"folding: {folding_percentage(jac):.4f} % of voxels ({folded} of {jac.size}) have a Jacobian "
          f"determinant <= 0; determinant min {float(jac.min()):.4g}, median {float(np.median(jac)):.4g}, "
          f"max {float(jac.max()):.4g}")
    print(f"wrote {out}")
    return 0
