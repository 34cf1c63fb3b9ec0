"""Model upscalers (ESRGAN, Real-ESRGAN Compact, SwinIR, HAT, DAT, ...) loaded with spandrel and run
tile by tile. Nothing is imported from spandrel until a file is loaded.

- :mod:`~sdstudio.upscale.load`: weights-only reading, architecture detection, licence check
- :mod:`~sdstudio.upscale.tiles`: tiled inference with overlap blending, bounded memory
- :mod:`~sdstudio.upscale.image`: PIL in/out, A1111's passes-then-Lanczos resize
- :mod:`~sdstudio.upscale.files`: the A1111/ComfyUI folders and names
"""

from sdstudio.upscale.files import (
    BUILTIN_UPSCALERS,
    UPSCALER_FOLDERS,
    UpscalerFile,
    find_upscaler,
    find_upscalers,
)
from sdstudio.upscale.image import run_model, upscale_to
from sdstudio.upscale.load import LoadedUpscaler, load_upscaler, upscaler_from_state_dict
from sdstudio.upscale.tiles import upscale_tiled

__all__ = [
    "BUILTIN_UPSCALERS",
    "UPSCALER_FOLDERS",
    "LoadedUpscaler",
    "UpscalerFile",
    "find_upscaler",
    "find_upscalers",
    "load_upscaler",
    "run_model",
    "upscale_tiled",
    "upscale_to",
    "upscaler_from_state_dict",
]
