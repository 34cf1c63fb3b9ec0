"""One contender of bench/suite.py in its own process (honest peak RSS and cold-start figures).

    python3 bench/_worker.py CONTENDER --size 256 --steps 20 --single FILE --folder DIR [--cold]

Prints one JSON line (prefixed ``RESULT ``): phase seconds (import, load, warm-up, image), the
image's split (text encoder / UNet / VAE / save), UNet calls and rows, peak RSS. ``--cold``: no
warm-up; the timed image is the process's first. Contenders: sdstudio, sdstudio-fast (the default
backend, auto), sdstudio-torch, sdstudio-torch-fast, sdstudio-openvino, diffusers-fp32, diffusers-bf16,
sdcpp.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time

START = time.perf_counter()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

PROMPT = "a cute fluffy cat plays trumpet"
NEGATIVE = ""
CFG = 7.0
SEED = 1


class Split:
    """Seconds spent inside modules, from public forward hooks (no patching)."""

    def __init__(self) -> None:
        self.seconds = {"text": 0.0, "unet": 0.0, "vae": 0.0, "save": 0.0}
        self.unet_calls = self.unet_full_calls = self.unet_rows = 0
        self._t0: dict[str, float] = {}

    def span(self, name: str, first, last=None) -> None:
        last = last or first

        def pre(_m, args, kwargs=None):
            self._t0[name] = time.perf_counter()
            if name == "unet":
                self.unet_calls += 1
                x = args[0] if args else kwargs.get("input")
                self.unet_rows += int(x.shape[0])

        def post(_m, _a, _o):
            self.seconds[name] += time.perf_counter() - self._t0[name]

        first.register_forward_pre_hook(pre, with_kwargs=True)
        last.register_forward_hook(post)

    def watch_unet(self, unet) -> None:
        """conv_in -> conv_out covers full and DeepCache-shallow calls; the module hook counts full ones."""
        self.span("unet", unet.conv_in, unet.conv_out)

        def full(_m, _a):
            self.unet_full_calls += 1

        unet.register_forward_pre_hook(full)

    def reset(self) -> None:
        self.__init__()


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


class SDStudio:
    def __init__(self, args, fast: bool, backend: str = "auto") -> None:
        from pathlib import Path

        from sdstudio import GenerationRequest, load_model

        tiny = Path(args.single).parent / "sd15-random-taesd"  # bench/suite.py's TINY_VAE_DIR
        self.model = load_model(args.single, backend=backend,  # openvino (auto): converted once, then cached
                                tiny_vae_path=tiny if fast and tiny.is_dir() else None)  # fmt: skip
        self.request = GenerationRequest(prompt=PROMPT, negative_prompt=NEGATIVE, width=args.size,
                                         height=args.size, steps=args.steps, sampler_name="DPM++ 2M",
                                         cfg_scale=CFG, seed=SEED, fast=fast)  # fmt: skip
        self.modules = (self.model.text_encoders[0], self.model.unet, self.model.vae)

    def generate(self, steps: int):
        from sdstudio import txt2img

        item = txt2img(self.model, self.request.replace(steps=steps))[0]
        return item.image, item.infotext


class Diffusers:
    def __init__(self, args, dtype_name: str) -> None:
        import torch
        from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        self.pipe = StableDiffusionPipeline.from_pretrained(
            args.folder, torch_dtype=dtype, safety_checker=None, requires_safety_checker=False,
            local_files_only=True,
        )  # fmt: skip
        self.pipe.scheduler = DPMSolverMultistepScheduler.from_config(
            self.pipe.scheduler.config, use_karras_sigmas=True
        )  # DPM++ 2M Karras = A1111 "DPM++ 2M" (Automatic schedule)
        self.pipe.set_progress_bar_config(disable=True)
        self.size = args.size
        self.modules = (self.pipe.text_encoder, self.pipe.unet, self.pipe.vae)

    def generate(self, steps: int):
        import torch

        image = self.pipe(PROMPT, negative_prompt=NEGATIVE or None, height=self.size, width=self.size,
                          num_inference_steps=steps, guidance_scale=CFG,
                          generator=torch.Generator("cpu").manual_seed(SEED)).images[0]  # fmt: skip
        return image, None


class SDCpp:
    def __init__(self, args) -> None:
        from stable_diffusion_cpp import StableDiffusion

        self.sd = StableDiffusion(model_path=args.single, n_threads=os.cpu_count() or 2, verbose=False)
        self.size = args.size
        self.modules = ()

    def generate(self, steps: int):
        images = self.sd.generate_image(prompt=PROMPT, negative_prompt=NEGATIVE, width=self.size,
                                        height=self.size, cfg_scale=CFG, sample_method="dpm++2m",
                                        scheduler="karras", sample_steps=steps, seed=SEED)  # fmt: skip
        return images[0], None


def build(args):
    name = args.contender
    if name in ("sdstudio", "sdstudio-fast"):  # the default backend (auto: OpenVINO where installed)
        return SDStudio(args, fast=name == "sdstudio-fast")
    if name in ("sdstudio-torch", "sdstudio-torch-fast"):  # --backend torch
        return SDStudio(args, fast=name.endswith("-fast"), backend="torch")
    if name == "sdstudio-openvino":  # --backend openvino (OpenVINO rows have no split: no torch hooks run)
        return SDStudio(args, fast=False, backend="openvino")
    if name.startswith("diffusers-"):
        return Diffusers(args, name.removeprefix("diffusers-"))
    if name == "sdcpp":
        return SDCpp(args)
    raise SystemExit(f"unknown contender {name}")


def save(image, infotext, split: Split) -> None:
    from PIL import PngImagePlugin

    t = time.perf_counter()
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    with tempfile.TemporaryDirectory() as tmp:
        image.save(os.path.join(tmp, "00000.png"), pnginfo=info)
    split.seconds["save"] += time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("contender")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--single", required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--cold", action="store_true")
    args = parser.parse_args()

    phases = {}
    t = time.perf_counter()
    import diffusers  # noqa: F401
    import torch

    phases["import"] = time.perf_counter() - START
    t = time.perf_counter()
    contender = build(args)
    phases["load"] = time.perf_counter() - t
    rss_load = peak_rss_gib()
    split = Split()
    text, unet, vae = contender.modules or (None, None, None)
    if unet is not None:
        split.span("text", text)
        split.watch_unet(unet)
        split.span("vae", vae.decoder)
    if not args.cold:
        t = time.perf_counter()
        contender.generate(2)  # warm-up: first-call kernel set-up at this size
        phases["warmup"] = time.perf_counter() - t
        split.reset()
    t, cpu = time.perf_counter(), time.process_time()
    image, infotext = contender.generate(args.steps)
    save(image, infotext, split)
    phases["image"] = time.perf_counter() - t
    phases["image_cpu"] = (
        time.process_time() - cpu
    )  # CPU seconds: steadier than wall time on a shared machine
    phases["process"] = time.perf_counter() - START
    result = {
        "contender": args.contender, "size": args.size, "steps": args.steps, "cold": args.cold,
        "phases": phases, "split": split.seconds, "unet_calls": split.unet_calls,
        "unet_full_calls": split.unet_full_calls, "unet_rows": split.unet_rows,
        "peak_rss_gib": peak_rss_gib(), "peak_rss_after_load_gib": rss_load,
        "threads": torch.get_num_threads(), "image_size": list(image.size),
    }  # fmt: skip
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
