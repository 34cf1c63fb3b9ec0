"""Cooperative cancellation and progress reporting for sampling loops (no model code)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass


class CancelToken:
    """Set by another thread; checked by the sampling loop between steps.

    ``interrupt()`` stops the whole job (A1111 "Interrupt": images finished so far are kept);
    ``skip()`` abandons the current batch only and goes on with the next (A1111 "Skip").
    """

    def __init__(self) -> None:
        self._interrupted = threading.Event()
        self._skipped = threading.Event()

    def interrupt(self) -> None:
        self._interrupted.set()

    def skip(self) -> None:
        self._skipped.set()

    @property
    def interrupted(self) -> bool:
        return self._interrupted.is_set()

    @property
    def skipped(self) -> bool:
        return self._skipped.is_set()

    def clear_skip(self) -> None:
        self._skipped.clear()

    @property
    def stop_batch(self) -> bool:
        return self.interrupted or self.skipped


@dataclass
class StepInfo:
    """What a progress callback learns after each sampler step."""

    step: int  # 1-based step within this batch's sampling
    steps: int  # steps this batch runs
    batch_index: int  # 0-based
    batch_count: int
    job_step: int  # 1-based across the whole job (all batches, hires passes)
    job_steps: int
    preview: Callable[[], object] | None = None  # -> PIL.Image, decoded cheaply on demand


ProgressCallback = Callable[[StepInfo], None]
