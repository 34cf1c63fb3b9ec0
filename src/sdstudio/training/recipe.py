"""The default model's recipe: VAE -> mini-CLIP -> latent diffusion -> fp16 Stable Diffusion folder.

``sdstudio train default DATA OUT`` runs the three stages back to back, each in ``OUT/<stage>``
with its own checkpoint (so ``--resume`` continues whichever stage was interrupted) and an
optional wall-clock budget per stage, then assembles ``OUT/model`` (fp16 diffusers layout).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from sdstudio.training.data import ImageTextSet
from sdstudio.training.export import assemble_sd_folder, folder_size
from sdstudio.training.ldm import LDMConfig, train_ldm
from sdstudio.training.loop import LoopConfig
from sdstudio.training.miniclip import MiniCLIPConfig, train_clip
from sdstudio.training.vae import VAEConfig, train_vae


@dataclass
class StagePlan:
    """Loop settings of one stage (steps, batch, lr, budget in seconds)."""

    steps: int
    batch_size: int
    lr: float
    time_budget_s: float | None = None
    warmup_steps: int = 100
    sample_every: int = 1000


@dataclass
class DefaultRecipe:
    """Everything the default model's run needs; ``tiny()`` shrinks it for dry runs and tests."""

    vae: VAEConfig = field(default_factory=VAEConfig)
    clip: MiniCLIPConfig = field(default_factory=MiniCLIPConfig)
    ldm: LDMConfig = field(default_factory=LDMConfig)
    vae_plan: StagePlan = field(default_factory=lambda: StagePlan(20000, 128, 4e-4, sample_every=1000))
    clip_plan: StagePlan = field(default_factory=lambda: StagePlan(20000, 512, 1e-3, sample_every=1000))
    ldm_plan: StagePlan = field(
        default_factory=lambda: StagePlan(100000, 256, 3e-4, warmup_steps=200, sample_every=1000)
    )
    mixed_precision: str = "no"
    seed: int = 0
    checkpoint_every_s: float = 120.0

    def tiny(self) -> DefaultRecipe:
        """Return the same recipe with small models and few steps (CPU dry run)."""
        p = StagePlan(3, 8, 1e-3, warmup_steps=1, sample_every=2)
        return replace(
            self,
            vae=replace(self.vae, block_out_channels=(8, 16, 16), norm_num_groups=4),
            clip=replace(self.clip, hidden=32, layers=1, heads=2, embed_dim=16, image_channels=(8, 16)),
            ldm=replace(self.ldm, block_out_channels=(16, 32, 32), norm_num_groups=8, preview_steps=2),
            vae_plan=p,
            clip_plan=p,
            ldm_plan=p,
        )


def _loop(recipe: DefaultRecipe, plan: StagePlan, out: Path, resume: bool, progress: bool) -> LoopConfig:
    return LoopConfig(
        out_dir=out,
        steps=plan.steps,
        batch_size=plan.batch_size,
        lr=plan.lr,
        warmup_steps=plan.warmup_steps,
        seed=recipe.seed,
        mixed_precision=recipe.mixed_precision,
        checkpoint_every_s=recipe.checkpoint_every_s,
        sample_every=plan.sample_every,
        time_budget_s=plan.time_budget_s,
        resume=resume,
        progress=progress,
    )


def train_default_model(
    data: ImageTextSet,
    out: Path,
    recipe: DefaultRecipe | None = None,
    resume: bool = False,
    progress: bool = True,
    stages: tuple[str, ...] = ("vae", "clip", "ldm"),
    assemble: bool = True,
) -> Path:
    """Run the stages named in ``stages`` into ``out`` and assemble ``out/model``; return its path."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel

    recipe = recipe or DefaultRecipe()
    out = Path(out)
    if "vae" in stages:
        train_vae(data, _loop(recipe, recipe.vae_plan, out / "vae", resume, progress), recipe.vae)
    if "clip" in stages:
        train_clip(data, _loop(recipe, recipe.clip_plan, out / "clip", resume, progress), recipe.clip)
    if "ldm" in stages:
        vae = AutoencoderKL.from_pretrained(str(out / "vae" / "final" / "vae"), local_files_only=True)
        text = CLIPTextModel.from_pretrained(
            str(out / "clip" / "final" / "text_encoder"), dtype=torch.float32, local_files_only=True
        )
        train_ldm(data, _loop(recipe, recipe.ldm_plan, out / "ldm", resume, progress), vae, text, recipe.ldm)
    if not assemble:
        return out
    model = assemble_sd_folder(
        out / "vae" / "final" / "vae",
        out / "clip" / "final",
        out / "ldm" / "final" / "unet",
        out / "ldm" / "final" / "scheduler",
        out / "model",
    )
    print(f"assembled {model} ({folder_size(model) / 1e6:.1f} MB)")
    return model
