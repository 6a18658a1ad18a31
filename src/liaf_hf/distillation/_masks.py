"""Spatial masks of ground-truth instances on an FPN level's grid, shared by the feature-distillation methods.

Every function here is a pure tensor function: boxes in, masks out, on the boxes' device, vectorised over
instances. A level of stride `s` and size (H, W) has its cell (i, j) centred at ((j + 0.5) * s,
(i + 0.5) * s) in input pixels, the same anchor points `GFLForObjectDetection` uses; "a cell lies in a
box" means its centre does, and "a cell lies in the padding" means its centre is at or beyond the image's
valid height or width (the detector's own convention for ignoring padded anchors).

Boxes are absolute (x1, y1, x2, y2) in pixels of the padded input throughout.

Example:

```python
>>> import torch
>>> from liaf_hf.distillation._masks import gaussian_instance_masks
>>> masks = gaussian_instance_masks(torch.tensor([[8.0, 8.0, 40.0, 24.0]]), feature_size=(8, 8), stride=8)
>>> masks.shape, round(float(masks.sum()), 4)
(torch.Size([1, 8, 8]), 1.0)
```
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from ..models.gfl.loss_gfl import group_of_each

__all__ = [
    "LevelGrid",
    "box_cell_masks",
    "foreground_background_masks",
    "gaussian_instance_masks",
    "multi_level_background_masks",
    "multi_level_box_cells",
    "multi_level_gaussian_masks",
]

#: The Gaussian's standard deviation, as a share of the box's side: the window reaches half a side beyond
#: each edge, which is then three standard deviations away (value exp(-4.5) ~ 0.011 at the window's edge).
GAUSSIAN_SIGMA_PER_SIDE = 1.0 / 6.0


def _cell_centres(size: int, stride: int, *, device: torch.device) -> torch.Tensor:
    """(size,) centres of one axis' cells, in input pixels."""
    return (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * stride


def _nearest_cell(centre: torch.Tensor, *, size: int, stride: int) -> torch.Tensor:
    """(n,) index of the cell whose span holds each coordinate `centre` (n,), clamped onto the grid."""
    return (centre / stride).floor().long().clamp(0, size - 1)


def _with_fallback(profile: torch.Tensor, centre: torch.Tensor, *, stride: int) -> torch.Tensor:
    """Replace each empty row of `profile` (n, size) by a one-hot at the cell nearest `centre` (n,)."""
    size = profile.shape[1]
    nearest = torch.zeros_like(profile)
    nearest[torch.arange(profile.shape[0], device=profile.device), _nearest_cell(centre, size=size, stride=stride)] = 1
    empty = profile.sum(dim=1, keepdim=True) <= 0
    return torch.where(empty, nearest, profile)


def _gaussian_window(low: torch.Tensor, high: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """One axis of the instance mask before its fallback: the box edges `low`, `high` along the axis and the
    cell centres `points`, broadcast together (e.g. (n, 1) edges and (size,) centres -> (n, size)).

    1 between the edges, exp(-distance^2 / (2 sigma^2)) beyond them out to the window (twice the side,
    centred on the box), 0 beyond the window.
    """
    side = (high - low).clamp(min=0)
    sigma = (side * GAUSSIAN_SIGMA_PER_SIDE).clamp(min=1e-6)
    outside = torch.maximum(low - points, points - high).clamp(min=0)
    profile = torch.exp(-0.5 * (outside / sigma).square())
    # Beyond the window: more than half a side from the box (its centre more than a side away).
    return profile.masked_fill(outside > side * 0.5, 0.0)


def _gaussian_profile(low: torch.Tensor, high: torch.Tensor, points: torch.Tensor, *, stride: int) -> torch.Tensor:
    """`_gaussian_window` of (n,) edges on (size,) centres, with the nearest cell for a box whose window holds
    no cell centre."""
    return _with_fallback(_gaussian_window(low[:, None], high[:, None], points), (low + high) * 0.5, stride=stride)


def gaussian_instance_masks(boxes: torch.Tensor, *, feature_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Soft mask of each instance on one FPN level, normalised to sum 1.

    A cell whose centre lies inside the box gets 1 (before normalisation); outside the box, inside a window
    twice the box's width and height centred on the box, the value decays as a Gaussian of the distance to
    the box, separately per axis:

        m(x, y) = exp(-dx^2 / (2 sx^2)) * exp(-dy^2 / (2 sy^2)),  sx = w / 6, sy = h / 6,

    where dx (dy) is the horizontal (vertical) distance from the cell centre to the box (0 inside its span)
    and w, h the box's width and height in pixels; the window's edge (dx = w / 2) is three standard
    deviations out. Cells beyond the window get 0. The mask is then divided by its sum. An axis along which
    the window holds no cell centre (a box smaller than a cell) falls back to the single cell that contains
    the box's centre on that axis, so every instance gets a non-empty mask.

    Args:
        boxes: (n, 4) boxes, xyxy in pixels of the padded input.
        feature_size: (H, W) of the level.
        stride: the level's stride in input pixels.

    Returns:
        (n, H, W) float32 masks, each summing to 1.
    """
    height, width = feature_size
    boxes = boxes.float().reshape(-1, 4)
    xs = _cell_centres(width, stride, device=boxes.device)
    ys = _cell_centres(height, stride, device=boxes.device)
    profile_x = _gaussian_profile(boxes[:, 0], boxes[:, 2], xs, stride=stride)  # (n, W)
    profile_y = _gaussian_profile(boxes[:, 1], boxes[:, 3], ys, stride=stride)  # (n, H)
    profile_x = profile_x / profile_x.sum(dim=1, keepdim=True)
    profile_y = profile_y / profile_y.sum(dim=1, keepdim=True)
    return profile_y[:, :, None] * profile_x[:, None, :]


@dataclass
class LevelGrid:
    """Where each FPN level's cells sit when all levels' cells are laid side by side (levels finest first,
    each level's cells row by row)."""

    sizes: list[tuple[int, int]]  # each level's (H_l, W_l)
    spans: list[tuple[int, int]]  # each level's [start, end) in the P cells
    level_of_cell: torch.Tensor  # (P,) long
    indicator: torch.Tensor  # (P, L) float, 1 where the cell belongs to the level

    @classmethod
    def of(cls, maps: list[torch.Tensor]) -> LevelGrid:
        """The grid of the levels' (B, C, H_l, W_l) maps, finest first (read-only: shared by every call on
        the same sizes and device)."""
        return cls.of_sizes([tuple(level_map.shape[-2:]) for level_map in maps], maps[0].device)

    @classmethod
    def of_sizes(cls, sizes: list[tuple[int, int]], device: torch.device | str) -> LevelGrid:
        """The grid of levels of (H_l, W_l) `sizes`, finest first, on `device` (read-only, as `of`'s)."""
        return _cached(_level_grid, tuple(tuple(size) for size in sizes), torch.device(device))

    @staticmethod
    def side_by_side(maps: list[torch.Tensor]) -> torch.Tensor:
        """(B, C, H_l, W_l) maps -> (B, C, P), the levels' cells in the grid's order."""
        return torch.cat([level_map.flatten(2) for level_map in maps], dim=2)


def _cached(function, *args):
    """`function(*args)` through its `lru_cache`, or, while torch.compile traces it, the function itself: the
    compiled code keeps what it builds either way, and tracing through the cache makes dynamo warn."""
    if torch.compiler.is_compiling():
        return function.__wrapped__(*args)
    return function(*args)


@functools.lru_cache(maxsize=32)
def _level_grid(sizes: tuple[tuple[int, int], ...], device: torch.device) -> LevelGrid:
    """`LevelGrid` of the levels' sizes, built once per grid and device (a few copies and launches saved
    per step)."""
    cells = [height * width for height, width in sizes]
    starts = [sum(cells[:level]) for level in range(len(cells))]
    level_of_cell = group_of_each(cells, device=device)
    # A comparison rather than one_hot, whose range check reads values back on the CPU.
    indicator = (level_of_cell[:, None] == torch.arange(len(cells), device=device)).float()
    return LevelGrid(
        sizes=list(sizes),
        spans=[(start, start + count) for start, count in zip(starts, cells)],
        level_of_cell=level_of_cell,
        indicator=indicator,
    )


@dataclass(frozen=True)
class _AxisCells:
    """Both axes' cells of every level, side by side (Q of them): each level's columns (x, levels finest
    first), then each level's rows (y). A "group" is one level's cells along one axis: group l < L holds
    level l's columns, group L + l its rows. Read-only: shared by every call on the same grid."""

    points: torch.Tensor  # (Q,) cell centres along their axis, input pixels
    is_row: torch.Tensor  # (Q,) bool, True for the y axis' cells
    group_of_cell: torch.Tensor  # (Q,) long
    group_indicator: torch.Tensor  # (Q, 2L) float, 1 where the cell belongs to the group
    group_axis: torch.Tensor  # (2L,) long, 0 for x groups, 1 for y groups
    group_strides: torch.Tensor  # (2L,) float
    group_last_cell: torch.Tensor  # (2L,) float, the last cell index along the group's axis
    group_offsets: torch.Tensor  # (2L,) long, where each group starts among the Q cells
    places: torch.Tensor  # (2, P) each grid cell's (row, column) among the Q cells, levels side by side


@functools.lru_cache(maxsize=32)
def _axis_cells(
    feature_sizes: tuple[tuple[int, int], ...], strides: tuple[int, ...], device: torch.device
) -> _AxisCells:
    """`_AxisCells` of a grid, built once per grid and device: a training run meets a few input shapes, and
    building these every step cost some twenty small copies and kernel launches."""
    sizes = [width for _, width in feature_sizes] + [height for height, _ in feature_sizes]
    group_strides = list(strides) * 2
    offsets = [sum(sizes[:group]) for group in range(len(sizes))]
    cells = [
        ((index + 0.5) * stride, group)
        for group, (size, stride) in enumerate(zip(sizes, group_strides))
        for index in range(size)
    ]
    num_levels = len(feature_sizes)
    rows, columns = [], []
    for level, (height, width) in enumerate(feature_sizes):
        rows += [offsets[num_levels + level] + row for row in range(height) for _ in range(width)]
        columns += [offsets[level] + column for _ in range(height) for column in range(width)]
    points, group_of_cell = torch.tensor(cells, dtype=torch.float32).to(device).unbind(1)
    group_of_cell = group_of_cell.long()
    groups = torch.arange(len(sizes), device=device)
    return _AxisCells(
        points=points,
        is_row=group_of_cell >= num_levels,
        group_of_cell=group_of_cell,
        group_indicator=(group_of_cell[:, None] == groups).float(),
        group_axis=(groups >= num_levels).long(),
        group_strides=torch.tensor(group_strides, dtype=torch.float32).to(device),
        group_last_cell=torch.tensor(sizes, dtype=torch.float32).to(device) - 1,
        group_offsets=torch.tensor(offsets).to(device),
        places=torch.tensor([rows, columns], dtype=torch.long).to(device),
    )


def _fill_empty_groups(profile: torch.Tensor, boxes: torch.Tensor, cells: _AxisCells) -> torch.Tensor:
    """(n, Q) per-axis profiles of (n, 4) boxes -> the same, in place, where every group (one level's cells
    along one axis) that holds no positive value has 1 at the cell containing the box's centre on that axis."""
    centres = (boxes[:, :2] + boxes[:, 2:]) * 0.5  # (n, 2)
    cell = (centres[:, cells.group_axis] / cells.group_strides).floor().clamp(min=0).minimum(cells.group_last_cell)
    nearest = cell.long() + cells.group_offsets  # (n, 2L)
    # An empty group holds only zeros, so adding 1 at its nearest cell sets that cell to 1; elsewhere this
    # adds 0 (one scatter instead of a gather, a fill and a write-back).
    empty = ((profile @ cells.group_indicator) <= 0).to(profile.dtype)  # (n, 2L)
    return profile.scatter_add_(1, nearest, empty)


def multi_level_gaussian_masks(
    boxes: torch.Tensor, *, feature_sizes: list[tuple[int, int]], strides: list[int]
) -> torch.Tensor:
    """`gaussian_instance_masks` of every level at once, the levels' cells side by side.

    Equal to concatenating `gaussian_instance_masks(boxes, feature_size=size, stride=stride).flatten(1)` over
    the levels (up to float rounding), in a fixed number of tensor operations whatever the number of levels:
    the profiles of both axes on all levels are computed in one pass over the cells of `_AxisCells`, and the
    per-level steps (the fallback to the nearest cell, the normalisation) act on all levels and axes through
    each cell's group.

    Args:
        boxes: (n, 4) boxes, xyxy in pixels of the padded input.
        feature_sizes: (H_l, W_l) of each level.
        strides: each level's stride in input pixels.

    Returns:
        (n, sum_l H_l W_l) float32; each level's block (its cells row by row) sums to 1.
    """
    boxes = boxes.float().reshape(-1, 4)
    cells = _cached(_axis_cells, tuple(tuple(size) for size in feature_sizes), tuple(strides), boxes.device)
    # Each cell's box edges along its own axis: x1, x2 for columns, y1, y2 for rows.
    low = torch.where(cells.is_row, boxes[:, 1:2], boxes[:, 0:1])  # (n, Q)
    high = torch.where(cells.is_row, boxes[:, 3:4], boxes[:, 2:3])
    # A group whose window holds no cell centre takes the cell nearest the box's centre on that axis.
    profile = _fill_empty_groups(_gaussian_window(low, high, cells.points), boxes, cells)
    profile = profile / (profile @ cells.group_indicator)[:, cells.group_of_cell]
    # Each cell of each level, row by row: its row's profile value times its column's.
    return profile[:, cells.places[0]] * profile[:, cells.places[1]]


def box_cell_masks(boxes: torch.Tensor, *, feature_size: tuple[int, int], stride: int) -> torch.Tensor:
    """Hard mask of each instance: the cells whose centre lies inside the box (edges included).

    A box that holds no cell centre along an axis takes the cell containing its centre on that axis, so
    small objects are never left without cells (and never counted as background).

    Args:
        boxes: (n, 4) boxes, xyxy in pixels of the padded input.
        feature_size: (H, W) of the level.
        stride: the level's stride in input pixels.

    Returns:
        (n, H, W) bool masks, each with at least one True cell.
    """
    height, width = feature_size
    boxes = boxes.float().reshape(-1, 4)
    xs = _cell_centres(width, stride, device=boxes.device)
    ys = _cell_centres(height, stride, device=boxes.device)

    def inside(low: torch.Tensor, high: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        covered = ((points[None, :] >= low[:, None]) & (points[None, :] <= high[:, None])).float()
        return _with_fallback(covered, (low + high) * 0.5, stride=stride)

    inside_x = inside(boxes[:, 0], boxes[:, 2], xs)  # (n, W)
    inside_y = inside(boxes[:, 1], boxes[:, 3], ys)  # (n, H)
    return (inside_y[:, :, None] * inside_x[:, None, :]) > 0


def foreground_background_masks(
    boxes: torch.Tensor,
    *,
    feature_size: tuple[int, int],
    stride: int,
    valid_size: tuple[float, float] | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background of one image on one FPN level.

    Args:
        boxes: (n, 4) boxes, xyxy in pixels of the padded input (pass the ignore regions along with the
            objects to keep them out of the background too); n may be 0.
        feature_size: (H, W) of the level.
        stride: the level's stride in input pixels.
        valid_size: (height, width) of the unpadded image in input pixels; cells centred in the padding are
            neither foreground nor background. None: the whole grid is valid.

    Returns:
        foreground: (H, W) bool, the cells of `box_cell_masks` of any box (padding included, if a box
            reaches into it).
        background: (H, W) float32, uniform over the valid cells outside every box and summing to 1; all
            zeros when no such cell exists.
    """
    height, width = feature_size
    boxes = boxes.float().reshape(-1, 4)
    device = boxes.device
    foreground = box_cell_masks(boxes, feature_size=feature_size, stride=stride).any(dim=0)
    valid = torch.ones(height, width, dtype=torch.bool, device=device)
    if valid_size is not None:
        valid_height, valid_width = torch.as_tensor(valid_size, dtype=torch.float32, device=device).unbind()
        ys = _cell_centres(height, stride, device=device)
        xs = _cell_centres(width, stride, device=device)
        valid = (ys[:, None] < valid_height) & (xs[None, :] < valid_width)
    background = (valid & ~foreground).float()
    return foreground, background / background.sum().clamp(min=1.0)


def multi_level_box_cells(
    boxes: torch.Tensor, *, feature_sizes: list[tuple[int, int]], strides: list[int]
) -> torch.Tensor:
    """`box_cell_masks` of every level at once, the levels' cells side by side.

    Equal to concatenating `box_cell_masks(boxes, feature_size=size, stride=stride).flatten(1)` over the
    levels, in a fixed number of tensor operations whatever the number of levels.

    Args:
        boxes: (n, 4) boxes, xyxy in pixels of the padded input.
        feature_sizes: (H_l, W_l) of each level.
        strides: each level's stride in input pixels.

    Returns:
        (n, sum_l H_l W_l) bool; each level's block has at least one True cell per box.
    """
    boxes = boxes.float().reshape(-1, 4)
    cells = _cached(_axis_cells, tuple(tuple(size) for size in feature_sizes), tuple(strides), boxes.device)
    # Each box's cells along both axes of every level: centres within its span (edges included).
    low = torch.where(cells.is_row, boxes[:, 1:2], boxes[:, 0:1])  # (n, Q)
    high = torch.where(cells.is_row, boxes[:, 3:4], boxes[:, 2:3])
    inside = _fill_empty_groups(((cells.points >= low) & (cells.points <= high)).float(), boxes, cells)
    # A grid cell is covered when both its row and its column are.
    return (inside[:, cells.places[0]] * inside[:, cells.places[1]]) > 0


def _owner_matrix(counts: list[int], device: torch.device) -> torch.Tensor:
    """(B, n) float, 1 where box j (the images' boxes one after another, `counts[i]` for image i) is image i's."""
    owners = group_of_each(counts, device=device)
    return (owners[None, :] == torch.arange(len(counts), device=device)[:, None]).float()


def multi_level_background_masks(
    boxes: list[torch.Tensor],
    *,
    feature_sizes: list[tuple[int, int]],
    strides: list[int],
    valid_sizes: torch.Tensor | None = None,
    ignore_boxes: list[torch.Tensor] | None = None,
) -> torch.Tensor:
    """The background of `foreground_background_masks` for every image of a batch on every level at once, the
    levels' cells side by side.

    Equal to stacking `foreground_background_masks(cat(boxes[i], ignore_boxes[i]), feature_size=size,
    stride=stride, valid_size=valid_sizes[i])[1].flatten()` over the images and concatenating over the
    levels, in a fixed number of tensor operations whatever the batch size and the number of levels (a pass
    per image and level cost about twenty, each a kernel launch on a GPU).

    Args:
        boxes: per image, (n_i, 4) boxes, xyxy in pixels of the padded input; n_i may be 0.
        feature_sizes: (H_l, W_l) of each level.
        strides: each level's stride in input pixels.
        valid_sizes: (B, 2) (height, width) of each unpadded image in input pixels; None: the whole grid is
            valid.
        ignore_boxes: per image, (k_i, 4) regions kept out of the background like the boxes; None: none.

    Returns:
        (B, sum_l H_l W_l) float32: per image, each level's block uniform over its valid cells outside every
        box and summing to 1 (all zeros when the level has no such cell).
    """
    device = boxes[0].device if boxes else torch.device("cpu")
    cells = _cached(_axis_cells, tuple(tuple(size) for size in feature_sizes), tuple(strides), device)
    boxes = [image_boxes.reshape(-1, 4).to(device, torch.float32) for image_boxes in boxes]
    if ignore_boxes is not None:
        boxes = [
            torch.cat([image_boxes, regions.reshape(-1, 4).to(image_boxes)])
            for image_boxes, regions in zip(boxes, ignore_boxes)
        ]
    every_box = torch.cat(boxes)
    covered = multi_level_box_cells(every_box, feature_sizes=feature_sizes, strides=strides).float()  # (n, P)
    # Per image, the cells that none of its boxes covers.
    background = (_owner_matrix([len(image_boxes) for image_boxes in boxes], device) @ covered) <= 0  # (B, P)
    if valid_sizes is not None:
        valid_sizes = valid_sizes.to(device=device, dtype=torch.float32)
        row_centres, column_centres = cells.points[cells.places]  # (P,) each
        background &= (row_centres < valid_sizes[:, :1]) & (column_centres < valid_sizes[:, 1:])
    background = background.float()
    grid = LevelGrid.of_sizes(feature_sizes, device)
    return background / (background @ grid.indicator).clamp(min=1.0)[:, grid.level_of_cell]
