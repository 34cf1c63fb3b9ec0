"""Re-applying the networks an infotext names (``--from-png``, API prompts copied from an image).

The prompt's ``<lora:name:...>`` tags carry the LoRAs; ``Lora hashes: "name: hash"`` lets a file
that was renamed be found by its hash (A1111 ``infotext_utils`` does the same through
``available_network_hash_lookup``); ``TI hashes`` names the embeddings. Everything missing is
named in one error, before any work starts.
"""

from __future__ import annotations

from pathlib import Path

from sdstudio.errors import SDStudioError
from sdstudio.networks.library import NetworkLibrary
from sdstudio.networks.tags import RE_EXTRA_NET, parse_network_tags


def parse_hashes(value: str | None) -> dict[str, str]:
    """``"a: 0123, b: 4567"`` -> ``{"a": "0123", "b": "4567"}``."""
    out = {}
    for part in (value or "").split(","):
        name, _, digest = part.strip().rpartition(":")
        if name.strip():
            out[name.strip()] = digest.strip()
    return out


def resolve_prompt_networks(
    prompt: str, library: NetworkLibrary | None, *, lora_hashes: str = "", ti_hashes: str = ""
) -> str:
    """The prompt with every LoRA tag naming an existing file (renamed files found by hash);
    SDStudioError listing every LoRA and embedding that is missing."""
    _, tags = parse_network_tags(prompt)
    recorded = parse_hashes(lora_hashes)
    missing, renames = [], {}
    loras = {f.name for f in library.files("lora")} if library is not None else set()
    for tag in (t for t in tags if t.kind == "lora"):
        try:
            library.find("lora", tag.name) if library is not None else _raise()
        except SDStudioError:
            found = _by_hash(library, recorded.get(tag.name, ""))
            if found is None:
                digest = recorded.get(tag.name)
                missing.append(f"LoRA {tag.name!r}" + (f" (hash {digest})" if digest else ""))
            else:
                renames[tag.name] = found
    embeddings = {Path(f.name).name for f in library.files("embeddings")} if library is not None else set()
    for name, digest in parse_hashes(ti_hashes).items():
        if name not in embeddings:
            missing.append(f"embedding {name!r} (hash {digest})")
    if missing:
        where = f" in {library.dirs['lora'].parent}" if library is not None and library.dirs["lora"] else ""
        raise SDStudioError(
            f"the image used networks that are not installed{where}: {', '.join(missing)}"
            + (f"; LoRAs present: {', '.join(sorted(loras)[:10])}" if loras else ""),
            field="prompt",
        )
    return RE_EXTRA_NET.sub(lambda m: _renamed(m, renames), prompt) if renames else prompt


def _raise() -> None:
    raise SDStudioError("no library")


def _by_hash(library: NetworkLibrary | None, digest: str) -> str | None:
    if library is None or not digest:
        return None
    for f in library.files("lora"):
        if library.lora_hash(f.path).startswith(digest) or digest.startswith(library.lora_hash(f.path)):
            return f.name
    return None


def _renamed(m, renames: dict[str, str]) -> str:
    kind, args = m.group(1), m.group(2)
    name, sep, rest = args.partition(":")
    if kind in ("lora", "lyco") and name.strip() in renames:
        return f"<{kind}:{renames[name.strip()]}{sep}{rest}>"
    return m.group(0)
