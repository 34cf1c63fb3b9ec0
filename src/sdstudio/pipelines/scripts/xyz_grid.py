"""X/Y/Z plot (A1111 ``scripts/xyz_grid.py``): every combination of up to three axes, one labelled
grid per Z value, all Z grids side by side in the main grid.

The plan is pure (axes -> cells); :func:`run_xyz` calls the runner. Cells whose requests differ
only in consecutive seeds are generated in one batched call (batch size up to ``max_batch``), and
identical cells are generated once. Batched images use the same per-image CPU noise as single
ones, so they match them to float rounding (batched matmuls), not bit for bit.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from sdstudio.config import MAX_SEED, GenerationRequest, Limits
from sdstudio.errors import SDStudioError
from sdstudio.pipelines.scripts import axes as ax
from sdstudio.pipelines.scripts.grid import (
    Runner,
    ScriptImage,
    ScriptResult,
    draw_grid_annotations,
    image_grid,
    label_texts,
    labelled_grid,
    with_params,
)

TITLE = "X/Y/Z plot"
MAX_GRID_MP = 200.0  # A1111 opts.img_max_size_mp default


@dataclass
class AxisChoice:
    """One axis as the user gave it: the option, its raw text and dropdown values."""

    axis: ax.Axis
    text: str = ""
    dropdown: list = field(default_factory=list)
    vary_seeds: bool = False


@dataclass
class XYZOptions:
    """The X/Y/Z plot's settings: A1111's ``script_args`` after the three axes."""

    x: AxisChoice
    y: AxisChoice
    z: AxisChoice
    draw_legend: bool = True
    include_lone_images: bool = False
    include_sub_grids: bool = False
    no_fixed_seeds: bool = False
    margin_size: int = 0
    csv_mode: bool = False


@dataclass
class Plan:
    """Axis values, labels and one :class:`~axes.Cell` per (ix, iy, iz), index ``ix + iy*nx + iz*nx*ny``."""

    xs: list
    ys: list
    zs: list
    labels: tuple[list[str], list[str], list[str]]
    cells: list[ax.Cell]
    base: GenerationRequest

    @property
    def shape(self) -> tuple[int, int, int]:
        return len(self.xs), len(self.ys), len(self.zs)


def nothing() -> AxisChoice:
    return AxisChoice(ax.AXES[0])


def _fix_seeds(axis: ax.Axis, values: list, rng: random.Random) -> list:
    """A1111 ``fix_axis_seeds``: -1 on a seed axis becomes one random seed, fixed for the grid."""
    if axis.label not in ("Seed", "Var. seed"):
        return values
    return [rng.randrange(MAX_SEED) if v in (None, "", -1) else v for v in values]


def plan_xyz(
    base: GenerationRequest,
    options: XYZOptions,
    *,
    model: str | None = None,
    rng: random.Random | None = None,
    max_megapixels: float = MAX_GRID_MP,
    limits: Limits | None = None,
) -> Plan:
    """Parse the three axes and build every cell's request (nothing runs); with ``limits`` every axis
    value is checked as a request is (:func:`axes.confirm`)."""
    rng = rng or random.Random()
    if not options.no_fixed_seeds:
        base = base.with_resolved_seeds(rng)  # A1111 fix_seed: one seed for the whole grid
    start = ax.Cell(base, model)
    values = []
    for choice in (options.x, options.y, options.z):
        vals = ax.parse_values(choice.axis, choice.text, choice.dropdown, options.csv_mode)
        if not options.no_fixed_seeds:
            vals = _fix_seeds(choice.axis, vals, rng)
        ax.confirm(choice.axis, vals, start, limits)
        values.append(vals)
    xs, ys, zs = values
    mp = ax.grid_megapixels((len(xs), len(ys), len(zs)), base.width, base.height)
    if mp > max_megapixels:
        raise SDStudioError(
            f"the grid would be {mp:.0f} MPixels (at most {max_megapixels:.0f})", field="script_args"
        )
    cells = [
        _cell(start, options, (x, y, z), (ix, iy, iz), (xs, ys, zs))
        for iz, z in enumerate(zs)
        for iy, y in enumerate(ys)
        for ix, x in enumerate(xs)
    ]
    labels = tuple(
        [c.axis.format(v) for v in vals] for c, vals in zip((options.x, options.y, options.z), values)
    )
    return Plan(xs, ys, zs, labels, cells, base)


def checkpoint_names(options: XYZOptions) -> list[str]:
    """The checkpoint names the plot's "Checkpoint name" axes list (to look up before queueing)."""
    names: list[str] = []
    for choice in (options.x, options.y, options.z):
        if choice.axis.label == "Checkpoint name":
            names += [
                str(v) for v in ax.parse_values(choice.axis, choice.text, choice.dropdown, options.csv_mode)
            ]
    return names


