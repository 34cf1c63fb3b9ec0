"""Token downsampling for Stable Diffusion's self-attention (Smith, Saxena & Saha 2024, "ToDo: Token
Downsampling for Efficient Generation of High-Resolution Images", arXiv:2402.13573).

At the UNet's full-resolution level the self-attention (``attn1``) of every transformer block keeps
all its queries but attends to keys and values computed from a nearest-neighbour downsampled token
grid (every ``factor``-th token in both directions, the top-left of each cell): with ``factor`` 2 the
attention's two matmuls and its softmax shrink 4x. At 512 px the level has 4096 tokens and its five
self-attentions are most of a DeepCache shallow call; cross-attention and the MLP are untouched.

Nothing is patched: :func:`token_downsampling` installs :class:`ToDoProcessor` wrappers around the
layers' own processors with diffusers' public ``Attention.set_processor``, and a forward pre-hook on
each transformer model reads its input's (H, W) (the token grid), and restores both on exit. The
(H, W) flow through the hook as traced sizes, so a graph traced inside the context (the OpenVINO
backend's) downsamples at any input size. Lives beside the models (not the pipelines) because the
OpenVINO converter traces it into its graphs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

TODO_FACTOR = 2  # ToDo's default downsampling factor (every 2nd token in each direction)


def downsample_tokens(x: torch.Tensor, hw: tuple[int, int], factor: int) -> torch.Tensor:
    """Every ``factor``-th token of the (H, W) grid in both directions: (B, H*W, C) -> (B, ceil(H/f)*ceil(W/f), C)."""
    b, _, c = x.shape
    h, w = hw
    return x.reshape(b, h, w, c)[:, ::factor, ::factor].reshape(b, -1, c)


class ToDoProcessor:
    """Attention processor: the layer's own processor, with keys/values from the downsampled tokens."""

    def __init__(self, inner: Any, factor: int) -> None:
        self.inner = inner
        self.factor = factor
        self.hw: tuple[int, int] | None = None  # the token grid, set by the transformer model's pre-hook
        self.tokens: list[int] = []  # key/value tokens per call (the tests read it)

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,  # (B, N, C)
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        hw, self.hw = self.hw, None
        if (
            encoder_hidden_states is None
            and attention_mask is None
            and hw is not None
            and hidden_states.ndim == 3
        ):
            encoder_hidden_states = downsample_tokens(hidden_states, hw, self.factor)  # (B, N', C)
            self.tokens.append(int(encoder_hidden_states.shape[1]))
        return self.inner(
            attn,
            hidden_states,
            encoder_hidden_states=encoder_hidden_states,
            attention_mask=attention_mask,
            **kwargs,
        )


def full_resolution_transformers(unet: Any) -> list[Any]:
    """The transformer models (``Transformer2DModel``) of the UNet's first down and last up block."""
    blocks = [getattr(unet, "down_blocks", [None])[0], getattr(unet, "up_blocks", [None])[-1]]
    return [m for block in blocks if block is not None for m in getattr(block, "attentions", None) or []]


def supports_token_downsampling(unet: Any) -> bool:
    """True for UNets whose full-resolution level has transformer blocks with a self-attention."""
    return any(hasattr(b, "attn1") for m in full_resolution_transformers(unet) for b in m.transformer_blocks)


@contextlib.contextmanager
def token_downsampling(unet: Any, factor: int = TODO_FACTOR) -> Iterator[list[ToDoProcessor]]:
    """Run ``unet``'s full-resolution self-attentions on downsampled keys/values inside the context.

    Yields the installed processors; ``factor`` 1 installs nothing.
    """
    installed: list[ToDoProcessor] = []
    restore: list[tuple[Any, Any]] = []
    hooks = []
    try:
        for model in full_resolution_transformers(unet) if factor > 1 else []:
            procs = []
            for block in model.transformer_blocks:
                attn = getattr(block, "attn1", None)
                if attn is None:
                    continue
                restore.append((attn, attn.processor))
                procs.append(ToDoProcessor(attn.processor, factor))
                attn.set_processor(procs[-1])
            hooks.append(model.register_forward_pre_hook(_grid_hook(procs), with_kwargs=True))
            installed += procs
        yield installed
    finally:
        for attn, proc in restore:
            attn.set_processor(proc)
        for hook in hooks:
            hook.remove()


def _grid_hook(procs: list[ToDoProcessor]):
    def capture(_model: Any, args: tuple, kwargs: dict) -> None:
        x = args[0] if args else kwargs.get("hidden_states")  # (B, C, H, W)
        hw = tuple(x.shape[-2:]) if x is not None and x.ndim == 4 else None
        for proc in procs:
            proc.hw = hw

    return capture


class ToDoUNet:
    """Callable like the UNet: each call runs ``inner`` (the UNet or a DeepCache / ToMe wrapper of
    it) with token downsampling installed on ``unet`` for that call only, so the UNet is never left
    changed between calls, whatever the sampler raises."""

    def __init__(self, inner: Any, unet: Any, factor: int = TODO_FACTOR) -> None:
        if factor < 1:
            raise ValueError(f"token downsampling factor must be >= 1, got {factor}")
        self.inner, self.unet, self.factor = inner, unet, factor
        self.config = unet.config

    def __call__(self, sample: torch.Tensor, timestep: torch.Tensor, **kwargs: Any) -> Any:
        with token_downsampling(self.unet, self.factor):
            return self.inner(sample, timestep, **kwargs)
