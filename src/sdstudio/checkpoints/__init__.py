"""Model files: safe state-dict I/O, A1111 model hashes, architecture detection, key maps.

Public entry points: :func:`read_checkpoint`, :func:`model_hash`, :func:`detect_architecture`,
:func:`original_to_diffusers`, :func:`diffusers_to_original`. Loading whole models lives in
``sdstudio.models.loader``.
"""

from sdstudio.checkpoints.convert import diffusers_to_original, original_to_diffusers
from sdstudio.checkpoints.detect import detect_architecture
from sdstudio.checkpoints.hashing import model_hash
from sdstudio.checkpoints.io import Checkpoint, read_checkpoint, write_safetensors

__all__ = [
    "Checkpoint",
    "detect_architecture",
    "diffusers_to_original",
    "model_hash",
    "original_to_diffusers",
    "read_checkpoint",
    "write_safetensors",
]
