"""``abdomen_phantom``: a procedural, **synthetic** contrast-enhanced abdominal CT.

This is not patient data and not a substitute for it. It stands in for OSLO-COMET (60
contrast-enhanced CTs with liver and vessel masks, which cannot be downloaded) so the
toolkit runs end to end with no download. Every number below is a plausible textbook
value, not a measurement.

Each patient (a seed) is drawn in Hounsfield units on a grid with anisotropic spacing
(default 1.5 x 1.5 x 2.0 mm) and a radiological affine (array axis 0 runs right-to-left,
axis 1 anterior-to-posterior, as many CT NIfTIs do), with:

* air outside an elliptic body; subcutaneous fat, an abdominal muscle wall, visceral soft
  tissue mixed with fat, a few bowel gas pockets;
* liver (two lobes with a random lumpy boundary) with a portal vein tree entering at the
  hilum and three hepatic vein trees draining into the inferior vena cava, optional
  hypodense lesions;
* spine (vertebral bodies with cortical shell and discs, spinal canal, posterior
  elements), aorta, inferior vena cava, kidneys (cortex and medulla), spleen;
* correlated Gaussian noise.

Shape variation per patient: organ positions, sizes, boundary bumps, vessel branching,
body size and fat thickness all come from ``numpy.random.default_rng((seed, patient))``.

Label map values (``all_labels=True``): 1 liver (lesions included), 2 liver vessels
(portal and hepatic, inside the liver), 3 kidneys, 4 vertebrae, 5 aorta, 6 spleen,
7 liver lesions. By default (``all_labels=False``) only 1 = liver and 2 = liver vessels are
kept, the paper's two OSLO-COMET structures (lesions count as liver).
"""

from __future__ import annotations

from functools import partial
from typing import Sequence

import numpy as np
from scipy import ndimage

from ddmr_core.data.preprocess import Preprocess, as_preprocess

from .common import Subject, SubjectDataset, seeded_splits

LIVER, VESSELS, KIDNEYS, VERTEBRAE, AORTA, SPLEEN, LESIONS = 1, 2, 3, 4, 5, 6, 7
LABEL_NAMES = {1: "liver", 2: "liver vessels", 3: "kidneys", 4: "vertebrae", 5: "aorta", 6: "spleen", 7: "lesions"}

#: abdominal soft-tissue window, level 50 HU / width 400 HU: fat at 0, liver ~0.6,
#: contrast-filled vessels ~0.8, bone saturates at 1.
CT_WINDOW = (-150.0, 250.0)


def phantom_affine(shape: Sequence[int], spacing: Sequence[float]) -> np.ndarray:
    """Radiological voxel -> RAS affine centred on the grid (axis 0 towards the patient's
    left, axis 1 towards posterior, axis 2 towards superior)."""
    sx, sy, sz = (float(s) for s in spacing)
    a = np.diag([-sx, -sy, sz, 1.0])
    a[:3, 3] = -a[:3, :3] @ ((np.asarray(shape, float) - 1) / 2)
    return a