def _cell(start: ax.Cell, options: XYZOptions, value: tuple, index: tuple, lists: tuple) -> ax.Cell:
    """Apply X, then Y, then Z (A1111 order); "vary seeds" offsets the seed per position."""
    cell = start
    for choice, v, vals in zip((options.x, options.y, options.z), value, lists):
        cell = choice.axis.apply(cell, v, vals)
    (ix, iy, iz), (xs, ys, _) = index, lists
    offset = (
        ix * options.x.vary_seeds
        + iy * len(xs) * options.y.vary_seeds
        + iz * len(xs) * len(ys) * options.z.vary_seeds
    )
    if offset and cell.request.seed >= 0:
        cell = cell.replace(seed=cell.request.seed + offset)
    return cell


def batch_groups(cells: list[ax.Cell], max_batch: int = 8) -> list[tuple[ax.Cell, list[list[int]]]]:
    """Group cells into runner calls: ``(call, [[cell indices] per image of the call]])``.

    Cells equal up to their seed, one image each and without variation seeds are batched when their
    seeds are consecutive (image i of a call uses seed+i); identical cells share one image.
    """
    groups: dict[str, list[int]] = {}
    for i, cell in enumerate(cells):
        groups.setdefault(_key(cell), []).append(i)
    calls: list[tuple[ax.Cell, list[list[int]]]] = []
    for members in groups.values():
        first = cells[members[0]]
        r = first.request
        if r.n_images != 1 or r.subseed_strength > 0 or r.seed < 0 or max_batch <= 1:
            calls += [(cells[i], [[i]]) for i in members]
            continue
        by_seed: dict[int, list[int]] = {}
        for i in members:
            by_seed.setdefault(cells[i].request.seed, []).append(i)
        seeds = sorted(by_seed)
        run: list[int] = []
        for s in seeds + [None]:
            if run and (s is None or s != run[-1] + 1 or len(run) == max_batch):
                call = first.replace(seed=run[0], batch_size=len(run), n_iter=1)
                calls.append((call, [by_seed[x] for x in run]))
                run = []
            if s is not None:
                run.append(s)
    return calls


def _key(cell: ax.Cell) -> str:
    return repr((cell.model, cell.request.replace(seed=0)))


def run_cells(
    cells: list[ax.Cell], runner: Runner, *, max_batch: int = 8, init_images: list | None = None
) -> tuple[list[list[Any]], int]:
    """Generate every cell through ``runner`` (batched); returns (images per cell, runner calls)."""
    results: list[list[Any]] = [[] for _ in cells]
    calls = batch_groups(cells, max_batch)
    calls.sort(key=lambda c: c[0].model or "")  # one model switch per checkpoint, like A1111's cost order
    for call, targets in calls:
        kwargs = {"model": call.model} if call.model else {}
        if init_images is not None:
            kwargs["init_images"] = init_images
        images = list(runner(call.request, **kwargs))
        if len(targets) == 1:  # one seed: its cells get every image (batch_size * n_iter of their own)
            for i in targets[0]:
                results[i] = images
            continue
        for k, members in enumerate(targets):
            for i in members:
                results[i] = [images[k]] if k < len(images) else []
    return results, len(calls)


def run_xyz(
    base: GenerationRequest,
    options: XYZOptions,
    runner: Runner,
    *,
    model: str | None = None,
    init_images: list | None = None,
    max_batch: int = 8,
    rng: random.Random | None = None,
) -> ScriptResult:
    """Run an X/Y/Z plot; images in A1111's order: main grid, [sub-grids], [cells]."""
    plan = plan_xyz(base, options, model=model, rng=rng)
    generated, calls = run_cells(plan.cells, runner, max_batch=max_batch, init_images=init_images)
    cells = [_script_image(items, plan.cells[i]) for i, items in enumerate(generated)]
    all_cells = [
        ScriptImage(g.image, g.infotext, g.seed, g.subseed, prompt=plan.cells[i].request.prompt,
                    request=plan.cells[i].request)
        for i, items in enumerate(generated) for g in items
    ]  # fmt: skip
    grids = draw_grids(plan, cells, options)
    images = [grids[0]]
    if options.include_sub_grids:
        images += grids[1:]
    if options.include_lone_images:
        images += all_cells
    return ScriptResult(images=images, cells=all_cells, runner_calls=calls)


def _script_image(items: list, cell: ax.Cell) -> ScriptImage:
    """The cell's first image (A1111 grids use ``processed.images[0]``), blank if it was interrupted."""
    if items:
        g = items[0]
        return ScriptImage(
            g.image, g.infotext, g.seed, g.subseed, prompt=cell.request.prompt, request=cell.request
        )
    blank = Image.new("RGB", (cell.request.width, cell.request.height))
    return ScriptImage(blank, "", cell.request.seed, prompt=cell.request.prompt, request=cell.request)


