"""Prompt -> text-encoder conditioning, A1111 style (``modules/sd_hijack_clip.py``).

Tokens are cut into chunks of 75; each chunk is wrapped with BOS/EOS and padded to 77, encoded
separately, and the results concatenated along the token axis (long prompts). Clip skip N takes the
hidden state N-1 layers before the last, then the final layer norm. SDXL concatenates the
penultimate states of both encoders (768 + 1280 -> 2048 for the real model) and takes the pooled,
projected embedding of the second encoder from the first chunk. Per-token weights are carried so
emphasis can be applied ("Original" A1111 emphasis: scale, then restore the chunk mean).

Textual inversion (A1111 ``sd_hijack_clip.tokenize_line`` / ``EmbeddingsWithFixes``): when
``model.textual_inversion`` holds one embedding lookup per encoder, an embedding name's tokens
become ``n`` placeholder positions (moved whole to the next chunk if they do not fit), and the
encoder's token-embedding output at those positions is replaced by the vectors (a forward hook for
that one call).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

CHUNK = 75


@dataclass(frozen=True)
class ClipLayout:
    """How a family reads its CLIP text encoders (data the family owns; ``sdstudio.families``).

    ``penultimate_raw``: the penultimate hidden state without the final layer norm (SDXL, SD3; clip
    skip counts from there) instead of the last state after it (SD 1.x/2.x). ``pooled_encoders``: the
    encoders whose pooled, projected first-chunk embeddings (concatenated) are a condition (SDXL: the
    second; SD3: both), none for SD 1.x/2.x.
    """

    penultimate_raw: bool = False
    pooled_encoders: tuple[int, ...] = ()


@dataclass
class Conditioning:
    """What the denoiser's one model-call door receives besides x and t, for a batch.

    ``context`` is the cross-attention context (None for a model without one, e.g. an unconditional
    pixel DDPM); ``pooled`` a pooled text embedding (SDXL ``text_embeds``); ``extra`` every other
    input as data, read by the family's ``apply_model``: ``time_ids`` (B, 6) SDXL micro-conditioning,
    ``concat`` (B, 5, h, w) inpainting channels, ``class_labels`` (B,) for class-conditional models.
    """

    context: torch.Tensor | None  # (B, 77 * chunks, D)
    pooled: torch.Tensor | None = None  # (B, P) SDXL text_embeds
    extra: dict = field(default_factory=dict)

    @staticmethod
    def cat(items: Sequence[Conditioning]) -> Conditioning:
        """Batch-concatenate conditionings, padding shorter contexts by repeating their last chunk."""
        context = None
        if items[0].context is not None:
            longest = max(c.context.shape[1] for c in items)
            context = torch.cat([_pad_context(c.context, longest) for c in items])
        pooled = torch.cat([c.pooled for c in items]) if items[0].pooled is not None else None
        keys = items[0].extra.keys()
        extra = {k: torch.cat([c.extra[k] for c in items]) for k in keys}
        return Conditioning(context, pooled, extra)

    def repeat(self, n: int) -> Conditioning:
        return Conditioning(
            None if self.context is None else self.context.repeat(n, 1, 1),
            None if self.pooled is None else self.pooled.repeat(n, 1),
            {k: v.repeat(n, *[1] * (v.ndim - 1)) for k, v in self.extra.items()},
        )


def _pad_context(context: torch.Tensor, length: int) -> torch.Tensor:
    if context.shape[1] == length:
        return context
    reps = (length - context.shape[1]) // 77
    return torch.cat([context, context[:, -77:].repeat(1, reps, 1)], dim=1)


@dataclass
class PromptChunk:
    """77 token ids (BOS + 75 + EOS) and the emphasis multiplier of each."""

    tokens: list[int]
    multipliers: list[float]
    fixes: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (offset after BOS, (n, D))


def tokenize_chunks(
    tokenizer, text: str, min_chunks: int = 1, comma_backtrack: int = 20, embeddings=None
) -> list[PromptChunk]:
    """A1111 ``tokenize_line``: emphasis-weighted tokens cut into 75-token chunks.

    ``BREAK`` forces a new chunk; when a chunk fills up, tokens after the last comma within
    ``comma_backtrack`` tokens move to the next chunk. Chunks are padded (EOS for OpenAI CLIP, the
    tokenizer's pad id after the first EOS for OpenCLIP) and at least ``min_chunks`` are returned.
    ``embeddings`` (an ``EncoderEmbeddings``-like ``match(tokens, pos)``) turns embedding names into
    placeholder positions recorded in each chunk's ``fixes``.
    """
    from sdstudio.prompts.emphasis import parse_prompt_attention

    parsed = parse_prompt_attention(text)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    comma = _comma_id(tokenizer)
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    mults: list[float] = []
    fixes: list[tuple[int, torch.Tensor]] = []
    last_comma = -1

    def close_chunk() -> None:
        nonlocal tokens, mults, fixes, last_comma
        body = [bos, *tokens, eos]
        chunks.append(
            PromptChunk(body + [pad] * (77 - len(body)), [1.0, *mults, 1.0] + [1.0] * (77 - len(body)), fixes)
        )
        tokens, mults, fixes, last_comma = [], [], [], -1

    texts = [t for t, _ in parsed]
    ids_per_part = tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"] if texts else []
    for ids, (fragment, weight) in zip(ids_per_part, parsed):
        if fragment == "BREAK" and weight == -1:
            close_chunk()
            continue
        pos = 0
        while pos < len(ids):
            token = ids[pos]
            found = embeddings.match(ids, pos) if embeddings is not None else None
            if found is not None:
                _, vectors, consumed = found
                if len(tokens) + len(vectors) > CHUNK:
                    close_chunk()
                fixes.append((len(tokens), vectors))
                tokens.extend([0] * len(vectors))
                mults.extend([weight] * len(vectors))
                pos += consumed
                continue
            pos += 1
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK and last_comma != -1 and len(tokens) - last_comma <= comma_backtrack:
                cut = last_comma + 1
                moved_t, moved_m = tokens[cut:], mults[cut:]
                moved_f = [(o - cut, v) for o, v in fixes if o >= cut]
                tokens, mults, fixes = tokens[:cut], mults[:cut], [(o, v) for o, v in fixes if o < cut]
                close_chunk()
                tokens, mults, fixes = moved_t, moved_m, moved_f
            if len(tokens) == CHUNK:
                close_chunk()
            tokens.append(token)
            mults.append(weight)
    if tokens or not chunks:
        close_chunk()
    while len(chunks) < min_chunks:
        chunks.append(PromptChunk([bos, eos] + [pad] * 75, [1.0] * 77))
    return chunks


def _comma_id(tokenizer) -> int | None:
    """The id of the ``,</w>`` token, or None when the vocabulary has none.

    ``convert_tokens_to_ids`` looks one token up; ``get_vocab()`` copied the whole 49k-entry
    vocabulary on every prompt (~30 ms each, most of the embedded model's encode time).
    """
    found = tokenizer.convert_tokens_to_ids(",</w>")
    if found is None or (found == tokenizer.unk_token_id and tokenizer.unk_token != ",</w>"):
        return None
    return found


def count_chunks(tokenizer, text: str, embeddings=None) -> int:
    return len(tokenize_chunks(tokenizer, text, embeddings=embeddings))


def text_embeddings(model) -> list:
    """One textual-inversion lookup (or None) per text encoder of ``model`` (set by ``sdstudio.networks``)."""
    lookups = model.textual_inversion
    return list(lookups) if lookups else [None] * len(model.tokenizers)


def _embedding_hook(fixes: list[tuple[int, torch.Tensor]]):
    """Forward hook for a token-embedding module: put each fix's vectors at its positions (batch of 1)."""

    def hook(module, args, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        for offset, vectors in fixes:
            output[:, 1 + offset : 1 + offset + len(vectors)] = vectors.to(output)
        return output

    return hook


def _encode_chunk(encoder, ids: torch.Tensor, fixes, layer_from_end: int, final_norm: bool):
    if not fixes:
        return _hidden(encoder, ids, layer_from_end, final_norm)
    handle = encoder.get_input_embeddings().register_forward_hook(_embedding_hook(fixes))
    try:
        return _hidden(encoder, ids, layer_from_end, final_norm)
    finally:
        handle.remove()


def _hidden(
    encoder, ids: torch.Tensor, layer_from_end: int, final_norm: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden state ``layer_from_end`` layers before the last [+ final LN], projected pooled output or None)."""
    out = encoder(ids, output_hidden_states=True)
    hidden = out.hidden_states[-(layer_from_end + 1)]
    if final_norm:
        hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
    pooled = getattr(out, "text_embeds", None)
    return hidden, pooled


def apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """A1111 "Original" emphasis: scale each token's state, then restore the chunk's mean.

    z: (B, 77, D); multipliers: (B, 77).
    """
    if bool((multipliers == 1).all()):
        return z
    original_mean = z.mean()
    z = z * multipliers.to(z)[..., None]
    new_mean = z.mean()
    if float(new_mean.abs()) < 1e-12:  # a bias-free final LN gives mean ~0: rescaling would divide by ~0
        return z
    return z * (original_mean / new_mean)


@torch.no_grad()
def encode_prompts(model, prompts: Sequence[str], clip_skip: int = 1, min_chunks: int = 1) -> Conditioning:
    """Encode one prompt per batch row with all of ``model``'s CLIP encoders: (B, 77*chunks, D) context
    (and pooled where the family's layout says)."""
    with model.text_encoders_held():  # read back if the backend freed them since the last job
        return encode_clip(
            model.text_encoders, model.tokenizers, text_embeddings(model), model.device,
            prompts, clip_skip, min_chunks, model.family.clip_layout,
        )  # fmt: skip


def encode_clip(
    encoders: Sequence, tokenizers: Sequence, lookups: Sequence, device, prompts: Sequence[str],
    clip_skip: int, min_chunks: int, layout: ClipLayout,
) -> Conditioning:  # fmt: skip
    """A1111 chunked, weighted encoding with the given CLIP ``encoders`` (their hidden states
    concatenated along the feature axis); ``lookups`` are the textual-inversion lookups per encoder."""
    chunks_needed = max([min_chunks] + [count_chunks(tokenizers[0], p, lookups[0]) for p in prompts])
    rows, pooled_rows = [], []
    for prompt in prompts:
        per_chunk, pooled = [], []
        chunk_lists = [
            tokenize_chunks(tok, prompt, chunks_needed, embeddings=lookup)
            for tok, lookup in zip(tokenizers, lookups)
        ]
        for ci in range(chunks_needed):
            parts = []
            for idx, enc in enumerate(encoders):
                chunk = chunk_lists[idx][ci]
                ids = torch.tensor([chunk.tokens], device=device)
                if layout.penultimate_raw:  # penultimate layer, no final LN (clip_skip adds more)
                    hidden, p = _encode_chunk(enc, ids, chunk.fixes, clip_skip, final_norm=False)
                    if idx in layout.pooled_encoders and ci == 0:
                        pooled.append(p)
                else:
                    hidden, _ = _encode_chunk(enc, ids, chunk.fixes, clip_skip - 1, final_norm=True)
                parts.append(apply_emphasis(hidden.float(), torch.tensor([chunk.multipliers])))
            per_chunk.append(torch.cat(parts, dim=-1))
        rows.append(torch.cat(per_chunk, dim=1))
        pooled_rows.append(torch.cat(pooled, dim=-1) if pooled else None)
    context = torch.cat(rows).float()
    pooled = torch.cat(pooled_rows).float() if layout.pooled_encoders else None
    return Conditioning(context, pooled)
