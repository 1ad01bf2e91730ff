"""Fields and volumes between grids, through world coordinates: a field carried onto another
grid (:func:`carry_field`), a field applied to a volume on any grid (:func:`apply_field`,
:func:`apply_field_to_all`, what ITK/ANTs do with ``field.nii.gz``), and the separable
linear resampling they share with preprocessing (:func:`resample_separable`).

Grids here are ``(affine, shape)`` pairs of any orientation, spacing and size, the
affines ``(4, 4)`` voxel -> RAS millimetre maps (nibabel's); fields and volumes are
``(3, D, H, W)`` / ``(D, H, W)`` arrays or tensors (no batch axis), fields in voxels of
their grid (the conventions of :mod:`ddmr_core.spatial.fields`). Work is done in slabs
along axis 0 so that memory stays bounded on large output grids.
"""

from __future__ import annotations

import numpy as np
import torch

from .fields import _PADDINGS, grid_sample, sample_at
from .grids import apply_affine, voxel_grid

#: output voxels resampled per slab (bounds the memory of the coordinate tensors)
CHUNK_VOXELS = 2 ** 21


def _slabs(shape):
    """``(a, b)`` ranges along axis 0 of about :data:`CHUNK_VOXELS` voxels each."""
    rows = max(1, CHUNK_VOXELS // max(1, int(shape[1]) * int(shape[2])))
    for a in range(0, int(shape[0]), rows):
        yield a, min(int(shape[0]), a + rows)


def _as_tensor(x, device) -> torch.Tensor:
    if hasattr(x, "detach"):
        return x.detach().to(device)
    return torch.from_numpy(np.ascontiguousarray(x)).to(device)


def carry_field(disp, source_affine, moving_affine, target_affine, shape, interpolate: bool = True,
                dtype=torch.float32) -> np.ndarray:
    """A field between two grids, carried onto a third one through world coordinates.

    ``disp`` ``(3, d, h, w)`` pairs voxel ``x`` of the grid ``source_affine`` with voxel
    ``x + disp(x)`` of the grid ``moving_affine`` (the two may differ: ``ddmr register``'s
    fixed and moving images are preprocessed each on its own). Returns the voxel pull field
    of the grid ``(target_affine, shape)`` into the same world points,
    ``w(y) = T^-1 M (x + disp(x)) - y`` with ``x = S^-1 T y``: ``disp`` is interpolated
    linearly there (``interpolate``; border padding outside its grid, so the transform
    stays continuous) or, without ``interpolate``, taken as it is (target grid = source
    grid). ``(3, *shape)`` array (float32, float64 for ``dtype=torch.float64``), computed
    in ``dtype`` on ``disp``'s device, in slabs of :data:`CHUNK_VOXELS` voxels.

    The one way a field changes grids: ``ddmr register`` (output grid) and ``ddmr evaluate
    --original-resolution`` (the fixed image's original grid) both carry fields here."""
    d = _as_tensor(disp, getattr(disp, "device", "cpu")).to(dtype)
    dev = d.device
    to_source = np.linalg.inv(source_affine) @ target_affine  # target voxel -> source voxel
    to_target = np.linalg.inv(target_affine) @ moving_affine  # moving voxel -> target voxel
    shape = tuple(int(n) for n in shape)
    # the grids ddmr register and evaluate carry between (a crop and resampling of the
    # fixed image's grid) share its axes: then x is separable, one position per axis
    axes = _axis_aligned(to_source) if interpolate else None
    A = torch.as_tensor(to_target[:3, :3], dtype=dtype, device=dev)
    out = np.zeros((3,) + shape, np.float64 if dtype == torch.float64 else np.float32)
    for a, b in _slabs(shape):
        start = (a, 0, 0)
        if axes is not None:
            pos = [torch.arange(o, o + n, device=dev, dtype=torch.float64) * k + c
                   for o, n, (k, c) in zip(start, (b - a,) + shape[1:], axes)]
            v = resample_separable(d, pos)
            for i, p in enumerate(pos):  # v = x + u
                v[i] += p.to(dtype).view([-1 if j == i else 1 for j in range(3)])
        else:
            y = voxel_grid((b - a,) + shape[1:], dev, dtype, start=start)
            x = apply_affine(to_source, y) if interpolate else y
            u = sample_at(d[None], x[None], "linear", padding="border")[0] if interpolate else d[:, a:b]
            v = x + u
        # w = T^-1 M v - y: the linear part on v, then the translation minus y, per axis
        w = torch.einsum("ij,j...->i...", A, v)
        for i in range(3):
            ramp = torch.arange(start[i], start[i] + w.shape[1 + i], device=dev, dtype=torch.float64)
            w[i] += (float(to_target[i, 3]) - ramp).to(dtype).view([-1 if j == i else 1 for j in range(3)])
        out[:, a:b] = w.cpu().numpy()
    return out


def _axis_aligned(matrix, tol: float = 1e-9):
    """``[(scale, offset)] * 3`` when the ``(4, 4)`` voxel map ``matrix`` sends each array
    axis to itself (a diagonal linear part: ``x_i = scale_i y_i + offset_i``), else None."""
    m = np.asarray(matrix, dtype=np.float64)
    lin = m[:3, :3]
    if np.abs(lin - np.diag(np.diag(lin))).max() > tol * max(1.0, np.abs(lin).max()):
        return None
    return [(float(lin[i, i]), float(m[i, 3])) for i in range(3)]


def resample_separable(volume: torch.Tensor, positions) -> torch.Tensor:
    """``volume (C, D, H, W)`` sampled at the grid ``positions[0] x positions[1] x
    positions[2]`` (float64 voxel coordinates per axis, clamped: border padding) by linear
    interpolation along one axis after the other -> ``(C, len(p0), len(p1), len(p2))``:
    trilinear interpolation (a tensor product of 1-D ones) at the cost of three 1-D
    passes. An axis whose positions are all whole voxels (a crop or padding of the grid,
    as ``ddmr register``'s working grid is of a 1 mm scan's) is one gather, without
    interpolation."""
    out = volume
    # the last axis, gathered voxel by voxel, before the middle one, gathered in rows:
    # while the upsampling has widened one axis only
    for axis in (0, 2, 1):
        pos, n = positions[axis], out.shape[1 + axis]
        p = pos.clamp(0, n - 1)
        if bool((p == p.round()).all()):
            out = _gather(out, axis, p.round().long())
            continue
        i0 = p.floor().clamp(max=max(n - 2, 0))
        frac = (p - i0).to(out.dtype).view([-1 if j == axis else 1 for j in range(3)])
        i0 = i0.long()
        i1 = (i0 + 1).clamp(max=n - 1)
        out = torch.lerp(_gather(out, axis, i0), _gather(out, axis, i1), frac)
    return out


def _gather(volume: torch.Tensor, axis: int, index: torch.Tensor) -> torch.Tensor:
    """``volume (C, D, H, W)`` at ``index`` along array ``axis`` (0-2). The last axis is
    gathered as the rows of a matrix: faster voxel by voxel than by ``index_select``."""
    if axis == 2:
        n = volume.shape[-1]
        return volume.reshape(-1, n)[:, index].view(volume.shape[:3] + (len(index),))
    return volume.index_select(1 + axis, index)


def apply_field(disp, affine, volume, volume_affine, *, shape=None, labels: bool = False,
                padding: str = "zeros", device="cpu", dtype=torch.float32) -> np.ndarray:
    """Apply a voxel pull field to a volume on any grid, through world coordinates.

    Output voxel ``y`` of the field's grid (``affine``, ``disp`` ``(3, D, H, W)``) takes
    the value of ``volume`` at the world point ``affine @ (y + disp(y))``, i.e. at voxel
    ``volume_affine^-1 affine (y + disp(y))`` of the volume (which may lie on another grid):
    what ITK/ANTs do with ``field.nii.gz``. ``disp=None`` is the identity (``volume``
    resampled onto the grid ``(affine, shape)``). Images are interpolated linearly,
    label maps (``labels``) by nearest neighbour and returned as uint8; outside the
    volume, ``padding`` (``"zeros"`` as ITK's default value, or ``"border"``).

    Returns a ``(D, H, W)`` array (float32, or uint8 for label maps); computed in
    ``dtype`` on ``device``, in slabs of :data:`CHUNK_VOXELS` voxels. ``ddmr warp``,
    ``ddmr register`` and ``ddmr evaluate --original-resolution`` apply fields here
    (several volumes of one grid at once: :func:`apply_field_to_all`)."""
    return apply_field_to_all(disp, affine, [volume], volume_affine, shape=shape, labels=[labels],
                              padding=padding, device=device, dtype=dtype)[0]


def apply_field_to_all(disp, affine, volumes, volume_affine, *, shape=None, labels=None,
                       padding: str = "zeros", device="cpu", dtype=torch.float32) -> list:
    """:func:`apply_field` for several volumes on one grid (``volume_affine``), e.g. an
    image and its label map: the sampling positions are computed once per slab.
    ``labels``: one flag per volume (default: none is a label map). Returns one array
    per volume."""
    if disp is None and shape is None:
        raise ValueError("apply_field: give disp or the grid's shape")
    if padding not in _PADDINGS:
        raise ValueError(f"padding must be one of {_PADDINGS}, got {padding!r}")
    labels = [False] * len(volumes) if labels is None else [bool(v) for v in labels]
    shape = tuple(int(n) for n in (shape if disp is None else disp.shape[1:]))
    dev = torch.device(device)
    # label values 0..255 are exact in float
    vols = [_as_tensor(v, dev)[None, None].to(dtype) for v in volumes]
    grids = {tuple(v.shape[2:]) for v in vols}
    if len(grids) != 1:
        raise ValueError(f"apply_field_to_all: the volumes' shapes differ: {sorted(grids)}")
    d = None if disp is None else _as_tensor(disp, dev).to(dtype)
    # output voxel -> grid_sample's normalised coordinates of the volumes (xyz order,
    # align_corners=True): one affine map, so a slab's positions cost one 3x3 product
    # with the field and three broadcast ramps
    to_volume = np.linalg.inv(volume_affine) @ np.asarray(affine, dtype=np.float64)
    scale = np.array([2.0 / max(n - 1, 1) for n in vols[0].shape[2:]])
    G = (np.diag(np.append(scale, 1.0)) @ to_volume)[:3]
    G[:, 3] -= 1.0
    G = G[::-1].copy()  # rows in xyz order
    lin = torch.as_tensor(G[:, :3], dtype=dtype, device=dev)
    outs = [np.zeros(shape, np.uint8 if lab else np.float32) for lab in labels]
    for a, b in _slabs(shape):
        rows = (b - a,) + shape[1:]
        g = torch.einsum("kj,j...->k...", lin, d[:, a:b]) if d is not None else torch.zeros((3,) + rows, device=dev,
                                                                                            dtype=dtype)
        ramps = [torch.arange(start, start + n, device=dev, dtype=torch.float64) for start, n in zip((a, 0, 0), rows)]
        for k in range(3):  # G y + G[:, 3]: the first two axes' plane, then the last axis' ramp
            plane = (G[k, 0] * ramps[0] + G[k, 3]).view(-1, 1, 1) + (G[k, 1] * ramps[1]).view(1, -1, 1)
            g[k] += plane.to(dtype)
            g[k] += (G[k, 2] * ramps[2]).to(dtype).view(1, 1, -1)
        grid = g.permute(1, 2, 3, 0)[None]  # channels last, a view
        for vol, lab, out in zip(vols, labels, outs):
            value = grid_sample(vol, grid, mode="nearest" if lab else "bilinear", padding_mode=padding,
                                align_corners=True)[0, 0]
            out[a:b] = (value.round().to(torch.uint8) if lab else value.float()).cpu().numpy()
    return outs