def draw_grids(plan: Plan, cells: list[ScriptImage], options: XYZOptions) -> list[ScriptImage]:
    """[main grid, sub-grid per Z]: labelled X/Y grids, then the Z grids side by side."""
    nx, ny, nz = plan.shape
    xl, yl, zl = plan.labels
    subs = []
    for iz in range(nz):
        block = cells[iz * nx * ny : (iz + 1) * nx * ny]
        pictures = [c.image for c in block]
        size = max(p.width for p in pictures), max(p.height for p in pictures)
        pictures = [p if p.size == size else p.resize(size) for p in pictures]
        grid = labelled_grid(pictures, xl, yl, legend=options.draw_legend, margin=options.margin_size)
        text = (
            with_params(block[0].infotext, _axis_params(plan, options, ("x", "y")))
            if block[0].infotext
            else ""
        )
        subs.append(ScriptImage(grid, text, block[0].seed, is_grid=True, prompt=block[0].prompt))
    main = image_grid([s.image for s in subs], rows=1)
    if options.draw_legend:
        w, h = max(s.image.width for s in subs), max(s.image.height for s in subs)
        main = draw_grid_annotations(main, w, h, label_texts(zl), label_texts([""]))
    text = (
        with_params(cells[0].infotext, _axis_params(plan, options, ("x", "y", "z")))
        if cells[0].infotext
        else ""
    )
    return [ScriptImage(main, text, cells[0].seed, is_grid=True, prompt=cells[0].prompt)] + subs


def _axis_params(plan: Plan, options: XYZOptions, which: tuple[str, ...]) -> dict[str, Any]:
    """The grid infotext's extra params (A1111: Script, X Type, X Values, Fixed X Values, ...)."""
    out: dict[str, Any] = {"Script": TITLE}
    for name in which:
        choice: AxisChoice = getattr(options, name)
        values = {"x": plan.xs, "y": plan.ys, "z": plan.zs}[name]
        if choice.axis.label == "Nothing":
            continue
        letter = name.upper()
        out[f"{letter} Type"] = choice.axis.label
        out[f"{letter} Values"] = choice.text or ", ".join(map(str, choice.dropdown))
        if choice.axis.label in ("Seed", "Var. seed") and not options.no_fixed_seeds:
            out[f"Fixed {letter} Values"] = ", ".join(str(v) for v in values)
    return out


# --- A1111 script_args ----------------------------------------------------------------------
# v1.10 ui(): [x_type, x_values, x_values_dropdown, y_type, y_values, y_values_dropdown, z_type,
# z_values, z_values_dropdown, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
# vary_seeds_x, vary_seeds_y, vary_seeds_z, margin_size, csv_mode]; missing trailing args take
# the UI defaults, as A1111's API fills them.
ARG_DEFAULTS: list[Any] = [
    1,
    "",
    [],
    0,
    "",
    [],
    0,
    "",
    [],
    True,
    False,
    False,
    False,
    False,
    False,
    False,
    0,
    False,
]


def options_from_args(script_args: list, kind: str = "txt2img") -> XYZOptions:
    """Build :class:`XYZOptions` from A1111 ``script_args`` (axis types by index or label)."""
    if not isinstance(script_args, list) or len(script_args) > len(ARG_DEFAULTS):
        raise SDStudioError(
            f"script_args for X/Y/Z plot must be a list of at most {len(ARG_DEFAULTS)} values",
            field="script_args",
        )
    a = list(script_args) + ARG_DEFAULTS[len(script_args) :]

    def choice(i: int, vary: Any) -> AxisChoice:
        dropdown = a[i + 2] if isinstance(a[i + 2], list) else []
        return AxisChoice(ax.find_axis(a[i], kind), str(a[i + 1] or ""), dropdown, bool(vary))

    return XYZOptions(
        x=choice(0, a[13]),
        y=choice(3, a[14]),
        z=choice(6, a[15]),
        draw_legend=bool(a[9]),
        include_lone_images=bool(a[10]),
        include_sub_grids=bool(a[11]),
        no_fixed_seeds=bool(a[12]),
        margin_size=_int_arg(a[16], "margin_size", 0, 500),
        csv_mode=bool(a[17]),
    )


def _int_arg(value: Any, name: str, lo: int, hi: int) -> int:
    try:
        v = int(value)
    except (TypeError, ValueError, OverflowError):
        raise SDStudioError(
            f"script_args: {name} must be an integer, got {value!r}", field="script_args"
        ) from None
    if not lo <= v <= hi:
        raise SDStudioError(f"script_args: {name} must be in [{lo}, {hi}], got {v}", field="script_args")
    return v


ModelCheck = Callable[[str], Any]
