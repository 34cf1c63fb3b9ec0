"""Measure a text-to-image model with its mini-CLIP: caption retrieval, Fréchet distance, a fixed-prompt grid.

(a) Retrieval (the CLIP-score protocol of Radford et al. 2021, as a ranking): for N captions,
generate one image each, embed images and captions with the mini-CLIP, and count how often the
right caption is ranked first / in the top 5 of N. Real images give the ceiling, chance (1/N,
5/N) the floor. (b) Fréchet distance (FID's formula, Heusel et al. 2017) between the mini-CLIP
image features of generated and real images. (c) A grid for fixed prompts and seeds.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sdstudio.training.data import ImageTextSet, load_image_folder
from sdstudio.training.ldm import PREVIEW_PROMPTS
from sdstudio.training.loop import image_grid, to_pil
from sdstudio.training.miniclip import MiniCLIP, load_miniclip, tokenize


@dataclass
class Components:
    """The parts of a diffusers SD folder that sampling needs (fp32, eval mode)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoder: torch.nn.Module
    scheduler_config: dict


def load_components(folder: str | Path) -> Components:
    """Load unet/vae/text_encoder/scheduler of a diffusers SD folder in fp32 with diffusers/transformers."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    unet = UNet2DConditionModel.from_pretrained(
        str(folder / "unet"), torch_dtype=torch.float32, local_files_only=True
    )
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=torch.float32, local_files_only=True)
    text = CLIPTextModel.from_pretrained(
        str(folder / "text_encoder"), dtype=torch.float32, local_files_only=True
    )
    sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    return Components(unet.eval(), vae.eval(), text.eval(), sched)


@torch.no_grad()
def generate(
    comp: Components,
    prompts: list[str],
    seeds: list[int],
    steps: int = 25,
    guidance: float = 5.0,
    batch: int = 50,
) -> torch.Tensor:
    """Return images ``(N, 3, H, W)`` in [-1, 1]: DDIM with classifier-free guidance, noise per seed on CPU."""
    from diffusers import DDIMScheduler

    size = comp.unet.config.sample_size
    channels = comp.unet.config.in_channels
    scale = comp.vae.config.scaling_factor
    out = []
    for i in range(0, len(prompts), batch):
        p, s = prompts[i : i + batch], seeds[i : i + batch]
        ctx = torch.cat(
            [
                comp.text_encoder(tokenize([""] * len(p))).last_hidden_state,
                comp.text_encoder(tokenize(p)).last_hidden_state,
            ]
        )  # (2B, 77, D)
        x = torch.stack(
            [torch.randn(channels, size, size, generator=torch.Generator().manual_seed(k)) for k in s]
        )
        sched = DDIMScheduler.from_config(comp.scheduler_config)
        sched.set_timesteps(steps)
        for t in sched.timesteps:
            eps = comp.unet(torch.cat([x, x]), t, encoder_hidden_states=ctx).sample
            u, c = eps.chunk(2)
            x = sched.step(u + guidance * (c - u), t, x).prev_sample
        out.append(comp.vae.decode(x / scale).sample.clamp(-1, 1))
    return torch.cat(out)


def retrieval(image_emb: torch.Tensor, text_emb: torch.Tensor) -> dict:
    """Return top-1/top-5 accuracy (%) of ranking caption i first/top-5 for image i (rows = images)."""
    sims = image_emb @ text_emb.T  # (N, N)
    rank = (sims > sims.diag()[:, None]).sum(dim=1)  # 0 = best
    return {"top1": 100 * (rank < 1).float().mean().item(), "top5": 100 * (rank < 5).float().mean().item()}


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Return ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) for feature rows ``a``, ``b`` (FID formula)."""
    import numpy as np
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu1, mu2 = a64.mean(0), b64.mean(0)
    s1, s2 = np.cov(a64, rowvar=False), np.cov(b64, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


@torch.no_grad()
def image_features(
    clip: MiniCLIP, images: torch.Tensor, batch: int = 200
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (unit-norm embeddings, raw image-tower features) for images in [-1, 1]."""
    emb, raw = [], []
    for i in range(0, len(images), batch):
        x = images[i : i + batch]
        raw.append(clip.image_encoder(x).float())
        emb.append(clip.encode_image(x))
    return torch.cat(emb), torch.cat(raw)


@dataclass
class Scores:
    """One scorer's numbers (retrieval in %, Fréchet distances in its feature units)."""

    generated_heldout: dict
    real_heldout: dict
    generated_train: dict
    real_train: dict
    fd_generated_vs_heldout: float
    fd_generated_vs_train_same_captions: float
    fd_train_real_vs_heldout: float
    fd_noise_vs_heldout: float


@dataclass
class EvalReport:
    """Numbers for the model card: the model's own mini-CLIP and, optionally, an independent judge."""

    n: int
    steps: int
    guidance: float
    chance: dict
    own_miniclip: Scores
    judge: Scores | None = None


@torch.no_grad()
def score(clip: MiniCLIP, sets: dict, fakes: dict, seed: int = 0) -> Scores:
    """Return retrieval and Fréchet numbers of ``fakes[name]`` against ``sets[name]`` (``heldout``, ``train``)."""
    numbers, raw = {}, {}
    for name, subset in sets.items():
        caps = [c[0] for c in subset.captions]
        text = clip.encode_text(tokenize(caps))
        fake_emb, fake_raw = image_features(clip, fakes[name])
        real_emb, real_raw = image_features(clip, subset.images.float() / 127.5 - 1)
        numbers[f"generated_{name}"] = retrieval(fake_emb, text)
        numbers[f"real_{name}"] = retrieval(real_emb, text)
        raw[name] = (fake_raw, real_raw)
    shape = sets["heldout"].images.shape
    noise = torch.rand(shape[0], *shape[1:], generator=torch.Generator().manual_seed(seed)) * 2 - 1
    _, noise_raw = image_features(clip, noise)
    heldout_real = raw["heldout"][1]
    return Scores(
        fd_generated_vs_heldout=frechet_distance(raw["heldout"][0], heldout_real),
        fd_generated_vs_train_same_captions=frechet_distance(*raw["train"]),
        fd_train_real_vs_heldout=frechet_distance(raw["train"][1], heldout_real),
        fd_noise_vs_heldout=frechet_distance(noise_raw, heldout_real),
        **numbers,
    )


def eval_sets(data_dir: str | Path, size: int, n: int, seed: int = 0) -> dict[str, ImageTextSet]:
    """Return the first ``n`` held-out rows and ``n`` random training rows (fixed by ``seed``)."""
    test = load_image_folder(data_dir, size, split="test")
    train_all = load_image_folder(data_dir, size, split="train")
    pick = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(seed))[:n].tolist()
    return {"heldout": test.subset(list(range(min(n, len(test))))), "train": train_all.subset(pick)}


def generated_images(comp: Components, sets: dict, out: Path, steps: int, guidance: float, seed: int) -> dict:
    """Return one generated image per canonical caption of each set, cached in ``out/generated.safetensors``.

    The cache records steps, guidance, seed and captions; anything different regenerates.
    """
    from safetensors.torch import load_file, save_file

    key = json.dumps([steps, guidance, seed, {k: [c[0] for c in v.captions] for k, v in sets.items()}])
    cache = out / "generated.safetensors"
    if cache.is_file() and (out / "generated.json").is_file() and (out / "generated.json").read_text() == key:
        return {k: v.float() / 127.5 - 1 for k, v in load_file(cache).items()}
    fakes = {}
    for name, subset in sets.items():
        caps = [c[0] for c in subset.captions]
        fakes[name] = generate(comp, caps, [seed + i for i in range(len(caps))], steps, guidance)
    save_file(
        {k: ((v + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).contiguous() for k, v in fakes.items()},
        cache,
    )
    (out / "generated.json").write_text(key)
    return {k: ((v + 1) * 127.5).round().clamp(0, 255) / 127.5 - 1 for k, v in fakes.items()}


@torch.no_grad()
def evaluate_model(
    model_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    steps: int = 25,
    guidance: float = 5.0,
    n: int = 200,
    seed: int = 0,
    judge: str | Path | None = None,
) -> EvalReport:
    """Run (a)-(c) for the SD folder ``model_dir`` on the held-out split of ``data_dir``; write into ``out_dir``.

    Scores with the model's own ``miniclip/`` and, if given, an independently trained mini-CLIP
    folder ``judge`` (its own text encoder: not the one the generator was conditioned on).
    Writes ``eval.json``, ``grid.png`` (fixed prompts x 4 seeds), ``heldout_generated.png``
    (first 32) and ``generated.safetensors`` (uint8, reused by later runs with the same settings).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_dir = Path(model_dir)
    comp = load_components(model_dir)
    sets = eval_sets(data_dir, comp.vae.config.sample_size, n, seed)
    fakes = generated_images(comp, sets, out, steps, guidance, seed)
    image_grid(to_pil(fakes["heldout"][:32]), cols=8).save(out / "heldout_generated.png")
    own = load_miniclip(model_dir / "miniclip", text_encoder=model_dir / "text_encoder")
    report = EvalReport(
        n=len(sets["heldout"]),
        steps=steps,
        guidance=guidance,
        chance={"top1": 100 / len(sets["heldout"]), "top5": 500 / len(sets["heldout"])},
        own_miniclip=score(own, sets, fakes, seed),
        judge=score(load_miniclip(judge), sets, fakes, seed) if judge else None,
    )
    if not (out / "grid.png").is_file():
        write_grid(comp, out / "grid.png", steps=steps, guidance=guidance)
    (out / "eval.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def write_grid(
    comp: Components, path: Path, prompts=PREVIEW_PROMPTS, seeds=(0, 1, 2, 3), steps=25, guidance=5.0
):
    """Write a labelled grid: one column per prompt, one row per seed."""
    ps = [p for _ in seeds for p in prompts]
    ss = [s for s in seeds for _ in prompts]
    images = to_pil(generate(comp, ps, ss, steps, guidance))
    labels = [p if i < len(prompts) else "" for i, p in enumerate(ps)]
    image_grid(images, cols=len(prompts), labels=labels).save(path)
