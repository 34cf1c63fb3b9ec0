"""Word-attention maps: DAAM (Tang et al. 2022, "What the DAAM: Interpreting Stable Diffusion Using
Cross Attention", arXiv 2210.04885).

During one generation every UNet cross-attention layer's probabilities softmax(QK^T/sqrt(d)) over
the prompt tokens are recorded through diffusers' attention-processor interface
(``unet.set_attn_processor``; the previous processors are restored afterwards). For the prompt's
row of the CFG batch (the last row: the guidance batch is ``[uncond, cond]``), each layer's map is
averaged over heads, upsampled to the latent size (bilinear) and averaged over layers and UNet
calls (all steps), then upsampled to the image (bicubic). Every upsampling keeps each token's mean,
so a token's heat map averages (over pixels) to its *attention mass*: the share of the image's
cross-attention that went to that token (all 77 x chunks tokens' masses sum to 1). A word's map
and mass are the sums over its BPE tokens.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from sdstudio.errors import SDStudioError


class RecordingAttnProcessor:
    """Cross-attention that computes diffusers' ``AttnProcessor`` output and records the probabilities.

    ``recorder.add(probs)`` receives ``(batch, heads, queries, tokens)`` for each call.
    """

    def __init__(self, recorder: AttentionRecorder) -> None:
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, c, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, c, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, seq = context.shape[0], context.shape[1]
        attention_mask = attn.prepare_attention_mask(attention_mask, seq, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        q = attn.head_to_batch_dim(query)  # (B*heads, N, d)
        k, v = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(q, k, attention_mask)  # (B*heads, N, T)
        if encoder_hidden_states is not None:
            self.recorder.add(probs.view(batch, attn.heads, probs.shape[1], probs.shape[2]))
        out = attn.batch_to_head_dim(torch.bmm(probs, v))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, c, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


@dataclass
class AttentionRecorder:
    """Running sums of cross-attention over layers and steps at the latent resolution, per image.

    ``rows`` images are recorded: the last ``rows`` rows of each UNet batch (the prompt's rows; the
    guidance batch is ``[uncond x rows, cond x rows]``).
    """

    latent_hw: tuple[int, int]
    rows: int = 1
    maps: torch.Tensor | None = None  # (rows, h*w, T) sum of per-call mean-over-heads maps
    mass: torch.Tensor | None = None  # (rows, T) sum of per-call mean attention per token
    calls: int = 0

    def add(self, probs: torch.Tensor) -> None:
        """probs: (B, heads, N, T)."""
        p = probs[-self.rows :].float().mean(1)  # (rows, N, T)
        lh, lw = self.latent_hw
        h = round(math.sqrt(p.shape[1] * lh / lw))
        w = p.shape[1] // h
        grid = p.transpose(1, 2).reshape(p.shape[0], -1, h, w)  # (rows, T, h, w)
        up = keep_mean(grid, F.interpolate(grid, size=(lh, lw), mode="bilinear", align_corners=False))
        flat = up.reshape(up.shape[0], up.shape[1], -1).transpose(1, 2)  # (rows, lh*lw, T)
        self.maps = flat if self.maps is None else self.maps + flat
        m = p.mean(1)  # (rows, T): from the raw probabilities, independent of the upsampling
        self.mass = m if self.mass is None else self.mass + m
        self.calls += 1


def keep_mean(source: torch.Tensor, resized: torch.Tensor) -> torch.Tensor:
    """``resized`` (B, T, H, W) clamped >= 0 and rescaled so each channel's mean equals ``source``'s."""
    resized = resized.clamp(min=0)
    want = source.mean(dim=(2, 3), keepdim=True)
    have = resized.mean(dim=(2, 3), keepdim=True)
    return torch.where(have > 0, resized * (want / have.clamp(min=1e-30)), torch.zeros_like(resized))


@contextlib.contextmanager
def record_cross_attention(unet, recorder: AttentionRecorder) -> Iterator[AttentionRecorder]:
    """Install recording processors on every cross-attention layer (``attn2``); restore the old ones."""
    previous = dict(unet.attn_processors)
    wanted = {
        name: RecordingAttnProcessor(recorder) if name.endswith("attn2.processor") else proc
        for name, proc in previous.items()
    }
    if not any(isinstance(p, RecordingAttnProcessor) for p in wanted.values()):
        raise SDStudioError("this UNet has no cross-attention layers to record")
    unet.set_attn_processor(wanted)
    try:
        yield recorder
    finally:
        unet.set_attn_processor(previous)


@dataclass
class Word:
    """A prompt word: its text, its token positions in the context, its heat map and mass."""

    text: str
    positions: list[int]
    mass: float
    heatmap: torch.Tensor  # (H, W), mean over pixels == mass


@dataclass
class AttentionResult:
    """One generation's image, per-token masses and per-word maps."""

    image: object  # PIL
    infotext: str
    tokens: list[tuple[int, str, float]]  # (position, token, mass) for BOS, the prompt's tokens, EOS
    words: list[Word]
    token_maps: torch.Tensor  # (T, H, W)
    total_mass: float  # sum over every context token (== 1 up to float error)
    calls: int
    seed: int = -1

    def word(self, text: str) -> Word:
        """The word ``text`` (every occurrence summed); a word not in the prompt has mass 0 and an empty map."""
        hits = [w for w in self.words if w.text.lower() == text.strip().lower()]
        positions = [p for w in hits for p in w.positions]
        heat = self.token_maps[positions].sum(0) if positions else torch.zeros(self.token_maps.shape[1:])
        return Word(text, positions, float(sum(w.mass for w in hits)), heat)

    def to_json(self) -> dict:
        return {
            "infotext": self.infotext,
            "unet_calls": self.calls,
            "total_mass": self.total_mass,
            "tokens": [{"position": p, "token": t, "mass": m} for p, t, m in self.tokens],
            "words": [{"word": w.text, "positions": w.positions, "mass": w.mass} for w in self.words],
        }


