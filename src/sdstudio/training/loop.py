"""The shared training loop: accelerate, EMA, progress, sample grids, loss curve, atomic checkpoints, resume.

Each trainer supplies a :class:`Task`: a module whose ``forward(**batch)`` returns the loss (so
``accelerate``'s DDP wrapper sees every forward), a ``make_batch`` that draws all randomness from
the loop's generator, a ``sample_grid`` and an ``export``. Resume is exact: the checkpoint holds
model, EMA, optimizer, the generator's state and the step, and the data order is a function of the
step (:class:`~sdstudio.training.data.BatchOrder`).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from sdstudio.errors import SDStudioError
from sdstudio.pipelines.components import signed_to_pil as to_pil  # noqa: F401 (used by the trainers)
from sdstudio.training.data import BatchOrder, ImageTextSet

CHECKPOINT = "checkpoint.pt"
GRID_LABEL_HEIGHT = 12  # pixels of text under each row of a labelled image_grid


@dataclass
class LoopConfig:
    """Settings shared by every trainer (``sdstudio train <kind> --help`` lists them)."""

    out_dir: Path
    steps: int = 1000
    batch_size: int = 64
    lr: float = 1e-4
    weight_decay: float = 0.0
    warmup_steps: int = 100
    grad_clip: float = 1.0
    seed: int = 0
    mixed_precision: str = "no"  # "no" | "bf16" | "fp16" (fp16 on CUDA only)
    checkpoint_every_s: float = 300.0
    sample_every: int = 500
    time_budget_s: float | None = None  # stop (and save) after this much wall-clock time
    resume: bool = False
    progress: bool = True
    cpu: bool = False  # force CPU even where CUDA is available

    def validate(self) -> None:
        """Raise :class:`SDStudioError` for settings no run could use."""
        if self.steps < 1 or self.batch_size < 1:
            raise SDStudioError("steps and batch size must be >= 1", field="steps")
        if self.lr <= 0:
            raise SDStudioError(f"learning rate must be > 0, got {self.lr}", field="lr")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise SDStudioError(
                f"mixed precision must be no, bf16 or fp16, not {self.mixed_precision!r}",
                field="mixed_precision",
            )


class Task(Protocol):
    """What a trainer gives the loop."""

    name: str
    model: torch.nn.Module  # forward(**batch) -> scalar loss
    ema_decay: float | None

    def setup(self, device: torch.device) -> None: ...

    def make_batch(self, images: torch.Tensor, captions: list[str], gen: torch.Generator) -> dict: ...

    def sample_grid(self, model: torch.nn.Module) -> Any: ...

    def export(self, model: torch.nn.Module, out: Path) -> None: ...


class EMA:
    """Exponential moving average of parameters with warm-up decay ``min(decay, (1+n)/(10+n))``.

    As in the DDPM and LDM training code (Ho et al. 2020 use 0.9999); buffers are copied.
    """

    def __init__(self, model: torch.nn.Module, decay: float = 0.999):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        """Move the averages towards ``model``'s current weights."""
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach().float(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)

    def to(self, device) -> EMA:
        """Move the averages to ``device`` (after the model has been placed)."""
        self.shadow = {k: v.to(device) for k, v in self.shadow.items()}
        return self

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """Return a copy of ``model`` holding the averaged weights (in eval mode)."""
        clone = copy.deepcopy(model)
        clone.load_state_dict({k: v.to(model.state_dict()[k].dtype) for k, v in self.shadow.items()})
        return clone.eval()

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)


