"""Pipelines: short orchestration functions over explicit model objects."""

from sdstudio.pipelines.txt2img import GeneratedImage, txt2img

__all__ = ["GeneratedImage", "img2img", "txt2img"]


def __getattr__(name: str):
    if name == "img2img":  # lands with the image-to-image family
        from sdstudio.pipelines.img2img import img2img

        return img2img
    raise AttributeError(name)