def prompt_words(tokenizer, prompt: str) -> tuple[list[tuple[int, str]], list[tuple[str, list[int]]]]:
    """Tokens (context position, BPE string) of every chunk's body and the words they form.

    Positions follow the encoder's layout (chunk ``c`` at ``77 c``, BOS first); emphasis syntax is
    parsed as the encoder does, so ``(cat:1.3)`` is the word ``cat``.
    """
    from sdstudio.prompts.encode import tokenize_chunks

    tokens, words = [], []
    current: list[int] = []
    text = ""
    for c, chunk in enumerate(tokenize_chunks(tokenizer, prompt)):
        body = chunk.tokens[1:]
        end = body.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in body else len(body)
        for i, tid in enumerate(body[:end], start=1):
            piece = tokenizer.convert_ids_to_tokens(tid)
            tokens.append((77 * c + i, piece))
            current.append(77 * c + i)
            text += piece.removesuffix("</w>")
            if piece.endswith("</w>"):
                words.append((text, current))
                current, text = [], ""
    if current:
        words.append((text, current))
    return tokens, words


def attention_maps(model, request, *, progress=None) -> AttentionResult:
    """Generate ``request`` (one image) while recording cross-attention; return maps and masses."""
    if request.n_images != 1:
        raise SDStudioError("attention maps are recorded for one image: use batch size 1 and batch count 1")
    return attention_batch(model, request, progress=progress)[0]


def attention_batch(model, request, *, progress=None) -> list[AttentionResult]:
    """Generate one batch (``n_iter`` 1) while recording cross-attention; one result per image."""
    from sdstudio.pipelines import txt2img
    from sdstudio.prompts.schedule import split_and

    if request.n_iter != 1:
        raise SDStudioError("attention maps are recorded batch by batch: use batch count 1")
    if len(split_and(request.prompt)) != 1:
        raise SDStudioError("attention maps need a single prompt (no AND)", field="prompt")
    f = model.vae_scale_factor
    recorder = AttentionRecorder((request.height // f, request.width // f), rows=request.batch_size)
    with record_cross_attention(model.unet, recorder):
        items = txt2img(model, request, progress=progress)
    token_list, word_list = prompt_words(model.tokenizers[0], request.prompt)
    return [_result(request, item, recorder, k, token_list, word_list) for k, item in enumerate(items)]


def _result(request, item, recorder: AttentionRecorder, k: int, token_list, word_list) -> AttentionResult:
    mass = recorder.mass[k] / recorder.calls  # (T,)
    lh, lw = recorder.latent_hw
    latent = (recorder.maps[k] / recorder.calls).T.reshape(1, -1, lh, lw)  # (1, T, lh, lw)
    image_maps = F.interpolate(
        latent, size=(request.height, request.width), mode="bicubic", align_corners=False
    )
    maps = keep_mean(latent, image_maps)[0]  # (T, H, W)
    eos = (token_list[-1][0] + 1) if token_list else 1
    named = [(0, "<|startoftext|>"), *token_list, (eos, "<|endoftext|>")]
    tokens = [(p, t, float(mass[p])) for p, t in named if p < mass.shape[0]]
    words = [Word(w, pos, float(mass[pos].sum()), maps[pos].sum(0)) for w, pos in word_list]
    return AttentionResult(
        item.image, item.infotext, tokens, words, maps, float(mass.sum()), recorder.calls, item.seed
    )


def overlay(image, heatmap: torch.Tensor, alpha: float = 0.55):
    """The image with ``heatmap`` (normalised to its max) drawn over it in the inferno colour map."""
    import matplotlib
    import numpy as np
    from PIL import Image

    h = heatmap.float().numpy()
    h = h / h.max() if h.max() > 0 else h
    colour = (matplotlib.colormaps["inferno"](h)[..., :3] * 255).astype(np.uint8)
    base = np.asarray(image.convert("RGB"), dtype=np.float32)
    return Image.fromarray((base * (1 - alpha) + colour * alpha).astype(np.uint8))


def attention_picture(result: AttentionResult, words: list[str] | None = None, scale: int = 2):
    """A strip: the image, then one labelled overlay per word (default: every prompt word)."""
    from sdstudio.lab.diffusion_viz import labelled_strip

    chosen = [result.word(w) for w in words] if words else result.words
    frames = [result.image] + [overlay(result.image, w.heatmap) for w in chosen]
    labels = ["image"] + [f"{w.text} {w.mass:.3f}" for w in chosen]
    return labelled_strip(frames, labels, scale)
