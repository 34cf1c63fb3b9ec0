"""One job's extra networks: the prompt's LoRA tags patched in, embeddings active, infotext hashes.

``activate_networks(model, library, request)`` is the one place pipelines call (around the job,
like ``seamless_tiling``): it parses the tags of the positive prompt (and the hires prompt), reads
and checks every LoRA file first (nothing is patched if any is bad), patches the weights, attaches
the embeddings that fit the model as ``model.textual_inversion`` for the prompt encoder, and yields
the request with A1111's ``Lora hashes`` / ``TI hashes`` infotext entries. On exit (also on error
or interruption) the base weights are restored bit for bit and the embeddings detached.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from sdstudio.errors import SDStudioError
from sdstudio.networks.embeddings import EncoderEmbeddings, read_embedding
from sdstudio.networks.keys import ModuleIndex
from sdstudio.networks.library import NetworkLibrary
from sdstudio.networks.lora import group_keys, network_deltas
from sdstudio.networks.patch import patched_weights
from sdstudio.networks.tags import NetworkTag, fold_network_tags, parse_network_tags, strip_network_tags


@contextmanager
def activate_networks(model, library: NetworkLibrary | None, request) -> Iterator[Any]:
    """Within the block ``model`` carries the request's LoRAs and embeddings; yields the request
    with its infotext extras (``request.extra`` + ``Lora hashes`` / ``TI hashes``)."""
    tags = request_tags(request)
    if library is None:
        if tags:
            raise SDStudioError(
                f"the prompt uses <{tags[0].kind}:{tags[0].name}> but no LoRA folder is configured "
                "(--models-dir / --lora-dir)",
                field="prompt",
            )
        yield request
        return
    deltas, lora_hashes = lora_deltas(model, library, tags)
    lookups = encoder_embeddings(model, library, prompt_texts(request))
    extra = dict(request.extra or {})
    if lora_hashes:
        extra["Lora hashes"] = ", ".join(lora_hashes)
    ti_hashes = used_embedding_hashes(model, library, lookups, prompt_texts(request))
    if ti_hashes:
        extra["TI hashes"] = ", ".join(ti_hashes)
    previous = model.textual_inversion
    if deltas:
        model.ensure_torch_unet()  # the backend may have freed the weights the deltas patch
    with model.text_encoders_held() if deltas else nullcontext(), patched_weights(deltas):
        model.textual_inversion = lookups  # patched text encoders are not freed during the job
        try:
            yield request.replace(extra=extra)
        finally:
            model.textual_inversion = previous


def request_tags(request) -> list[NetworkTag]:
    """The prompt's tags; a hires prompt may repeat them but not use others (one set per job)."""
    _, tags = parse_network_tags(request.prompt)
    hires = getattr(request, "hires", None)
    if hires is not None and hires.prompt:
        _, hr_tags = parse_network_tags(hires.prompt)
        if hr_tags and hr_tags != tags:
            raise SDStudioError(
                "the hires prompt uses other extra networks than the prompt; sdstudio applies one set "
                "per job: use the same <lora:...> tags in both, or none in the hires prompt",
                field="hr_prompt",
            )
    for tag in tags:
        if tag.kind == "hypernet":
            raise SDStudioError(
                f"<hypernet:{tag.name}>: hypernetworks are listed (/sdapi/v1/hypernetworks) but not "
                "applied by sdstudio; use a LoRA instead",
                field="prompt",
            )
        if tag.kind != "lora":
            raise SDStudioError(
                f"unknown extra network type <{tag.kind}:...>; supported: <lora:name:weight> (alias lyco)",
                field="prompt",
            )
    return tags


