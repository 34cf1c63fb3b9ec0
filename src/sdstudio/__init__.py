"""sdstudio: a local Stable Diffusion studio and diffusion lab.

Quick start::

    from sdstudio import load_model, txt2img, GenerationRequest
    model = load_model()                      # the embedded default model (or a path)
    images = txt2img(model, GenerationRequest(prompt="cat face", width=64, height=64, seed=1))
    images[0].image.save("cat.png")
"""

from __future__ import annotations

__version__ = "0.1.0"

from sdstudio.config import GenerationRequest, HiresSettings, Limits
from sdstudio.errors import SDStudioError

__all__ = [
    "GenerationRequest",
    "HiresSettings",
    "Limits",
    "SDStudioError",
    "__version__",
    "img2img",
    "load_model",
    "txt2img",
]


def __getattr__(name: str):
    # Lazy so that `import sdstudio` stays light (no torch/diffusers import at package import).
    if name == "load_model":
        from sdstudio.models.loader import load_model

        return load_model
    if name in ("txt2img", "img2img"):
        from sdstudio import pipelines

        return getattr(pipelines, name)
    raise AttributeError(name)
