"""Plot helpers: the checkerboard pattern and the deformed grid's line positions."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ddmr_core.registration.figures import checkerboard, draw_deformation_grid  # noqa: E402


def test_checkerboard_alternates_tiles():
    a, b = np.zeros((4, 4)), np.ones((4, 4))
    out = checkerboard(a, b, tiles=2)  # 2x2 tiles of 2x2 voxels
    assert out.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 0, 0], [1, 1, 0, 0]]


def test_deformation_grid_lines_follow_the_field():
    disp = np.zeros((2, 8, 8))
    disp[0] = 1.5  # every voxel samples 1.5 voxels further along axis 0
    fig, ax = plt.subplots()
    draw_deformation_grid(ax, disp, step=4)
    lines = ax.get_lines()
    assert len(lines) == 4  # rows 0, 4 and columns 0, 4
    x, y = lines[0].get_data()  # line of constant axis-0 index 0
    assert np.allclose(x, 1.5) and np.allclose(y, np.arange(8))
    plt.close(fig)