class _Canvas:
    """World coordinates of a diagonal-affine grid as broadcastable 1-D axes (mm)."""

    def __init__(self, shape, affine):
        self.shape, self.affine = tuple(shape), affine
        self.axes = [affine[i, i] * np.arange(n) + affine[i, 3] for i, n in enumerate(shape)]
        self.X = self.axes[0].reshape(-1, 1, 1).astype(np.float32)
        self.Y = self.axes[1].reshape(1, -1, 1).astype(np.float32)
        self.Z = self.axes[2].reshape(1, 1, -1).astype(np.float32)

    def ellipsoid_value(self, c, r):
        return ((self.X - c[0]) / r[0]) ** 2 + ((self.Y - c[1]) / r[1]) ** 2 + ((self.Z - c[2]) / r[2]) ** 2

    def box(self, lo, hi):
        """Index slices of the voxels whose centres lie in the world box [lo, hi]."""
        out = []
        for ax, a, b in zip(self.axes, lo, hi):
            idx = np.nonzero((ax >= a) & (ax <= b))[0]
            if idx.size == 0:
                return None
            out.append(slice(int(idx[0]), int(idx[-1]) + 1))
        return tuple(out)

    def draw_segment(self, mask, p, q, r0, r1):
        """Set ``mask`` inside a tapered tube from ``p`` (radius ``r0``) to ``q`` (``r1``), mm."""
        r = max(r0, r1)
        sl = self.box(np.minimum(p, q) - r, np.maximum(p, q) + r)
        if sl is None:
            return
        x = self.axes[0][sl[0]].reshape(-1, 1, 1) - p[0]
        y = self.axes[1][sl[1]].reshape(1, -1, 1) - p[1]
        z = self.axes[2][sl[2]].reshape(1, 1, -1) - p[2]
        d = q - p
        length2 = float(d @ d) or 1e-9
        t = np.clip((x * d[0] + y * d[1] + z * d[2]) / length2, 0, 1)
        dist2 = (x - t * d[0]) ** 2 + (y - t * d[1]) ** 2 + (z - t * d[2]) ** 2
        mask[sl] |= dist2 <= (r0 + (r1 - r0) * t) ** 2

    def smooth_noise(self, rng, wavelengths=(60.0, 160.0), terms=4):
        """Sum of random low-frequency plane waves in world space, range about [-1, 1].

        ``cos(k.x + phi)`` is the real part of a product of three 1-D complex
        exponentials, which is much cheaper than a cosine over the whole grid."""
        out = np.zeros(self.shape, np.float32)
        for _ in range(terms):
            k = rng.normal(size=3)
            k *= 2 * np.pi / rng.uniform(*wavelengths) / np.linalg.norm(k)
            e = [np.exp(1j * (k[i] * self.axes[i] + (rng.uniform(0, 2 * np.pi) if i == 0 else 0))).astype(np.complex64)
                 for i in range(3)]
            out += (e[0][:, None, None] * e[1][None, :, None] * e[2][None, None, :]).real
        return out / np.sqrt(terms / 2)


def _rotate(v, axis, angle):
    axis = axis / np.linalg.norm(axis)
    return v * np.cos(angle) + np.cross(axis, v) * np.sin(angle) + axis * (axis @ v) * (1 - np.cos(angle))


def vessel_tree(rng, start, direction, length, radius, depth, segments, min_radius=1.0):
    """Append ``(p, q, r0, r1)`` tube segments of a random bifurcating tree (mm)."""
    direction = np.asarray(direction, float) / np.linalg.norm(direction)
    end = start + direction * length
    child_r = radius * rng.uniform(0.7, 0.85)
    segments.append((start, end, radius, max(child_r, min_radius)))
    if depth == 0 or child_r < min_radius:
        return
    # a bifurcation in a random plane, with some out-of-plane jitter per child
    axis = np.cross(direction, rng.normal(size=3))
    for sign in (1, -1):
        angle = sign * np.deg2rad(rng.uniform(20, 45))
        child = _rotate(direction, axis + rng.normal(scale=0.3, size=3), angle)
        vessel_tree(rng, end, child, length * rng.uniform(0.7, 0.9),
                    child_r, depth - 1, segments, min_radius)