def save_atomic(obj: dict, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path`` and ``os.replace`` it into place."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_loss_curve(losses: list[float], path: Path, title: str) -> None:
    """Write a PNG of the loss per step and its running mean (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(losses, lw=0.5, alpha=0.4, label="loss")
    if len(losses) >= 20:
        k = max(10, len(losses) // 50)
        t = torch.tensor(losses)
        smooth = torch.nn.functional.avg_pool1d(t[None, None], k, 1).flatten().tolist()
        ax.plot(range(k - 1, len(losses)), smooth, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)


def image_grid(images: list, cols: int, labels: list[str] | None = None):
    """Return one PIL image with ``images`` in rows of ``cols`` (optional text label under each)."""
    from PIL import Image, ImageDraw

    w, h = images[0].size
    lab = GRID_LABEL_HEIGHT if labels else 0
    rows = (len(images) + cols - 1) // cols
    grid = Image.new("RGB", (cols * w, rows * (h + lab)), "white")
    draw = ImageDraw.Draw(grid)
    for i, im in enumerate(images):
        x, y = (i % cols) * w, (i // cols) * (h + lab)
        grid.paste(im, (x, y))
        if labels:
            draw.text((x + 1, y + h), labels[i][: max(4, w // 6)], fill="black")
    return grid


def _rng_state(gen: torch.Generator) -> dict:
    return {"gen": gen.get_state(), "torch": torch.get_rng_state()}


def _load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise SDStudioError(f"cannot read checkpoint {path}: {exc}", field="resume") from exc


@dataclass
class LoopResult:
    """What a finished (or time-limited) run did."""

    steps: int
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    out_dir: Path | None = None


def _accelerator(cfg: LoopConfig):
    """Return an ``accelerate.Accelerator`` for ``cfg``, allowing a new precision in the same process.

    accelerate keeps one process-wide AcceleratorState; a second run in one process (the default
    recipe's stages, tests) with other settings must reset it (the distributed PartialState stays).
    """
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    reset = getattr(AcceleratorState, "_reset_state", None)
    if reset is not None:
        reset()
    return Accelerator(mixed_precision=cfg.mixed_precision, cpu=cfg.cpu)


class _Run:
    """State of one run: the loop pieces that checkpointing needs."""

    def __init__(self, task: Task, data: ImageTextSet, cfg: LoopConfig):
        cfg.validate()
        self.cfg, self.task, self.data = cfg, task, data
        self.acc = _accelerator(cfg)
        self.out = Path(cfg.out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.gen = torch.Generator().manual_seed(cfg.seed + 7919 * self.acc.process_index)
        task.setup(self.acc.device)
        self.ema = EMA(task.model, task.ema_decay) if task.ema_decay else None
        params = [p for p in task.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.step, self.losses, self.seconds = 0, [], 0.0
        if cfg.resume and (self.out / CHECKPOINT).is_file():
            self._restore(_load_checkpoint(self.out / CHECKPOINT))
        self.model, self.opt = self.acc.prepare(task.model, self.opt)
        if self.ema is not None:
            self.ema.to(self.acc.device)
        self.order = BatchOrder(len(data), cfg.batch_size, cfg.seed)
        if self.acc.device.type == "cuda":  # small sets: keep the uint8 images on the GPU
            self.data = ImageTextSet(data.images.to(self.acc.device), data.captions, data.files)

    def _restore(self, state: dict) -> None:
        if state.get("task") != self.task.name:
            raise SDStudioError(
                f"checkpoint is for {state.get('task')!r}, not {self.task.name!r}", field="resume"
            )
        self.task.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.gen.set_state(state["rng"]["gen"])
        torch.set_rng_state(state["rng"]["torch"])
        self.step, self.losses, self.seconds = state["step"], list(state["losses"]), state["seconds"]

    def save(self) -> None:
        """Write ``checkpoint.pt`` atomically (main process only)."""
        if not self.acc.is_main_process:
            return
        state = {
            "task": self.task.name,
            "model": self.acc.unwrap_model(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "rng": _rng_state(self.gen),
            "step": self.step,
            "losses": self.losses,
            "seconds": self.seconds,
            "config": json.loads(json.dumps(asdict(self.cfg), default=str)),
        }
        save_atomic(state, self.out / CHECKPOINT)

    def eval_model(self) -> torch.nn.Module:
        """Return the model to sample/export with: the EMA copy if there is one."""
        model = self.acc.unwrap_model(self.model)
        return self.ema.averaged(model) if self.ema else model

    def write_samples(self) -> None:
        if not self.acc.is_main_process:
            return
        with torch.no_grad(), self.acc.autocast():
            grid = self.task.sample_grid(self.eval_model())
        if grid is not None:
            (self.out / "samples").mkdir(exist_ok=True)
            grid.save(self.out / "samples" / f"step{self.step:07d}.png")
            grid.save(self.out / "samples.png")

    def train_step(self) -> float:
        cfg = self.cfg
        idx = self.order.indices(self.step, self.acc.process_index, self.acc.num_processes)
        images, captions = self.data.batch(idx.to(self.data.images.device), self.gen)
        batch = self.task.make_batch(images.to(self.acc.device), captions, self.gen)
        lr = cfg.lr * min(1.0, (self.step + 1) / max(1, cfg.warmup_steps))
        for group in self.opt.param_groups:
            group["lr"] = lr
        self.model.train()
        with self.acc.autocast():
            loss = self.model(**batch)
        self.acc.backward(loss)
        if cfg.grad_clip:
            self.acc.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.acc.unwrap_model(self.model))
        self.step += 1
        return loss.item()


def train_loop(task: Task, data: ImageTextSet, cfg: LoopConfig) -> LoopResult:
    """Train ``task`` on ``data`` until ``cfg.steps`` (or the time budget), then save and export.

    Writes into ``cfg.out_dir``: ``checkpoint.pt`` (every ``checkpoint_every_s`` and at the end),
    ``samples/stepNNNNNNN.png`` every ``sample_every`` steps, ``loss.png``, ``log.jsonl`` and the
    exported model (``task.export``) under ``final/``.
    """
    from tqdm.auto import tqdm

    run = _Run(task, data, cfg)
    start = last_ckpt = time.monotonic()
    done_before = run.seconds
    bar = tqdm(
        total=cfg.steps,
        initial=run.step,
        desc=f"train {task.name}",
        disable=not (cfg.progress and run.acc.is_main_process),
        dynamic_ncols=True,
    )
    log = (run.out / "log.jsonl").open("a", encoding="utf-8") if run.acc.is_main_process else None
    try:
        while run.step < cfg.steps:
            if cfg.time_budget_s is not None and time.monotonic() - start >= cfg.time_budget_s:
                break
            loss = run.train_step()
            run.losses.append(loss)
            run.seconds = done_before + time.monotonic() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{run.opt.param_groups[0]['lr']:.1e}")
            if log and (run.step % 50 == 0 or run.step == 1):
                log.write(
                    json.dumps({"step": run.step, "loss": loss, "seconds": round(run.seconds, 2)}) + "\n"
                )
                log.flush()
            if cfg.sample_every and run.step % cfg.sample_every == 0:
                run.write_samples()
            if time.monotonic() - last_ckpt >= cfg.checkpoint_every_s:
                run.save()
                last_ckpt = time.monotonic()
    finally:
        bar.close()
        if log:
            log.close()
    run.acc.wait_for_everyone()
    run.save()
    if run.acc.is_main_process:
        if run.losses:
            save_loss_curve(run.losses, run.out / "loss.png", f"{task.name}: {run.step} steps")
        run.write_samples()
        task.export(run.eval_model(), run.out / "final")
    return LoopResult(run.step, run.losses, run.seconds, run.out)
