"""Prompt studies: does a change to the prompt change the image beyond what a new seed does?

A study generates every variant prompt at the same N seeds (paired), records cross-attention
(DAAM) when it has two concepts, and measures, each with a paired-bootstrap 95% CI over seeds:

- image change of each variant vs the base (variant 0) at the same seed: mean absolute pixel
  difference, 1 - SSIM, and 1 - cosine of CLIP image embeddings; compared with the noise floor,
  the same metrics between the base prompt's images at seed k and seed k+1 (seed-to-seed spread);
- conditioning change: per-token and pooled cosine distance of the text encoder's states;
- concept dominance (two concepts a, b): CLIP similarity of each image to "a" alone and to "b"
  alone (margin a - b), a's share of the two concepts' attention mass, and the overlap (cosine) of
  their heat maps (how much the words attend to the same pixels: "bleeding");
- the exact token ids of every variant (``??`` is one BPE token, ``? ?`` two).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sdstudio.config import GenerationRequest
from sdstudio.errors import SDStudioError
from sdstudio.lab import stats

KINDS = ("word-order", "separators", "punctuation", "custom")
Progress = Callable[[int, int, str], None]


@dataclass
class StudySpec:
    """What a study generates: variant prompts, concepts, seeds and sampler settings."""

    kind: str
    variants: list[str]
    concepts: tuple[str, str] | None = None
    seeds: int = 32
    first_seed: int = 1
    steps: int = 10
    sampler: str = "DPM++ 2M"
    scheduler: str = "Automatic"
    cfg_scale: float = 7.0
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    batch: int = 8
    command: str = ""
    extra: dict = field(default_factory=dict)

    def seed_list(self) -> list[int]:
        return list(range(self.first_seed, self.first_seed + self.seeds))


def make_spec(
    kind: str, a: str = "girl", b: str = "boy", variants: list[str] | None = None, **settings
) -> StudySpec:
    """The variants of a built-in study (Q1 word order, Q2 separators, Q3 punctuation) or ``custom``."""
    if kind not in KINDS:
        raise SDStudioError(f"unknown study {kind!r}; choose one of {', '.join(KINDS)}", field="kind")
    concepts = (a, b) if a and b else None
    if kind == "word-order":
        prompts = [f"{a} and {b}", f"{b} and {a}"]
    elif kind == "separators":
        prompts = [f"{a} and {b}", f"{a}; {b}"]
    elif kind == "punctuation":
        prompts = [f"{a} {b}", f"{a} ? ? {b}", f"{a} ! ! ? ? {b}"]
        settings.setdefault("extra", {})["token_probes"] = [f"{a} ?? {b}", f"{a} ? ? {b}", f"{a} !! ?? {b}"]
    else:
        prompts = list(variants or [])
        concepts = (a, b) if settings.pop("with_concepts", False) else None
    if variants and kind != "custom":
        prompts = list(variants)
    if len(prompts) < 2:
        raise SDStudioError("a study needs at least two variant prompts", field="variants")
    spec = StudySpec(kind, prompts, concepts, **settings)
    if not 2 <= spec.seeds <= 1024:
        raise SDStudioError("seeds must be between 2 and 1024", field="seeds")
    return spec


@dataclass
class Sample:
    """One generated image of a study and what was measured on it during generation."""

    variant: int
    seed: int
    image: Any  # PIL
    path: str
    infotext: str
    masses: dict[str, float] = field(default_factory=dict)  # concept -> attention mass
    overlap: float | None = None  # cosine of the two concepts' heat maps


def run_study(model, spec: StudySpec, out: Path, judge, progress: Progress | None = None) -> dict:
    """Generate, measure, and write ``out/study.json``, ``out/report.html`` and ``out/images/``."""
    from sdstudio.lab.report import write_report

    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    samples = generate(model, spec, out, progress)
    gen_s = time.perf_counter() - t0
    data = measure(model, spec, samples, judge)
    data["timing"] = {"generation_s": round(gen_s, 2), "total_s": round(time.perf_counter() - t0, 2),
                      "images": len(samples)}  # fmt: skip
    data["model"] = {"name": model.name, "hash": model.model_hash}
    _write_json(out / "study.json", data)
    write_report(data, samples, out)
    return data


def generate(model, spec: StudySpec, out: Path, progress: Progress | None = None) -> list[Sample]:
    """Every variant at every seed, in batches of consecutive seeds; images saved as PNGs with infotext."""
    from sdstudio.pipelines import txt2img

    size = model.native_size
    base = GenerationRequest(
        negative_prompt=spec.negative_prompt, width=spec.width or size, height=spec.height or size,
        steps=spec.steps, sampler_name=spec.sampler, scheduler=spec.scheduler, cfg_scale=spec.cfg_scale,
    )  # fmt: skip
    seeds = spec.seed_list()
    total, done, samples = len(seeds) * len(spec.variants), 0, []
    for vi, prompt in enumerate(spec.variants):
        for start in range(0, len(seeds), spec.batch):
            chunk = seeds[start : start + spec.batch]
            request = base.replace(prompt=prompt, seed=chunk[0], batch_size=len(chunk)).validate()
            if spec.concepts:
                samples += _with_attention(model, request, spec.concepts, vi, out)
            else:
                samples += [_sample(vi, g.seed, g.image, g.infotext, out) for g in txt2img(model, request)]
            done += len(chunk)
            if progress is not None:
                progress(done, total, f"variant {vi + 1}/{len(spec.variants)}: {prompt}")
    return samples


def _with_attention(model, request, concepts, vi: int, out: Path) -> list[Sample]:
    from sdstudio.lab.attention import attention_batch

    samples = []
    for r in attention_batch(model, request):
        s = _sample(vi, r.seed, r.image, r.infotext, out)
        maps = [concept_word(r, c) for c in concepts]
        s.masses = {c: w.mass for c, w in zip(concepts, maps)}
        s.overlap = stats.cosine(maps[0].heatmap.numpy(), maps[1].heatmap.numpy())
        samples.append(s)
    return samples


def concept_word(result, concept: str):
    """A concept's words summed (``cat face`` = ``cat`` + ``face``) as one :class:`~attention.Word`."""
    from sdstudio.lab.attention import Word

    parts = [result.word(w) for w in concept.split()]
    heat = sum((p.heatmap for p in parts[1:]), parts[0].heatmap)
    return Word(concept, [q for p in parts for q in p.positions], sum(p.mass for p in parts), heat)


