"""``ddmr warp``: apply a saved displacement field to another image or label map.

    ddmr warp --field DIR/field.nii.gz --moving other.nii.gz --out other_warped.nii.gz
    ddmr warp --field DIR/field.npz --moving labels.nii.gz --labels --out labels_warped.nii.gz

The field is one ``ddmr register`` wrote (``field.nii.gz``, ITK/ANTs: LPS millimetres; or
``field.npz``: voxels), or any ITK/ANTs displacement field. The output lies on the field's
grid (the fixed image's); the moving volume may lie on any grid: output voxel ``y`` takes
its value at the world point ``A (y + u(y))`` (``A`` the field's affine), as ITK's
``DisplacementFieldTransform`` does (:func:`ddmr_core.spatial.regrid.apply_field`). Images are
interpolated linearly (float32 output), label maps (``--labels``) by nearest neighbour
(uint8); outside the moving volume the value is 0. The output is written atomically: an
existing file is replaced only by a complete one.
"""

from __future__ import annotations

from . import add_field_argument



def add_arguments(parser):
    add_field_argument(parser)
    parser.add_argument("--moving", required=True, metavar="IMG", help="image or label map to warp (NIfTI, any grid)")
    parser.add_argument("--labels", action="store_true",
                        help="the moving volume is a label map: nearest neighbour, uint8 output")
    parser.add_argument("--out", required=True, metavar="OUT", help="output NIfTI (.nii or .nii.gz) on the field's grid")


def run(args) -> int:
    import time

    from ..data.field_io import load_field
    from ..data.guards import check_not_input, check_spacing
    from ..data.io import check_field, check_finite, load_image, load_label_map, save_image, save_label_map
    from ..data.files import check_output_file
    from ..spatial.regrid import apply_field

    out = check_output_file(args.out)  # before any work
    check_not_input(out, {"field": args.field, "moving image": args.moving})
    t = time.perf_counter()
    disp, affine = load_field(args.field)
    check_spacing(affine, f"field {args.field!r}")
    check_field(f"field {args.field!r}", disp)  # moving voxels by > 10 grid extents: no registration
    volume, volume_affine = (load_label_map if args.labels else load_image)(args.moving)
    check_spacing(volume_affine, f"moving image {args.moving!r}")
    warped = apply_field(disp, affine, volume, volume_affine, labels=args.labels)
    check_finite(f"warping {args.moving!r} with {args.field!r}", warped=warped)  # never written as a result
    (save_label_map if args.labels else save_image)(out, warped, affine)
    kind = "label map (nearest neighbour)" if args.labels else "image (linear)"
    print(f"warped {kind} {args.moving} with {args.field}: {out}, grid {tuple(warped.shape)}, "
          f"{time.perf_counter() - t:.2f} s")
    return 0