def make_patient(seed: int | Sequence[int], spacing=(1.5, 1.5, 2.0), fov_mm=(380.0, 280.0, 240.0),
                 lesions: bool = True, noise_hu: float = 12.0):
    """One synthetic abdominal CT.

    Args:
        seed: patient seed (an int or a sequence of ints for ``default_rng``).
        spacing: voxel spacing (mm) along the three array axes.
        fov_mm: field of view (mm) left-right, anterior-posterior, inferior-superior.
        lesions: add 0-4 hypodense liver lesions.
        noise_hu: standard deviation of the (spatially correlated) noise, HU.

    Returns:
        ``(hu float32 (D, H, W), labels uint8 (D, H, W) with all 7 labels, affine (4, 4))``.
    """
    # One function over ~80 lines by design: the organs are drawn in a fixed order from one
    # random stream, so a seed gives the same patient; the draws read top to bottom.
    rng = np.random.default_rng(seed)
    shape = tuple(max(int(round(f / s)), 8) for f, s in zip(fov_mm, spacing))
    affine = phantom_affine(shape, spacing)
    cv = _Canvas(shape, affine)
    X, Y, Z = cv.X, cv.Y, cv.Z

    def full(mask):  # masks built from (X, Y) only, broadcast along Z
        return np.broadcast_to(mask, shape).copy()

    hu = np.full(shape, -1000.0, np.float32)
    labels = np.zeros(shape, np.uint8)

    # --- body: elliptic cylinder with a bumpy outline, fat layer, muscle wall
    ax_, ay_ = rng.uniform(140, 175), rng.uniform(100, 125)
    theta = np.arctan2(Y / ay_, X / ax_)
    outline = 1 + 0.04 * np.cos(2 * theta + rng.uniform(0, 6.3)) + 0.03 * np.cos(3 * theta + rng.uniform(0, 6.3))
    taper = 1 + 0.05 * (Z / 120.0)  # a little wider towards the chest
    rho = np.sqrt((X / ax_) ** 2 + (Y / ay_) ** 2) / (outline * taper)
    fat_mm, wall_mm = rng.uniform(8, 30), rng.uniform(8, 14)
    body = rho <= 1
    muscle = rho <= 1 - fat_mm / ay_
    inner = rho <= 1 - (fat_mm + wall_mm) / ay_
    hu[body] = -100
    hu[muscle] = 50
    visceral = cv.smooth_noise(rng, (25.0, 60.0), 6)
    hu[inner] = np.where(visceral > 0.9, -90.0, 30.0)[inner]  # visceral fat pockets

    # --- spine, canal, posterior elements, paraspinal muscles
    y_sp = -ay_ * rng.uniform(0.5, 0.6)
    r_vb = rng.uniform(18, 24)
    disc_phase, disc_gap = rng.uniform(0, 30), rng.uniform(28, 34)
    radial = np.sqrt(X**2 + (Y - y_sp) ** 2)
    vb = full(radial <= r_vb)
    disc = np.abs(((Z - disc_phase) % disc_gap) - disc_gap / 2) > disc_gap / 2 - 3
    paraspinal = (((X / 55) ** 2 + ((Y - (y_sp - 30)) / 28) ** 2) <= 1) & muscle
    hu[paraspinal] = 50
    posterior = full(np.sqrt(X**2 + (Y - (y_sp - r_vb - 12)) ** 2) <= 14) & ~(np.sqrt(X**2 + (Y - (y_sp - r_vb - 12)) ** 2) <= 8)
    bone = (vb & ~disc) | posterior
    hu[vb] = 80  # discs
    hu[bone] = 220
    hu[bone & ~(full(radial <= r_vb - 2.5) | posterior)] = 700  # cortical shell of the bodies
    hu[full(np.sqrt(X**2 + (Y - (y_sp - r_vb - 12)) ** 2) <= 8)] = 20  # spinal canal
    labels[bone] = VERTEBRAE

    # --- great vessels
    ao_c = np.array([rng.uniform(-25, -10), y_sp + r_vb + rng.uniform(10, 16)])
    ao_r = rng.uniform(9, 13)
    aorta = full((X - ao_c[0]) ** 2 + (Y - ao_c[1]) ** 2 <= ao_r**2)
    ivc_c = np.array([rng.uniform(18, 28), y_sp + r_vb + rng.uniform(8, 14)])
    ivc_r = rng.uniform(9, 12)
    ivc = full((X - ivc_c[0]) ** 2 + ((Y - ivc_c[1]) / 0.8) ** 2 <= ivc_r**2)

    # --- kidneys (cortex + medulla) and spleen
    kidneys = np.zeros(shape, bool)
    z_k = rng.uniform(-70, -40)
    for side in (1, -1):
        c = (side * rng.uniform(60, 75), y_sp + rng.uniform(5, 20), z_k + side * rng.uniform(0, 15))
        r = (rng.uniform(22, 28), rng.uniform(25, 32), rng.uniform(45, 60))
        v = cv.ellipsoid_value(c, r)
        kidney = (v <= 1) & inner
        hu[kidney] = 170
        hu[(v <= 0.35) & inner] = 110
        kidneys |= kidney
    labels[kidneys] = KIDNEYS
    sp_c = (-rng.uniform(75, 95), y_sp + rng.uniform(25, 45), rng.uniform(30, 60))
    spleen = (cv.ellipsoid_value(sp_c, (rng.uniform(25, 35), rng.uniform(40, 55), rng.uniform(45, 60))) <= 1) & inner & ~kidneys
    hu[spleen] = rng.uniform(100, 120)
    labels[spleen] = SPLEEN

    # --- liver: soft union of two lobes, lumpy boundary, kept inside the muscle wall
    jitter = lambda s: rng.uniform(-s, s, 3)  # noqa: E731
    right = (np.array([70.0, -5.0, 30.0]) + jitter(8), np.array([70.0, 78.0, 72.0]) * rng.uniform(0.88, 1.12, 3))
    left = (np.array([-15.0, 35.0, 50.0]) + jitter(8), np.array([62.0, 42.0, 32.0]) * rng.uniform(0.85, 1.15, 3))
    f = np.minimum(cv.ellipsoid_value(*right), cv.ellipsoid_value(*left))
    f = f + 0.12 * cv.smooth_noise(rng, (50.0, 140.0), 4)
    liver = (f <= 1) & inner & ~vb & ~kidneys & ~spleen & ~aorta
    liver_hu = rng.uniform(90, 115)
    hu[liver] = liver_hu + 5 * cv.smooth_noise(rng, (10.0, 30.0), 3)[liver]

    # --- vessel trees: portal (from the hilum) and hepatic veins (to the IVC)
    hilum = right[0] + np.array([-0.45, -0.1, -0.45]) * right[1] + jitter(5)
    portal_segments: list = []
    confluence = np.array([5.0, ivc_c[1] + 15, hilum[2] - 55]) + jitter(5)
    trunk = (confluence, hilum, rng.uniform(6, 8), rng.uniform(5.5, 7))
    vessel_tree(rng, hilum, np.array([1.0, -0.2, 0.4]) + jitter(0.2), rng.uniform(25, 35), trunk[3], 5, portal_segments)
    vessel_tree(rng, hilum, np.array([-1.0, 0.6, 0.4]) + jitter(0.2), rng.uniform(30, 40), trunk[3] * 0.85, 5, portal_segments)
    junction = np.array([ivc_c[0], ivc_c[1], right[0][2] + 0.6 * right[1][2]]) + jitter(4)
    hepatic_segments: list = []
    for d in ([1.0, 0.4, -0.5], [0.1, 1.0, -0.5], [-0.8, 0.8, -0.2]):
        vessel_tree(rng, junction, np.array(d) + jitter(0.2), rng.uniform(30, 40), rng.uniform(5, 7), 4, hepatic_segments)
    portal = np.zeros(shape, bool)
    hepatic = np.zeros(shape, bool)
    extra = np.zeros(shape, bool)
    for seg in portal_segments:
        cv.draw_segment(portal, *seg)
    for seg in hepatic_segments:
        cv.draw_segment(hepatic, *seg)
    cv.draw_segment(extra, *trunk)
    ivc &= (Z <= junction[2] + 5)  # the IVC ends in the right atrium above the liver
    ivc &= inner

    # --- lesions: hypodense spheres inside the liver
    lesion = np.zeros(shape, bool)
    if lesions and liver.any():
        idx = np.argwhere(liver)
        for _ in range(int(min(rng.poisson(1.5), 4))):
            c = np.array([cv.axes[i][v] for i, v in enumerate(idx[rng.integers(len(idx))])])
            lesion |= cv.ellipsoid_value(c, (rng.uniform(4, 15),) * 3) <= 1
        lesion &= liver
        hu[lesion] = liver_hu - rng.uniform(40, 70)

    vessels = (portal | hepatic) & liver
    hu[hepatic & liver] = rng.uniform(130, 160)
    hu[portal & liver] = rng.uniform(160, 190)
    hu[extra & inner] = rng.uniform(160, 190)
    hu[aorta & inner] = rng.uniform(180, 230)
    hu[ivc] = rng.uniform(120, 150)
    labels[liver] = LIVER
    labels[lesion] = LESIONS
    labels[vessels] = VESSELS
    labels[aorta & inner] = AORTA
    labels[ivc] = np.where(labels[ivc] == LIVER, 0, labels[ivc])

    # --- bowel gas pockets below the liver, anterior
    for _ in range(rng.integers(2, 6)):
        c = (rng.uniform(-90, 60), rng.uniform(20, ay_ * 0.7), rng.uniform(-100, -20))
        gas = (cv.ellipsoid_value(c, rng.uniform(8, 20, 3)) <= 1) & inner & (labels == 0)
        hu[gas] = -850

    # --- correlated noise, rescaled to the requested standard deviation
    if noise_hu > 0:
        noise = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), 0.7)
        hu += noise * (noise_hu / max(float(noise.std()), 1e-6))
    return hu, labels, affine


