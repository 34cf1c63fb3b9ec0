"""PyTorch weights freed while idle and read back from the checkpoint when a job uses them.

Where OpenVINO runs the UNet and the VAE decoder, the text encoders are the largest PyTorch
modules left (SD 1.5's CLIP ViT-L/14 text model: 0.23 GiB in bf16), and a job uses them for a
fraction of a second: to encode its prompts, before sampling. They were resident through sampling
and decoding all the same, at the job's memory peak (the VAE decode at 512 px). :class:`IdleWeights`
frees them once a job's decode begins and reads them back, from the checkpoint, at the next encode:
~0.2 s for SD 1.5 from a single file in the page cache (BENCHMARKS.md run 9 measures the peak).

Users of the weights hold them (:meth:`IdleWeights.held`: encoding a prompt, a LoRA patching them
for a whole job, saving the model); while held they are never freed. A re-read that no longer
matches what was freed (the checkpoint changed on disk meanwhile) is an error, not a silent mix of
two checkpoints.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from sdstudio.backends.resident_memory import trim_heap
from sdstudio.errors import CheckpointChangedError

StateDict = dict[str, torch.Tensor]


def hash_weight_samples(h, module: torch.nn.Module) -> None:
    """Feed the hash ``h`` every parameter's name and shape and 1 value in 4096 of it: different
    checkpoints (or fine-tunes) differ in every weight, so that tells them apart cheaply."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            h.update(f"{name}{tuple(p.shape)}".encode())
            h.update(p.detach().flatten()[::4096].float().numpy().tobytes())


def weights_sample(modules: Sequence[torch.nn.Module]) -> str:
    """A short hash of :func:`hash_weight_samples` over ``modules``."""
    h = hashlib.blake2b(digest_size=10)
    for module in modules:
        hash_weight_samples(h, module)
    return h.hexdigest()


class IdleWeights:
    """The weights of ``modules``, freed by :meth:`release` unless held, re-read by ``reload()``
    (one state dict per module, keyed like its ``state_dict()``) when next held."""

    def __init__(
        self, modules: Sequence[torch.nn.Module], reload: Callable[[], list[StateDict]], what: str
    ) -> None:
        self.modules, self.reload, self.what = list(modules), reload, what
        self.released = False
        self._holders = 0
        self._sample = ""  # weights_sample of what was freed

    def release(self) -> bool:
        """Free the weights (their structure stays on ``meta``) unless held; True when freed now."""
        if self.released or self._holders:
            return False
        self._sample = weights_sample(self.modules)
        self._free()
        return True

    def _free(self) -> None:
        for module in self.modules:
            free_parameters(module)
        trim_heap()
        self.released = True

    @contextmanager
    def held(self) -> Iterator[None]:
        """Within the block the weights are loaded (read back first if freed) and stay loaded."""
        self.restore()
        self._holders += 1
        try:
            yield
        finally:
            self._holders -= 1

    def restore(self) -> None:
        """Read the freed weights back (no-op when loaded); CheckpointChangedError if they changed on disk."""
        if not self.released:
            return
        state_dicts = self.reload()
        for module, state_dict in zip(self.modules, state_dicts, strict=True):
            expected = module.state_dict()  # meta tensors: the dtype the model now has
            module.load_state_dict(
                {k: v.to(expected[k].dtype) for k, v in state_dict.items()}, strict=True, assign=True
            )
            module.requires_grad_(False)
        self.released = False
        if weights_sample(self.modules) != self._sample:
            self._free()  # never encode with another checkpoint's weights
            raise CheckpointChangedError(
                f"the checkpoint's {self.what} changed on disk since the model was loaded; "
                "the next job loads the new file"
            )


def free_parameters(module: torch.nn.Module) -> None:
    """Move ``module``'s parameters to ``meta`` (shape and dtype stay, the storage goes); buffers stay
    (non-persistent ones, like CLIP's ``position_ids``, are in no state dict to read them back from)."""
    moved: dict[int, torch.nn.Parameter] = {}  # shared parameters stay shared
    for sub in module.modules():
        for name, p in sub._parameters.items():
            if p is not None and not p.is_meta:
                if id(p) not in moved:
                    moved[id(p)] = torch.nn.Parameter(p.detach().to("meta"), requires_grad=False)
                sub._parameters[name] = moved[id(p)]


@contextmanager
def held_weights(idle: IdleWeights | None) -> Iterator[None]:
    """:meth:`IdleWeights.held` for an optional keeper (None: the weights are always loaded)."""
    if idle is None:
        yield
        return
    with idle.held():
        yield
