"""Extra networks from an A1111 models folder: LoRA/LyCORIS, textual inversion, VAE files.

Layer: imports config, errors, checkpoints and models only; pipelines receive a
:class:`NetworkLibrary` explicitly and wrap a job in :func:`activate_networks`.
"""

from sdstudio.networks.apply import activate_networks
from sdstudio.networks.library import NetworkFile, NetworkLibrary
from sdstudio.networks.tags import NetworkTag, parse_network_tags, strip_network_tags

__all__ = [
    "NetworkFile",
    "NetworkLibrary",
    "NetworkTag",
    "activate_networks",
    "parse_network_tags",
    "strip_network_tags",
]
