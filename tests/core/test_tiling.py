"""Tiling equals the recipe's, for a spread of image sizes and tile budgets, tie rule included."""

from __future__ import annotations

import pytest

from backend.core.checks import tiles_for
from backend.core.tiling import (
    candidate_grids,
    closest_grid,
    max_patches_per_image,
    plan_tiles,
    tokens_per_tile,
)


def recipe_grid(width: int, height: int, min_num: int, max_num: int, image_size: int = 448) -> tuple[int, int]:
    """The recipe's find-closest-aspect-ratio, written out independently from its description:
    grids by area, closest aspect wins, a tie goes to the later grid only when the image area
    exceeds half of that grid's pixel area."""
    ratios = sorted({(i, j) for n in range(min_num, max_num + 1) for i in range(1, n + 1) for j in range(1, n + 1)
                     if min_num <= i * j <= max_num}, key=lambda r: r[0] * r[1])
    aspect = width / height
    best, best_diff = (1, 1), float("inf")
    for cols, rows in ratios:
        diff = abs(aspect - cols / rows)
        if diff < best_diff:
            best, best_diff = (cols, rows), diff
        elif diff == best_diff and width * height > 0.5 * image_size * image_size * cols * rows:
            best = (cols, rows)
    return best


@pytest.mark.parametrize("width, height, max_num, grid, tiles", [
    (448, 448, 12, (1, 1), 1),      # square, small: (2,2) ties but the image is not big enough
    (600, 600, 12, (1, 1), 1),      # 360000 < 0.5 * 448^2 * 4
    (800, 800, 12, (2, 2), 5),      # 640000 > 401408: the tie goes to 2x2, plus the thumbnail
    (1344, 1344, 12, (3, 3), 10),   # beats 0.5 * 448^2 * 9
    (1000, 500, 12, (2, 1), 3),     # 2:1, (4,2) ties but 500000 < 802816
    (2000, 1000, 12, (4, 2), 9),    # 2:1 large: the tie goes to 4x2
    (2000, 1000, 6, (2, 1), 3),     # (4,2) is over the budget
    (560, 448, 6, (1, 1), 1),       # aspect 1.25: (1,1), (2,2) and (3,2) all tie at 0.25; too small
    (1400, 1120, 6, (3, 2), 7),     # the same aspect, large: the last tying grid wins
    (64, 48, 6, (3, 2), 7),         # tiny images are upscaled to the closest grid all the same
    (64, 48, 3, (1, 1), 1),
    (100, 1000, 12, (1, 10), 11),   # tall
    (5000, 100, 12, (12, 1), 13),   # extreme panorama: capped by the budget
    (1, 1, 1, (1, 1), 1),
])
def test_known_grids(width, height, max_num, grid, tiles):
    assert recipe_grid(width, height, 1, max_num) == grid
    assert closest_grid(width, height, 1, max_num) == grid
    plan = plan_tiles(width, height, max_num=max_num)
    assert (plan.cols, plan.rows, plan.num_tiles) == (*grid, tiles)
    assert tiles_for(width, height, max_num, 1, True, True, 448) == tiles


SIZES = [(w, h) for w in (1, 37, 224, 447, 448, 449, 640, 896, 1024, 1280, 1920, 3000, 4032)
         for h in (1, 50, 300, 448, 480, 720, 896, 1080, 2000, 3024)]


@pytest.mark.parametrize("max_num", [1, 2, 4, 6, 8, 12, 24, 40])
def test_spread_of_sizes_equals_the_recipe(max_num):
    for w, h in SIZES if max_num <= 12 else SIZES[::3]:
        cols, rows = recipe_grid(w, h, 1, max_num)
        plan = plan_tiles(w, h, max_num=max_num)
        assert (plan.cols, plan.rows) == (cols, rows), (w, h, max_num)
        expected = cols * rows + (1 if cols * rows > 1 else 0)
        assert plan.num_tiles == expected == tiles_for(w, h, max_num, 1, True, True, 448)


def test_min_num_thumbnail_and_static():
    for w, h in SIZES[::7]:
        assert (plan_tiles(w, h, min_num=2, max_num=6).cols, plan_tiles(w, h, min_num=2, max_num=6).rows) == \
            recipe_grid(w, h, 2, 6)
    assert plan_tiles(2000, 1000, max_num=12, use_thumbnail=False).num_tiles == 8
    assert plan_tiles(2000, 1000, dynamic=False).num_tiles == 1


def test_boxes_are_row_major():
    plan = plan_tiles(2000, 1000, max_num=12)
    boxes = plan.boxes()
    assert boxes[0] == (0, 0, 448, 448) and boxes[3] == (1344, 0, 1792, 448) and boxes[4] == (0, 448, 448, 896)
    assert len(boxes) == 8


def test_candidate_grids_are_ordered_by_area():
    grids = candidate_grids(1, 12)
    areas = [c * r for c, r in grids]
    assert areas == sorted(areas) and len(grids) == len(set(grids))
    assert (12, 1) in grids and (4, 4) not in grids


def test_multi_image_budget_and_tokens():
    assert [max_patches_per_image(12, n) for n in (1, 2, 3, 5, 12, 20)] == [12, 6, 4, 2, 1, 1]
    assert tokens_per_tile() == 256


def test_bad_size():
    with pytest.raises(ValueError):
        closest_grid(0, 10)
