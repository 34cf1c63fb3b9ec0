"""Model files, and nothing about what is in them: safe state-dict I/O and A1111 model hashes.

Public entry points: :func:`read_checkpoint`, :func:`write_safetensors`, :func:`model_hash`. What a
file holds (detection, key maps) is each family's business (``sdstudio.families``); loading whole
models lives in ``sdstudio.models.loader``.
"""

from sdstudio.checkpoints.hashing import model_hash
from sdstudio.checkpoints.io import Checkpoint, read_checkpoint, write_safetensors

__all__ = ["Checkpoint", "model_hash", "read_checkpoint", "write_safetensors"]