def _load(seed, spacing, fov_mm, lesions, noise_hu, all_labels):
    hu, labels, affine = make_patient(seed, spacing, fov_mm, lesions, noise_hu)
    if not all_labels:
        labels = np.where(labels == LESIONS, LIVER, labels)
        labels[labels > VESSELS] = 0
    return hu, labels, affine


class AbdomenPhantomDataset(SubjectDataset):
    """Synthetic abdominal CT patients (see the module docstring: it is SYNTHETIC).

    Args:
        patients: number of patients.
        splits: (train, validation, test) counts or fractions; default 41/8/11 as OSLO-COMET.
        seed: generation and split seed.
        spacing: acquisition spacing (mm) of the generated volumes.
        fov_mm: field of view (mm).
        lesions: add hypodense lesions.
        noise_hu: noise standard deviation, HU.
        all_labels: keep the 7 labels instead of liver (1) and liver vessels (2).
        size: network grid (overrides the preprocessing's size).
        preprocess: a :class:`Preprocess` or dict; default: crop around the liver with a
            10 mm margin, 1 mm isotropic, resized to ``size``, window -150..250 HU.
    """

    def __init__(self, patients: int = 60, splits: Sequence[float] = (41, 8, 11), seed: int = 0,
                 spacing: Sequence[float] = (1.5, 1.5, 2.0), fov_mm: Sequence[float] = (380.0, 280.0, 240.0),
                 lesions: bool = True, noise_hu: float = 12.0, all_labels: bool = False,
                 size: Sequence[int] | None = None, preprocess=None):
        p = as_preprocess(preprocess) or Preprocess(
            spacing=1.0, crop_labels=(LIVER, VESSELS), crop_margin=10.0, window=CT_WINDOW
        )
        if size is not None:
            p = p.replace(size=tuple(int(s) for s in size))
        subjects = [
            Subject(f"phantom_{i:03d}", partial(_load, (int(seed), i), tuple(spacing), tuple(fov_mm),
                                                bool(lesions), float(noise_hu), bool(all_labels)))
            for i in range(int(patients))
        ]
        labels = tuple(LABEL_NAMES) if all_labels else (LIVER, VESSELS)
        super().__init__(subjects, labels, p, seeded_splits(len(subjects), splits, seed))