def _sample(vi: int, seed: int, image, infotext: str, out: Path) -> Sample:
    rel = f"images/v{vi}/seed-{seed}.png"
    _save_png(image, infotext, out / rel)
    return Sample(vi, seed, image, rel, infotext)


def _save_png(image, infotext: str, path: Path) -> None:
    from PIL.PngImagePlugin import PngInfo

    path.parent.mkdir(parents=True, exist_ok=True)
    meta = PngInfo()
    meta.add_text("parameters", infotext)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=path.parent)
    with os.fdopen(fd, "wb") as fh:
        image.save(fh, format="PNG", pnginfo=meta)
    os.replace(tmp, path)


def _write_json(path: Path, data: dict) -> None:
    import json

    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=1, ensure_ascii=False)
    os.replace(tmp, path)


# --- measurements ------------------------------------------------------------------------------
def by_variant(samples: list[Sample], n_variants: int) -> list[list[Sample]]:
    """Samples per variant, each sorted by seed (so index k is the same seed in every variant)."""
    out = [sorted((s for s in samples if s.variant == v), key=lambda s: s.seed) for v in range(n_variants)]
    if len({tuple(s.seed for s in row) for row in out}) != 1:
        raise SDStudioError("study variants do not share the same seeds")
    return out


def image_metrics(a, b, emb_a: np.ndarray, emb_b: np.ndarray) -> dict[str, float]:
    """Pixel MAD, 1 - SSIM and CLIP cosine distance between two images."""
    return {
        "pixel_mad": stats.mean_abs_diff(a, b),
        "ssim_distance": 1.0 - stats.ssim(a, b),
        "clip_distance": 1.0 - stats.cosine(emb_a, emb_b),
    }


def _metric_table(pairs: list[tuple[Any, Any, np.ndarray, np.ndarray]]) -> dict[str, np.ndarray]:
    rows = [image_metrics(*p) for p in pairs]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def measure(model, spec: StudySpec, samples: list[Sample], judge) -> dict:
    """Every number of the study (per-seed values and their CIs) as a JSON-ready dict."""
    rows = by_variant(samples, len(spec.variants))
    emb = [judge.images([s.image for s in row]) for row in rows]  # (N, E) per variant
    base, n = rows[0], len(rows[0])
    nxt = [(k + 1) % n for k in range(n)]
    noise = _metric_table(
        [(base[k].image, base[j].image, emb[0][k], emb[0][j]) for k, j in zip(range(n), nxt)]
    )
    data: dict[str, Any] = {
        "study": spec.kind,
        "command": spec.command,
        "spec": asdict(spec),
        "judge": judge.name,
        "seeds": [s.seed for s in base],
        "variants": [_variant_info(model, i, p, rows[i]) for i, p in enumerate(spec.variants)],
        "token_probes": [_variant_info(model, -1, p, []) for p in spec.extra.get("token_probes", [])],
        "noise_floor": _estimates(noise) | {"per_seed": _lists(noise), "pairs": "seed k vs seed k+1 (cyclic)"},
        "image_change": [],
        "conditioning": [conditioning_change(model, spec.variants[0], p) | {"variant": i} for i, p in enumerate(spec.variants)][1:],
    }  # fmt: skip
    for i in range(1, len(rows)):
        change = _metric_table([(rows[i][k].image, base[k].image, emb[i][k], emb[0][k]) for k in range(n)])
        entry = {"variant": i, "vs": 0, **_estimates(change), "per_seed": _lists(change)}
        entry["ratio_to_noise_floor"] = {k: stats.ratio_ci(change[k], noise[k]).to_json() for k in change}
        entry["minus_noise_floor"] = {k: stats.paired_diff_ci(change[k], noise[k]).to_json() for k in change}
        data["image_change"].append(entry)
    if spec.concepts:
        data["dominance"] = dominance(spec, rows, emb, judge)
    return data


