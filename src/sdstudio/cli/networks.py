"""CLI flags for extra networks (``--models-dir``, ``--lora-dir``, ``--embeddings-dir``, ``--vae``) and
the ``--from-png`` check that every LoRA, embedding and VAE an image used is installed."""

from __future__ import annotations

import argparse


def add_network_args(p: argparse.ArgumentParser) -> None:
    """Extra networks: the A1111 models folder (``<lora:...>`` tags, embeddings) and the VAE."""
    g = p.add_argument_group("extra networks")
    g.add_argument(
        "--models-dir",
        default="models",
        help="A1111 models folder: Lora/, embeddings/, VAE/ (default ./models)",
    )
    g.add_argument("--lora-dir", default=None, help="LoRA folder (default MODELS_DIR/Lora)")
    g.add_argument(
        "--embeddings-dir", default=None, help="textual-inversion folder (default MODELS_DIR/embeddings)"
    )
    g.add_argument(
        "--vae",
        default="Automatic",
        help="Automatic (NAME.vae.safetensors beside the checkpoint), None (the checkpoint's own), "
        "a file in MODELS_DIR/VAE, or a path (file or diffusers folder)",
    )


def networks_from_args(args):
    """The :class:`NetworkLibrary` the flags describe."""
    from sdstudio.networks import NetworkLibrary

    return NetworkLibrary.from_models_dir(
        getattr(args, "models_dir", None),
        lora_dir=getattr(args, "lora_dir", None),
        embeddings_dir=getattr(args, "embeddings_dir", None),
    )


def vae_for(args):
    """The VAE file ``--vae`` means for ``--model`` (with ``--from-png`` and ``--vae Automatic``: the VAE
    the infotext names, which must exist); None = the checkpoint's own. Checked before loading."""
    from sdstudio.networks.vae import resolve_vae

    choice = getattr(args, "vae", None)
    if getattr(args, "from_png", None) and choice in (None, "Automatic"):
        from sdstudio.infotext import parse_infotext
        from sdstudio.runtime.outputs import read_infotext

        choice = parse_infotext(read_infotext(args.from_png) or "").get("VAE") or choice
    return resolve_vae(choice, args.model, networks_from_args(args), any_path=True)  # the local user's files


def use_vae(model, vae) -> None:
    from sdstudio.networks.vae import use_vae as swap

    swap(model, vae)


def prompt_from_infotext(text: str, prompt: str, args) -> str:
    """The recorded LoRAs/embeddings must exist (renamed LoRAs are found by hash); returns the prompt."""
    from sdstudio.infotext import parse_infotext
    from sdstudio.networks.reuse import resolve_prompt_networks

    fields = parse_infotext(text)
    return resolve_prompt_networks(
        prompt,
        networks_from_args(args),
        lora_hashes=fields.get("Lora hashes", ""),
        ti_hashes=fields.get("TI hashes", ""),
    )
