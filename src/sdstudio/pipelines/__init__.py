"""Pipelines: short planners over one sampling loop, behind one entry.

``generate(model, request)`` runs any mode (the request's init images, mask and outpaint margins
decide which); ``txt2img``, ``img2img`` and ``outpaint`` are the same with the inputs as
arguments. Each returns GeneratedImage items (image, seeds, A1111 parameters and infotext).
"""

from sdstudio.pipelines.generate import generate, img2img, outpaint, prepare, txt2img
from sdstudio.pipelines.plan import GeneratedImage, ModelIdentity

__all__ = ["GeneratedImage", "ModelIdentity", "generate", "img2img", "outpaint", "prepare", "txt2img"]