def _estimates(table: dict[str, np.ndarray]) -> dict[str, dict]:
    return {k: stats.mean_ci(v).to_json() for k, v in table.items()}


def _lists(table: dict[str, np.ndarray]) -> dict[str, list[float]]:
    return {k: [float(x) for x in v] for k, v in table.items()}


def _variant_info(model, i: int, prompt: str, row: list[Sample]) -> dict:
    from sdstudio.prompts.encode import tokenize_chunks

    tok = model.tokenizers[0]
    chunk = tokenize_chunks(tok, prompt)[0].tokens
    body = chunk[1 : chunk.index(tok.eos_token_id, 1)] if tok.eos_token_id in chunk[1:] else chunk[1:]
    return {
        "index": i,
        "prompt": prompt,
        "token_ids": [int(t) for t in body],
        "tokens": tok.convert_ids_to_tokens(body),
        "images": [s.path for s in row],
    }


def conditioning_change(model, base: str, variant: str) -> dict:
    """Cosine distance of the text encoder states the UNet sees: per position (first chunk) and pooled."""
    import torch

    from sdstudio.prompts.encode import encode_prompts, tokenize_chunks

    ctx = [encode_prompts(model, [p]).context[0, :77].double() for p in (base, variant)]  # (77, D) each
    per_token = 1 - torch.nn.functional.cosine_similarity(ctx[0], ctx[1], dim=-1)  # (77,)
    tok = model.tokenizers[0]
    eos = [tokenize_chunks(tok, p)[0].tokens.index(tok.eos_token_id, 1) for p in (base, variant)]
    pooled = 1 - float(torch.nn.functional.cosine_similarity(ctx[0][eos[0]], ctx[1][eos[1]], dim=0))
    span = max(eos) + 1
    return {
        "per_token_cos_distance": [float(x) for x in per_token[:span]],
        "mean_cos_distance_prompt_tokens": float(per_token[:span].mean()),
        "mean_cos_distance_all_77": float(per_token.mean()),
        "pooled_cos_distance": pooled,
        "pooled_at": eos,
    }


def dominance(spec: StudySpec, rows: list[list[Sample]], emb: list[np.ndarray], judge) -> list[dict]:
    """Per variant: CLIP similarity to each concept alone, their margin, attention share and overlap."""
    a, b = spec.concepts
    ta, tb = judge.texts([a, b])
    out = []
    for i, row in enumerate(rows):
        sim_a, sim_b = emb[i] @ ta, emb[i] @ tb
        share = np.array([s.masses[a] / max(s.masses[a] + s.masses[b], 1e-12) for s in row])
        overlap = np.array([s.overlap for s in row])
        per_seed = {"clip_sim_a": sim_a, "clip_sim_b": sim_b, "clip_margin_a_minus_b": sim_a - sim_b,
                    "attention_share_a": share, "map_overlap": overlap,
                    "attention_mass_a": np.array([s.masses[a] for s in row]),
                    "attention_mass_b": np.array([s.masses[b] for s in row])}  # fmt: skip
        entry = {"variant": i, "prompt": spec.variants[i], "concepts": [a, b], **_estimates(per_seed)}
        entry["per_seed"] = _lists(per_seed)
        if i > 0:
            entry["vs_base"] = {
                k: stats.paired_diff_ci(per_seed[k], out[0]["_raw"][k]).to_json()
                for k in ("clip_margin_a_minus_b", "attention_share_a", "map_overlap")
            }
        entry["_raw"] = per_seed
        out.append(entry)
    for entry in out:
        entry.pop("_raw")
    return out
