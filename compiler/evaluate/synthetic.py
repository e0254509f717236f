"""The one synthetic clip of the project: a white box moving right and down and a red disc moving
left, on black. High-contrast shapes on which even the random-weight model gives localized masks
(~5% of the frame); used by the tests, the benchmark, the demo and the GPU check.

The shapes are laid out for a 480-pixel-wide frame and scaled by ``width / 480``, so any size
shows the same scene; ``synthetic_box`` is the white box's first-frame box at that size.
"""

from __future__ import annotations

import numpy as np

BASE_BOX = (100.0, 120.0, 90.0, 70.0)  # x, y, w, h of the white box on frame 0 at width 480


def synthetic_frames(n: int, width: int = 480, height: int = 360) -> list[np.ndarray]:
    """``n`` RGB uint8 frames of the scene."""
    import cv2

    s = width / 480
    frames = []
    for i in range(n):
        f = np.zeros((height, width, 3), np.uint8)
        x, y = round((100 + 8 * i) * s), round((120 + 3 * i) * s)
        cv2.rectangle(f, (x, y), (x + round(90 * s), y + round(70 * s)), (255, 255, 255), -1)
        centre = (round((330 - 5 * i) * s), round(250 * s))
        cv2.circle(f, centre, round(30 * s), (60, 60, 255), -1)
        frames.append(f)
    return frames


def synthetic_box(width: int = 480) -> tuple[float, float, float, float]:
    """The white box's first-frame box (x, y, w, h) in a frame ``width`` pixels wide."""
    s = width / 480
    x, y, w, h = BASE_BOX
    return (round(x * s), round(y * s), round(w * s), round(h * s))
