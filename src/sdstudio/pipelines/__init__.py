"""Pipelines: short orchestration functions over explicit model objects.

Each function takes a StableDiffusionModel and a GenerationRequest and returns GeneratedImage
items; all of them run the one sampling loop in ``pipelines.loop``.
"""

from sdstudio.pipelines.txt2img import GeneratedImage, txt2img  # noqa: I001  (txt2img first: others build on it)
from sdstudio.pipelines.img2img import img2img
from sdstudio.pipelines.outpaint import outpaint

__all__ = ["GeneratedImage", "img2img", "outpaint", "txt2img"]
