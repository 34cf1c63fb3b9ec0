"""``sdstudio lab xyz`` and ``sdstudio lab matrix``: A1111's X/Y/Z plot and prompt matrix on the CLI.

One model load for the whole grid (another only for a "Checkpoint name" axis value); every cell is
saved with its own infotext under ``outputs/txt2img-images/DATE/``, each grid under
``outputs/txt2img-grids/DATE/`` (``--outdir`` puts both in one folder); every path is printed.
"""

from __future__ import annotations

import argparse
import datetime as dt
from pathlib import Path

from sdstudio.cli.common import (
    OUTPUTS,
    add_generation_args,
    add_hires_args,
    add_model_args,
    build_then_load,
    hires_from_args,
    request_from_args,
)


def register(sub) -> None:
    """Add ``lab xyz`` and ``lab matrix``."""
    p = sub.add_parser("xyz", help="X/Y/Z plot: a labelled grid over up to three parameters (A1111 script)")
    add_generation_args(p)
    add_model_args(p)
    add_hires_args(p)
    for axis in "xyz":
        p.add_argument(
            f"--{axis}-type", default="Nothing", help=f"{axis.upper()} axis: A1111 label, e.g. Seed, Steps"
        )
        p.add_argument(
            f"--{axis}-values", default="", help="e.g. 1-5, 1-5 (+2), 1-10 [5], [1,3,7], Euler,LMS"
        )
    p.add_argument("--vary-seeds", default="", help="axes whose position offsets the seed, e.g. x,y")
    p.add_argument("--no-legend", action="store_true", help="grid without axis labels")
    p.add_argument("--no-fixed-seeds", action="store_true", help="keep -1 seeds random per cell")
    p.add_argument("--margin", type=int, default=0, help="pixels between grid cells")
    p.add_argument("--max-batch", type=int, default=8, help="cells differing only in seed per batch")
    p.set_defaults(func=_xyz)

    p = sub.add_parser("matrix", help="prompt matrix: every combination of 'a|b|c' in one labelled grid")
    add_generation_args(p)
    add_model_args(p)
    p.add_argument("--put-at-start", action="store_true", help="put the optional parts before part 0")
    p.add_argument("--different-seeds", action="store_true", help="combination i uses seed + i")
    p.add_argument("--negative-matrix", action="store_true", help="the '|' parts are in --negative-prompt")
    p.add_argument("--delimiter", choices=("comma", "space"), default="comma", help="joining char")
    p.add_argument("--margin", type=int, default=0)
    p.set_defaults(func=_matrix)


class CliRunner:
    """Runner over loaded models: the CLI's model plus any "Checkpoint name" axis model, loaded once each."""

    def __init__(self, args: argparse.Namespace, model) -> None:
        self.args, self.models = args, {None: model}
        self.calls = 0
        self.generated: dict[int, tuple] = {}  # id(image) -> (GeneratedImage, model title), saved afterwards

    def __call__(self, request, *, init_images=None, model=None):
        from sdstudio.models.loader import load_model
        from sdstudio.pipelines import img2img, txt2img

        if model not in self.models:
            self.models[model] = load_model(model, device=self.args.device, precision=self.args.precision)
        self.calls += 1
        m = self.models[model]
        items = img2img(m, request, init_images=init_images) if init_images else txt2img(m, request)
        title = Path(m.path).stem if m.path else m.name  # as the image service names the model
        self.generated.update({id(g.image): (g, title) for g in items})
        return items


def save_result(result, runner: CliRunner, args: argparse.Namespace, kind: str = "txt2img") -> list[Path]:
    """Save and record cells and grids through the image service (A1111 layout, or all in
    ``--outdir``); print and return the paths."""
    from sdstudio.pipelines.scripts.grid import as_generated
    from sdstudio.runtime.history import HistoryStore
    from sdstudio.runtime.service import ImageService

    history = None if args.no_history else HistoryStore(f"{OUTPUTS}/history.sqlite3", OUTPUTS)
    service = ImageService(OUTPUTS, history, save_format=args.format)
    grids = (
        Path(args.outdir) if args.outdir else Path(OUTPUTS) / f"{kind}-grids" / dt.date.today().isoformat()
    )
    paths = []
    try:
        for cell in result.cells:
            g, title = runner.generated[id(cell.image)]
            paths.append(("cell", service.save(g, model_title=title, folder=args.outdir).path))
        first, title = runner.generated[id(result.cells[0].image)] if result.cells else (None, "")
        for grid in result.grids if first is not None else []:
            paths.append(
                ("grid", service.save(as_generated(grid, first), model_title=title, folder=grids).path)
            )
    finally:
        if history is not None:
            history.close()
    for what, path in paths:
        print(f"{what} {_shown(path)}")
    return [p for _, p in paths]


def _shown(path):
    try:
        return Path(path).relative_to(Path.cwd())
    except ValueError:
        return path


def _xyz(args: argparse.Namespace) -> int:
    from sdstudio.pipelines.scripts import axes, xyz_grid

    model, request = build_then_load(args, lambda d: request_from_args(args, d, hires=hires_from_args(args)))
    vary = {a.strip().lower() for a in args.vary_seeds.split(",") if a.strip()}
    choices = [
        xyz_grid.AxisChoice(
            axes.find_axis(getattr(args, f"{a}_type")), getattr(args, f"{a}_values"), [], a in vary
        )
        for a in "xyz"
    ]
    options = xyz_grid.XYZOptions(
        *choices, draw_legend=not args.no_legend, include_lone_images=True, include_sub_grids=True,
        no_fixed_seeds=args.no_fixed_seeds, margin_size=args.margin, csv_mode=True,
    )  # fmt: skip
    runner = CliRunner(args, model)
    result = xyz_grid.run_xyz(request, options, runner, max_batch=args.max_batch)
    save_result(_main_grid_per_z(result), runner, args)
    print(f"{len(result.cells)} cells in {result.runner_calls} runner calls")
    return 0


def _main_grid_per_z(result):
    """One grid per Z value (the sub-grids); the combined grid only when there are several Z values."""
    grids = result.grids
    if len(grids) == 2:  # main == the single sub-grid
        result.images = [grids[1]] + [im for im in result.images if not im.is_grid]
    return result


def _matrix(args: argparse.Namespace) -> int:
    from sdstudio.pipelines.scripts import prompt_matrix

    model, request = build_then_load(args, lambda d: request_from_args(args, d))
    options = prompt_matrix.MatrixOptions(
        args.put_at_start, args.different_seeds, "negative" if args.negative_matrix else "positive",
        args.delimiter, args.margin,
    )  # fmt: skip
    runner = CliRunner(args, model)
    result = prompt_matrix.run_prompt_matrix(request, options, runner)
    save_result(result, runner, args)
    return 0