def lora_deltas(model, library: NetworkLibrary, tags: list[NetworkTag]) -> tuple[list, list[str]]:
    """Checked deltas of the LoRA tags, one per layer, and the A1111 ``Lora hashes`` entries
    (``alias: hash12``).

    Tags naming the same file are folded into one (weights summed, :func:`fold_network_tags`), and
    each file's deltas are added into one running total per layer as it is read, so 40 tags hold
    one delta per patched layer, not 40.
    """
    if not tags:
        return [], []
    index = ModuleIndex(model)
    totals: dict[int, tuple] = {}  # id(layer weight) -> (target, summed delta)
    hashes = []
    for tag in fold_network_tags(tags):
        f = library.find("lora", tag.name)
        groups = library.cached(f.path, _read_lora)
        for target, delta in network_deltas(
            groups, index, Path(f.path), te_weight=tag.te_weight, unet_weight=tag.unet_weight, dyn=tag.dyn
        ):
            key = id(target.module.weight)
            seen = totals.get(key)
            totals[key] = (target, delta if seen is None else seen[1].add_(delta))
        entry = f"{tag.name.replace(':', '').replace(',', '')}: {library.lora_hash(f.path)}"
        if entry not in hashes:
            hashes.append(entry)
    return list(totals.values()), hashes


def _read_lora(path: Path) -> dict:
    from sdstudio.checkpoints.io import read_checkpoint

    try:
        state_dict = read_checkpoint(path).state_dict
    except SDStudioError as exc:
        raise SDStudioError(f"LoRA {path.name}: {exc}", field="prompt") from exc
    return group_keys(state_dict, path)


def prompt_texts(request) -> list[str]:
    """The texts the encoder will see: prompt (tags removed), negative, hires prompt and negative."""
    texts = [strip_network_tags(request.prompt), request.negative_prompt]
    hires = getattr(request, "hires", None)
    if hires is not None:
        texts += [strip_network_tags(hires.prompt), hires.negative_prompt]
    return [t for t in texts if t]


def encoder_embeddings(model, library: NetworkLibrary, texts: list[str]) -> list[EncoderEmbeddings] | None:
    """One lookup per text encoder over the embeddings the texts use that fit the model.

    A name is used where its tokens occur in a text's tokens, as A1111's ``EmbeddingDatabase``
    matches token ids (CLIP's tokenizer lowercases and splits words from brackets and ``:``): a
    file ``e.pt`` is not used by "cat face". Only used files are read, so a broken file elsewhere in
    the folder never stops a job (:meth:`NetworkLibrary.cached` logs it once); a broken file that
    is used raises.
    """
    if not model.text_encoders:  # a model without a text encoder (pixel DDPM): names stay text
        return None
    tokenizer = model.tokenizers[0]
    text_ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    present = {i for ids in text_ids for i in ids}
    per_encoder: list[dict] = [{} for _ in model.text_encoders]
    for f in library.files("embeddings"):
        name = Path(f.name).name
        if name in per_encoder[0]:
            continue
        name_ids = tokenizer(name, add_special_tokens=False)["input_ids"]
        if (
            not name_ids
            or name_ids[0] not in present
            or not any(_contains(ids, name_ids) for ids in text_ids)
        ):
            continue
        vectors = library.cached(f.path, read_embedding).for_model(model)
        if vectors is None:  # made for another architecture: A1111 skips it (the name stays text)
            continue
        for table, vec in zip(per_encoder, vectors):
            table[name] = vec
    if not per_encoder[0]:
        return None
    return [EncoderEmbeddings(tok, table) for tok, table in zip(model.tokenizers, per_encoder)]


def _contains(ids: list[int], part: list[int]) -> bool:
    """Whether ``part`` occurs in ``ids`` as a contiguous run."""
    n = len(part)
    return any(ids[i : i + n] == part for i in range(len(ids) - n + 1) if ids[i] == part[0])


def used_embedding_hashes(model, library, lookups, texts: list[str]) -> list[str]:
    """A1111 ``TI hashes`` entries (``name: sha256[:12]``) of the embeddings the texts use.

    The texts are tokenized whole: CLIP's pre-tokenizer splits letters from brackets and ``:``,
    so an embedding name gives the same tokens as in the encoder's per-emphasis-fragment tokens.
    """
    if not lookups:
        return []
    tokenizer, lookup = model.tokenizers[0], lookups[0]
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        pos = 0
        while pos < len(ids):
            found = lookup.match(ids, pos)
            pos += found[2] if found is not None else 1
    used = list(lookup.used)
    lookup.used.clear()
    by_name = {Path(f.name).name: f for f in library.files("embeddings")}
    return [f"{n.replace(':', '').replace(',', '')}: {library.file_hash(by_name[n].path, 12)}" for n in used]
