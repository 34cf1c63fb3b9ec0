"""The UNet and the VAE decoder run by OpenVINO's CPU runtime (``--backend openvino``): same weights, same maths.

OpenVINO (https://docs.openvino.ai) converts the traced diffusers UNet (``ov.convert_model`` with
dynamic batch, size and context length) into its own graph and compiles it for the CPU: fused
convolution + bias + activation, blocked memory layouts, its own thread pool. Nothing is quantised:
it computes in the model's dtype (``INFERENCE_PRECISION_HINT`` f32 or bf16, set explicitly: OpenVINO
would pick bf16 by itself on bf16 CPUs) and the outputs match PyTorch's within float round-off
(~1e-5 in fp32; tests/speed/test_openvino.py bounds it).

The converted graphs are cached on disk (``<cache>/openvino/unet-<fingerprint>.xml``, ``vae-...``):
converting the SD 1.5 UNet takes about a minute and a half here, reading the cache a few seconds.
A compiled graph holds the weights as they were when it was converted, so ``matches`` tells the
pipeline when the PyTorch module has changed since (LoRA weights patched in for a job, seamless
tiling, other attention processors, another VAE): then the PyTorch module runs, unchanged.

SDXL (added text/time embeddings) and UNets with class labels are not converted
(:func:`supports_openvino`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdstudio.backends.idle_weights import hash_weight_samples
from sdstudio.backends.resident_memory import releasing_mapped_pages, trim_heap
from sdstudio.checkpoints.hashing import write_json_atomically
from sdstudio.errors import CheckpointChangedError, SDStudioError
from sdstudio.families.sd.token_downsampling import token_downsampling
from sdstudio.families.sd.unet_split import full_forward, shallow_forward, supports_split

log = logging.getLogger(__name__)
GRAPH_VERSION = 2  # bumped when the traced graphs change (2: the UNet also returns its deep features)


def openvino_available() -> bool:
    """True when the ``openvino`` package is importable (a dependency of sdstudio; ``pip install openvino``)."""
    return importlib.util.find_spec("openvino") is not None


def supports_openvino(unet: Any) -> bool:
    """True for UNets the converter handles: no class labels, no added (SDXL) embeddings."""
    cfg = unet.config
    return getattr(unet, "class_embedding", None) is None and cfg.get("addition_embed_type") is None


class _UNetGraph(torch.nn.Module):
    """The UNet as a function of three float32 tensors, for tracing: its output and, where the UNet
    splits (:func:`sdstudio.families.sd.unet_split.supports_split`), its deep features for DeepCache."""

    def __init__(self, unet: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.unet, self.dtype, self.split = unet, dtype, supports_split(unet)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor):
        sample, context = sample.to(self.dtype), context.to(self.dtype)
        if not self.split:
            return self.unet(sample, timestep, encoder_hidden_states=context, return_dict=False)[0].float()
        out, deep = full_forward(self.unet, sample, timestep, encoder_hidden_states=context)
        return out.float(), deep.float()  # (B, C_out, h, w), (B, C_deep, h', w')


class _ShallowGraph(torch.nn.Module):
    """DeepCache's shallow UNet path as a function of four float32 tensors, for tracing."""

    def __init__(self, unet: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.unet, self.dtype = unet, dtype

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                deep: torch.Tensor) -> torch.Tensor:  # fmt: skip
        out = shallow_forward(
            self.unet, sample.to(self.dtype), timestep, context.to(self.dtype), deep.to(self.dtype)
        )
        return out.float()  # (B, C_out, h, w)


class _DecoderGraph(torch.nn.Module):
    """``vae.decode`` as a function of one float32 latent tensor (VAE space), for tracing."""

    def __init__(self, vae: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.vae, self.dtype = vae, dtype

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.vae.decode(z.to(self.dtype), return_dict=False)[0].float()  # (B, 3, H, W)


def module_state(module: Any) -> tuple:
    """What a compiled graph depends on: weight storages, attention processors, conv padding."""
    weights = tuple(p.data_ptr() for p in module.parameters())
    processors = tuple(type(p).__name__ + str(id(p)) for p in getattr(module, "attn_processors", {}).values())
    padding = tuple(m.padding_mode for m in module.modules() if isinstance(m, torch.nn.Conv2d))
    return weights, processors, padding


def _versions(dtype: torch.dtype) -> str:
    """What a converted graph depends on besides the weights: dtype, graph version, package versions."""
    packages = "".join(importlib.metadata.version(p) for p in ("openvino", "diffusers", "torch"))
    return f"{dtype} graphs v{GRAPH_VERSION}{packages}"  # the bytes fingerprints have always hashed


def weights_fingerprint(module: Any, dtype: torch.dtype) -> str:
    """A short hash of a module's config, the package versions (a newer OpenVINO or diffusers may
    trace differently) and :func:`~sdstudio.backends.idle_weights.hash_weight_samples`."""
    h = hashlib.blake2b(digest_size=10)
    config = {k: v for k, v in dict(module.config).items() if not k.startswith("_")}  # not diffusers'
    h.update(repr(sorted(config.items())).encode())  # `_use_default_values`: a list in set order
    h.update(_versions(dtype).encode())
    hash_weight_samples(h, module)
    return h.hexdigest()


class CompiledGraph:
    """One OpenVINO graph with dynamic input shapes, read from the cache or built, compiled once on first use.

    The graph comes from ``<cache_dir>/openvino/<name>-<fingerprint>.xml`` when present, else
    ``build()`` makes it (:func:`convert_module`, :func:`quantize_int8`) and it is cached (written
    atomically). One dynamic-shape compilation serves every size and batch: compiling per static
    shape ran the embedded UNet ~20% faster, but each compilation holds its own repacked copy of
    the weights (3.4 GB for SD 1.5 in fp32) and a new size would stall.

    While ``recording`` is a list, every call's input arrays are appended to it (the calibration
    data of :func:`quantize_int8`).

    OpenVINO maps the cached ``.bin`` and repacks its weights on the first inference; that
    inference runs under :func:`~sdstudio.backends.resident_memory.releasing_mapped_pages`, so the
    mapped originals do not stay resident beside the repacked copy.

    ``static_shapes`` compiles the graph for each call's exact input shapes instead, one shape at a
    time (a new shape frees the last compilation before compiling). For a small graph run on one
    size for many calls, the VAE decoder, that pays: at 512 px its static compilation needs 0.2 GiB
    less memory and decodes ~10% faster, and compiling it takes ~0.25 s (BENCHMARKS.md run 9).
    """

    def __init__(self, name: str, fingerprint: str, cache_dir: str | Path | None, threads: int,
                 dtype: torch.dtype, build: Callable[[], Any], action: str = "converting",
                 static_shapes: bool = False) -> None:  # fmt: skip
        import openvino as ov

        self.ov, self.core, self.name, self.fingerprint = ov, ov.Core(), name, fingerprint
        self.config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": _precision(dtype)}
        path = _cache_path(cache_dir, name, fingerprint)
        self._path = path
        self.graph = self._read(path)
        self.shares_source = False
        if self.graph is None:
            if path is not None:
                log.warning("%s the %s for OpenVINO, once for these weights (cached in %s)", action, name,
                            path.parent)  # fmt: skip
            self.graph = build()
            if path is not None:
                _save_atomically(self.ov, self.graph, path)
            # A built graph points into the traced module's tensors, and so may the compiled model
            # (constants it needs not repack, e.g. bf16 ones, stay where they are): read it back
            # from the cache so that it owns its weights; without a cache it keeps sharing them.
            self.graph = self._read(path) or self.graph
            self.shares_source = path is None
        self._request = None  # compiled on first use (or by :meth:`compile`)
        self._mapped = [path.with_suffix(".bin")] if path is not None and not self.shares_source else []
        self._repacked = False  # True after the first inference
        self.static_shapes = static_shapes
        self._shapes: list[tuple[int, ...]] | None = None  # what the static compilation is for
        self.recording: list[list[np.ndarray]] | None = None

    @staticmethod
    def cached(name: str, fingerprint: str, cache_dir: str | Path | None) -> bool:
        """True when ``cache_dir`` holds the graph ``name`` for these weights."""
        return _is_cached(_cache_path(cache_dir, name, fingerprint))

    def _read(self, path: Path | None):
        if not _is_cached(path):
            return None
        try:
            return self.core.read_model(str(path))
        except RuntimeError:  # a damaged cache file: convert again
            return None

    def run(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The graph's first output for float32 ``inputs`` (any shapes the dynamic graph admits)."""
        self._infer(inputs)
        return self._output(0)

    def run_all(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        """All the graph's outputs for ``inputs``."""
        self._infer(inputs)
        return [self._output(i) for i in range(len(self._request.model_outputs))]

    def unload(self) -> bool:
        """Free the compilation and its repacked weights; the next call reads the graph from the
        cache and compiles it again (seconds). False (nothing freed) for a graph not cached."""
        if self.shares_source or not _is_cached(self._path):
            return False
        self._request, self._shapes, self.graph, self._repacked = None, None, None, False
        trim_heap()
        return True

    def _source(self):
        """The ``ov.Model`` to compile: read back from the cache after :meth:`unload`."""
        if self.graph is None:
            self.graph = self._read(self._path)
        return self.graph

    def compile(self) -> None:
        """Compile the graph for the CPU now (else on the first call); the graph is freed after.
        With ``static_shapes`` the graph stays (each new shape compiles it again) and compiling
        waits for the first call's shapes."""
        if self._request is None and not self.static_shapes:
            compiled = self.core.compile_model(self._source(), "CPU", self.config)
            self._request = compiled.create_infer_request()
            self.graph = None  # the compiled model holds its own (repacked) weights: free the graph's

    def _compile_for(self, shapes: list[tuple[int, ...]]) -> None:
        """Compile the graph for exactly these input shapes, freeing the last shape's compilation first."""
        if shapes == self._shapes:
            return
        self._request, self._shapes = None, None  # its repacked weights and buffers go before the next
        trim_heap()
        graph = self._source()
        graph.reshape({port: self.ov.PartialShape(list(shape)) for port, shape in zip(graph.inputs, shapes)})
        self._request = self.core.compile_model(graph, "CPU", self.config).create_infer_request()
        self._shapes, self._repacked = shapes, False

    def _infer(self, inputs: tuple[torch.Tensor, ...]) -> None:
        arrays = [np.ascontiguousarray(x.detach().float().cpu().numpy()) for x in inputs]
        if self.recording is not None:
            self.recording.append([a.copy() for a in arrays])
        if self.static_shapes:
            self._compile_for([a.shape for a in arrays])
        else:
            self.compile()
        if self._repacked:
            self._request.infer(arrays)
            return
        with releasing_mapped_pages(self._mapped):
            self._request.infer(arrays)
        self._repacked = True

    def release_scratch(self) -> None:
        """Give the compiled graph's intermediate buffers back (``CompiledModel.release_memory``); the
        next call allocates them again. The weights stay. The SD 1.5 UNet's buffers at 512 px are
        ~0.4 GiB and the VAE decoder's ~0.3 GiB: released between the two, a job holds only one."""
        if self._request is not None:
            self._request.get_compiled_model().release_memory()

    def _output(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.array(self._request.get_output_tensor(i).data, copy=True))


def convert_module(traced: torch.nn.Module, example: tuple, shapes: list[list[int]]) -> Any:
    """``traced`` (a module of float32 tensors) as an OpenVINO graph with the dynamic ``shapes``."""
    import openvino as ov

    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TracerWarnings about diffusers' shape asserts
        # traced here without the re-run check: converting this is ~1.6x faster than OpenVINO's own way
        script = torch.jit.trace(traced.eval(), example, check_trace=False)
        return ov.convert_model(script, example_input=example, input=[ov.PartialShape(s) for s in shapes])


SOURCES_FILE = "unet-sources.json"  # in <cache>/openvino: weights-file SHA-256 -> UNet graph fingerprint


def unet_source_key(sha256: str, dtype: torch.dtype) -> str:
    """The key of a UNet's weights file (its SHA-256) loaded in ``dtype`` by these package versions."""
    return f"{sha256} {_versions(dtype)}"


def cached_unet_fingerprint(cache_dir: str | Path | None, source_key: str) -> str | None:
    """The fingerprint of the cached UNet graph converted from ``source_key``'s weights, or None.

    With it the loader need not read the UNet's weights at all (:func:`use_openvino` runs the
    cached graph; a job that needs the PyTorch UNet reads them then): on a 2 GB SD 1.5 file that is
    1.7 GB neither read nor converted at load, once the first load converted and recorded it.
    """
    fingerprint = _unet_sources(cache_dir).get(source_key)
    if not isinstance(fingerprint, str) or not CompiledGraph.cached("unet", fingerprint, cache_dir):
        return None
    return fingerprint


def remember_unet_source(cache_dir: str | Path | None, source_key: str, fingerprint: str) -> None:
    """Record that ``source_key``'s weights converted to the graph ``fingerprint`` (written atomically)."""
    if cache_dir is None or not CompiledGraph.cached("unet", fingerprint, cache_dir):
        return
    sources = _unet_sources(cache_dir)
    if sources.get(source_key) == fingerprint:
        return
    sources[source_key] = fingerprint
    try:
        write_json_atomically(Path(cache_dir) / "openvino" / SOURCES_FILE, sources)
    except OSError:
        log.warning("could not record the UNet graph in %s", cache_dir)


def _unet_sources(cache_dir: str | Path | None) -> dict:
    """The recorded weights-file -> graph map ({} without a cache, or when missing or damaged)."""
    if cache_dir is None:
        return {}
    try:
        sources = json.loads((Path(cache_dir) / "openvino" / SOURCES_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return sources if isinstance(sources, dict) else {}


def _cache_path(cache_dir: str | Path | None, name: str, fingerprint: str) -> Path | None:
    """``<cache_dir>/openvino/<name>-<fingerprint>.xml`` (None without a cache)."""
    return None if cache_dir is None else Path(cache_dir) / "openvino" / f"{name}-{fingerprint}.xml"


def _is_cached(path: Path | None) -> bool:
    return path is not None and path.is_file() and path.with_suffix(".bin").is_file()


def _precision(dtype: torch.dtype) -> str:
    """OpenVINO's inference precision for a model dtype (fp16 weights on the CPU compute in f32)."""
    return "bf16" if dtype == torch.bfloat16 else "f32"


def _require_openvino() -> None:
    if not openvino_available():
        raise SDStudioError("--backend openvino needs the openvino package: pip install openvino")


class _StandIn:
    """A compiled graph standing in for a PyTorch module (or for some of its submodules, ``parts``).

    :meth:`release_weights` frees the PyTorch weights of those parts once the graph is compiled (the
    module keeps its structure on the ``meta`` device): the compiled graph holds its own copy, so a
    process would otherwise hold them twice. A job that needs the PyTorch module calls
    :meth:`restore_weights` first, which re-reads them from the checkpoint once; they stay loaded after.
    Subclasses set ``module``, ``what`` (its name in messages), ``graph``, ``dtype``, ``state``
    (:func:`module_state` as converted) and ``_reload`` (None).
    """

    parts: tuple[str, ...] = ("",)  # submodule names ("": the whole module)
    module: Any
    what: str
    graph: CompiledGraph
    dtype: torch.dtype
    state: tuple
    _reload: Callable[[], dict[str, torch.Tensor]] | None  # set while released

    def matches(self, module: Any) -> bool:
        """True while ``module`` is the one converted here, with the same weights and processors."""
        return module is self.module and module_state(module) == self.state

    @property
    def released(self) -> bool:
        """True while the PyTorch weights are freed (only the compiled graph can run)."""
        return self._reload is not None

    def release_weights(self, reload: Callable[[], dict[str, torch.Tensor]]) -> None:
        """Free the PyTorch weights of ``parts`` and compile the graph; ``reload()`` returns them
        again (a state dict of owned tensors in the model's dtype, read from the checkpoint, keyed
        like ``module.state_dict()``; keys outside ``parts`` are ignored).

        The graph holds its own weights (read from the cache), so PyTorch's go before compiling
        (the compile's peak never holds both). Without a cache the graph shares the module's
        tensors and nothing is freed.
        """
        if self.released or not self.matches(self.module) or self.graph.shares_source:
            return  # a graph converted without a cache runs on the module's own tensors: they stay
        for part in self.parts:  # structure and shapes stay; the storage goes
            torch.nn.Module.to(self.module.get_submodule(part), device="meta")
        trim_heap()
        self.state = module_state(self.module)
        self._reload = reload
        self.graph.compile()

    def restore_weights(self) -> None:
        """Load the PyTorch weights back (no-op unless released). If they no longer are the ones
        converted (the checkpoint changed on disk), the graph stops matching and
        :class:`~sdstudio.errors.CheckpointChangedError` is raised: the rest of the model in memory
        is the old file's, and a job never runs on a mix of two checkpoints (the worker loads the
        model again for the next job)."""
        if self._reload is None:
            return
        log.info("reading the PyTorch %s's weights (a job needs the PyTorch path)", self.what)
        state_dict, self._reload = self._reload(), None
        for part in self.parts:
            prefix = f"{part}." if part else ""
            assign_weights(self.module.get_submodule(part),
                           {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)})  # fmt: skip
        if weights_fingerprint(self.module, self.dtype) == self.graph.fingerprint:
            self.state = (module_state(self.module)[0], *self.state[1:])  # processors as converted
        else:
            self.state = ()
            raise CheckpointChangedError(
                f"the checkpoint's {self.what} changed on disk since the model was loaded; "
                "the next job loads the new file"
            )


class _GraphUNet:
    """The UNet's three kinds of call over ``self.graph`` (and the shallow graph, for DeepCache)."""

    graph: CompiledGraph

    def __call__(
        self,
        sample: torch.Tensor,  # (B, C_in, h, w)
        timestep: torch.Tensor,  # (B,) or scalar
        encoder_hidden_states: torch.Tensor,  # (B, T, D)
        added_cond_kwargs: dict | None = None,
        return_dict: bool = False,
    ) -> tuple[torch.Tensor]:
        t = _timesteps(timestep, sample, added_cond_kwargs)
        return (self.graph.run(sample, t, encoder_hidden_states).to(sample.dtype),)  # (B, C_out, h, w)

    def full_with_deep(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                       added_cond_kwargs: dict | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
        """The UNet's output (B, C_out, h, w) and its deep features (B, C_deep, h', w'; None if it doesn't split)."""
        outputs = self.graph.run_all(
            sample, _timesteps(timestep, sample, added_cond_kwargs), encoder_hidden_states
        )
        deep = outputs[1].to(sample.dtype) if len(outputs) > 1 else None
        return outputs[0].to(sample.dtype), deep

    def shallow(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                deep: torch.Tensor, added_cond_kwargs: dict | None = None) -> torch.Tensor:  # fmt: skip
        """DeepCache's shallow call (B, C_out, h, w) with ``deep`` from :meth:`full_with_deep`."""
        t = _timesteps(timestep, sample, added_cond_kwargs)
        return self._shallow_graph().run(sample, t, encoder_hidden_states, deep).to(sample.dtype)

    def _shallow_graph(self) -> CompiledGraph:
        raise NotImplementedError

    def _graphs(self) -> list[CompiledGraph]:
        return [self.graph]

    def release_scratch(self) -> None:
        """Free the intermediate buffers of every graph here (called once sampling is done)."""
        for graph in self._graphs():
            graph.release_scratch()
        trim_heap()


class OpenVINOUNet(_GraphUNet, _StandIn):
    """Callable like ``unet(sample, t, encoder_hidden_states=..., return_dict=False)`` -> ``(eps,)``.

    Also DeepCache's two kinds of call (:mod:`sdstudio.pipelines.deepcache`): :meth:`full_with_deep`
    (the same graph's second output) and :meth:`shallow` (a second, small graph of the UNet's shallow
    path, converted and cached on first use). :meth:`int8` is its int8-quantised twin (fast mode).

    :meth:`release_weights` frees the PyTorch UNet's weights (:class:`_StandIn`); a job that needs
    the PyTorch UNet (LoRA weights, ToMe, tiling, attention maps, a graph not yet cached) calls
    :meth:`restore_weights` first.
    """

    def __init__(self, unet: Any, dtype: torch.dtype, cache_dir: str | Path | None, threads: int,
                 fingerprint: str | None = None) -> None:  # fmt: skip
        _require_openvino()
        if not supports_openvino(unet):
            raise SDStudioError(
                "--backend openvino supports SD 1.x/2.x UNets (not SDXL or class-conditioned)"
            )
        self.unet, self.config, self.dtype = unet, unet.config, dtype
        self.cache_dir, self.threads = cache_dir, threads
        self._reload = None
        c_in, ctx_dim = unet.config.in_channels, unet.config.cross_attention_dim
        self.example = (torch.randn(2, c_in, 8, 8), torch.tensor([500.0, 500.0]), torch.randn(2, 77, ctx_dim))
        self.shapes = [[-1, c_in, -1, -1], [-1], [-1, -1, ctx_dim]]
        self.state = module_state(unet)  # what the graphs were converted from
        fingerprint = fingerprint or weights_fingerprint(unet, dtype)  # given: the graph is cached
        self.graph = CompiledGraph("unet", fingerprint, cache_dir, threads, dtype,
                                   lambda: convert_module(_UNetGraph(unet, dtype), self.example, self.shapes))  # fmt: skip
        self._shallow: CompiledGraph | None = None
        self._int8: dict[int, Int8UNet] = {}  # by token downsampling factor (1: none)
        self.module, self.what = unet, "UNet"

    def float32_copy(self) -> Any:
        """An fp32 copy of the PyTorch UNet (re-read from the checkpoint if freed; freed again after)."""
        reload = self._reload
        self.restore_weights()
        unet = copy.deepcopy(self.unet).float()
        if reload is not None:
            self.release_weights(reload)
        return unet

    def _graphs(self) -> list[CompiledGraph]:
        twins = [g for twin in self._int8.values() for g in twin._graphs()]
        return [g for g in (self.graph, self._shallow, *twins) if g is not None]

    def _shallow_graph(self) -> CompiledGraph:
        if self._shallow is None:
            if not supports_split(self.unet):
                raise SDStudioError("this UNet has no shallow path for DeepCache")
            fingerprint = self.graph.fingerprint  # the UNet's: its weights may be released
            if not CompiledGraph.cached("unet-shallow", fingerprint, self.cache_dir):
                self.restore_weights()  # converting traces the PyTorch UNet
            self._shallow = CompiledGraph(
                "unet-shallow", fingerprint, self.cache_dir, self.threads, self.dtype,
                lambda: convert_module(_ShallowGraph(self.unet, self.dtype), self.shallow_example(self.unet),
                                       self.shallow_shapes()),
            )  # fmt: skip
        return self._shallow

    def shallow_example(self, unet: Any) -> tuple:
        """The four example inputs of the shallow graph (the deep features from a full ``unet`` call)."""
        dtype = next(unet.parameters()).dtype
        with torch.no_grad():
            _, deep = _UNetGraph(unet, dtype)(*self.example)  # (2, C_deep, h', w')
        return (*self.example, deep)

    def shallow_shapes(self) -> list[list[int]]:
        deep_channels = self.unet.up_blocks[-2].resnets[-1].conv2.out_channels  # full_forward's hook
        return [*self.shapes, [-1, deep_channels, -1, -1]]

    def int8(self, calibrate: Callable[[], None], todo: int = 1) -> _GraphUNet:
        """The int8-quantised twin of this UNet (:class:`Int8UNet`), built once per checkpoint;
        with ``todo`` > 1, the twin whose graphs downsample the full-resolution self-attention's
        keys/values by that factor (:mod:`sdstudio.families.sd.token_downsampling`), built on its first use.

        ``calibrate()`` runs sampling jobs on this UNet while its graphs record their inputs; it is
        called only when the int8 graphs are not cached. During it, ``int8`` returns this UNet
        itself: the calibration jobs run, and are recorded, on the unquantised graphs.
        """
        if self.graph.recording is not None:
            return self
        if todo not in self._int8:
            self._int8[todo] = Int8UNet(self, calibrate, todo)
        return self._int8[todo]

    @contextlib.contextmanager
    def recording(self) -> Iterator[tuple[list, list]]:
        """Record every call's inputs: (full UNet calls, shallow DeepCache calls) while inside."""
        graphs = [self.graph, self._shallow_graph() if supports_split(self.unet) else None]
        records: tuple[list, list] = ([], [])
        for graph, record in zip(graphs, records, strict=True):
            if graph is not None:
                graph.recording = record
        try:
            yield records
        finally:
            for graph in graphs:
                if graph is not None:
                    graph.recording = None


CALIBRATION_VERSION = 2  # bumped when the calibration jobs or the quantisation settings change
CROSS_ATTENTION = r".*\.attn2[./].*"  # graph node names of diffusers' cross-attention (kept in float)


class Int8UNet(_GraphUNet):
    """An :class:`OpenVINOUNet`'s graphs quantised to int8 weights and activations (fast mode).

    Post-training static quantisation by NNCF (:func:`quantize_int8`) of fp32 graphs traced from the
    same PyTorch UNet, calibrated on the inputs its unquantised graphs saw in real sampling jobs;
    cached as ``unet-int8c<version>-<fingerprint>`` (and ``-shallow``) beside the other graphs; with
    ``todo`` > 1 the graphs are traced with token downsampling installed (``unet-int8c<v>-todo<f>``).
    On AVX-512 VNNI int8 products run at about twice the bf16 rate (BENCHMARKS.md measures it, and
    the quality cost). Ops left in float (softmax, normalisation) compute in the model's precision.
    """

    def __init__(self, parent: OpenVINOUNet, calibrate: Callable[[], None], todo: int = 1) -> None:
        self.parent, self.todo = parent, todo
        self.name = f"unet-int8c{CALIBRATION_VERSION}" + (f"-todo{todo}" if todo > 1 else "")
        fingerprint, cache_dir = parent.graph.fingerprint, parent.cache_dir
        split = supports_split(parent.unet)
        names = [self.name, f"{self.name}-shallow"][: 1 + split]
        full_inputs: list = []
        shallow_inputs: list = []
        if not all(CompiledGraph.cached(name, fingerprint, cache_dir) for name in names):
            _check_int8_build_memory(parent.unet)
            log.warning("calibrating the int8 UNet (sampling a few jobs; once for these weights)")
            with parent.recording() as (full_inputs, shallow_inputs):
                calibrate()
        self._float32: Any = None  # an fp32 copy of the PyTorch UNet, only while quantising
        args = (fingerprint, cache_dir, parent.threads, parent.dtype)
        self.graph = CompiledGraph(self.name, *args, lambda: self._quantize(full_inputs, shallow=False),
                                   action="quantising (int8, NNCF)")  # fmt: skip
        self._shallow = None
        if split:
            self._shallow = CompiledGraph(f"{self.name}-shallow", *args,
                                          lambda: self._quantize(shallow_inputs, shallow=True),
                                          action="quantising (int8, NNCF)")  # fmt: skip
        if not any(g is not None and g.shares_source for g in (self.graph, self._shallow)):
            self._float32 = None  # the graphs own their weights (read back from the cache)

    def matches(self, unet: Any) -> bool:
        """True while the unquantised UNet matches ``unet`` (the int8 graphs come from the same weights)."""
        return self.parent.matches(unet)

    def _shallow_graph(self) -> CompiledGraph:
        if self._shallow is None:
            raise SDStudioError("this UNet has no shallow path for DeepCache")
        return self._shallow

    def _graphs(self) -> list[CompiledGraph]:
        return [g for g in (self.graph, self._shallow) if g is not None]

    def _quantize(self, calibration: list[list[np.ndarray]], shallow: bool) -> Any:
        parent = self.parent
        parent.graph.unload()  # its repacked weights (1.6 GiB for SD 1.5 in bf16) wait on disk meanwhile
        if self._float32 is None:
            self._float32 = parent.float32_copy()  # the fp32 graphs are traced from the PyTorch UNet
        unet = self._float32
        example = parent.shallow_example(unet) if shallow else parent.example  # traced without ToDo
        with token_downsampling(unet, self.todo):  # factor 1: nothing installed
            if shallow:
                graph = convert_module(_ShallowGraph(unet, torch.float32), example, parent.shallow_shapes())
            else:
                graph = convert_module(_UNetGraph(unet, torch.float32), example, parent.shapes)
        return quantize_int8(graph, calibration)


INT8_BUILD_MEMORY = 2.5  # x the fp32 UNet's bytes (SD 1.5: 8.0 GiB); its build peaked 6.7 GiB above the
# loaded process (9.4 GiB in all, the bf16 graph's compilation freed meanwhile: BENCHMARKS.md run 9)


def _check_int8_build_memory(unet: Any) -> None:
    """SDStudioError unless about ``INT8_BUILD_MEMORY`` x the fp32 UNet is available (fp32 copy,
    fp32 graph, NNCF's statistics): the one-time build must not push the machine into swap."""
    need = INT8_BUILD_MEMORY * 4 * sum(p.numel() for p in unet.parameters())
    available = memory_available()
    if available is not None and available < need:
        raise SDStudioError(
            f"building the int8 UNet once needs about {need / 2**30:.1f} GiB of free memory; "
            f"{available / 2**30:.1f} GiB is available"
        )


def quantize_int8(graph: Any, calibration: list[list[np.ndarray]]) -> Any:
    """Post-training static int8 quantisation of an OpenVINO graph's weights and activations.

    NNCF's ``quantize`` (https://github.com/openvinotoolkit/nncf): per-channel symmetric int8
    weights, activation ranges from min/max statistics of ``calibration`` (each item one call's
    input arrays), SmoothQuant (Xiao et al. 2023) before the transformer MatMuls; bias correction off
    (it costs a pass per layer and changed nothing measurable here). The cross-attention (``attn2``:
    the text encoder's states, with their few huge outlier channels) stays in float: quantising it
    cost most of int8's error on the embedded model (mini-CLIP cosine 0.915 -> 0.987 to the float
    path) for ~2% of its speed at 512 px (BENCHMARKS.md).
    """
    try:
        import nncf
    except ImportError as exc:  # a dependency of sdstudio; the message is for bare installs
        raise SDStudioError("int8 quantisation needs the nncf package: pip install nncf") from exc
    if not calibration:
        raise SDStudioError("int8 quantisation got no calibration data (no UNet call was recorded)")
    nncf.set_log_level(logging.ERROR)
    with contextlib.redirect_stdout(sys.stderr):  # NNCF's progress bars: stdout carries the CLI's paths
        return nncf.quantize(
            graph, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(calibration), ignored_scope=nncf.IgnoredScope(patterns=[CROSS_ATTENTION], validate=False),
            advanced_parameters=nncf.AdvancedQuantizationParameters(disable_bias_correction=True),
        )  # fmt: skip


def restore_torch_unet(model: Any) -> None:
    """Make sure ``model.unet`` has its PyTorch weights (see :meth:`OpenVINOUNet.release_weights`)."""
    if model.compiled_unet is not None:
        model.compiled_unet.restore_weights()


def restore_torch_decoder(model: Any) -> None:
    """Make sure ``model.vae``'s decoder has its PyTorch weights (see :meth:`OpenVINODecoder.release_weights`)."""
    if model.compiled_decoder is not None and model.compiled_decoder.vae is model.vae:
        model.compiled_decoder.restore_weights()


def _timesteps(timestep: torch.Tensor, sample: torch.Tensor, added_cond_kwargs: dict | None) -> torch.Tensor:
    """Float32 timesteps, one per row of ``sample``; refuses SDXL's added conditioning."""
    if added_cond_kwargs:
        raise SDStudioError("the OpenVINO UNet takes no added conditioning (SDXL)")
    t = torch.as_tensor(timestep)
    return t.float().reshape(-1).expand(sample.shape[0]) if t.numel() == 1 else t.float()  # (B,)


class OpenVINODecoder(_StandIn):
    """``decode(z) -> images``: the VAE decoder (VAE-space latents (B, C, h, w) -> (B, 3, H, W) in [-1, 1]).

    :meth:`release_weights` frees the PyTorch decoder's weights (``decoder`` and ``post_quant_conv``;
    the encoder stays, image-to-image needs it); a PyTorch decode (seamless tiling, the fp32 retry,
    saving the model) calls :meth:`restore_weights` first.
    """

    parts = ("decoder", "post_quant_conv")

    def __init__(self, vae: Any, dtype: torch.dtype, cache_dir: str | Path | None, threads: int,
                 name: str = "vae") -> None:  # fmt: skip
        _require_openvino()
        self.module = self.vae = vae
        self.what, self.dtype, self._reload = "VAE decoder", dtype, None
        self.state = module_state(vae)  # what the graph was converted from
        c = vae.config.latent_channels
        example = (torch.randn(1, c, 8, 8),)
        self.graph = CompiledGraph(name, weights_fingerprint(vae, dtype), cache_dir, threads, dtype,
                                   lambda: convert_module(_DecoderGraph(vae, dtype), example, [[-1, c, -1, -1]]),
                                   static_shapes=True)  # fmt: skip

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decoded images (B, 3, H, W), one latent at a time (the graph is compiled for (1, C, h, w):
        a batch needs no more memory than one image); its buffers are freed after (~0.4 GiB at 512 px)."""
        images = torch.cat([self.graph.run(row) for row in z.split(1)])  # (B, 3, H, W)
        self.graph.release_scratch()
        trim_heap()
        return images


def use_openvino(model: Any, cache_dir: str | Path | None, threads: int | None = None,
                 reload_unet: Callable[[], dict[str, torch.Tensor]] | None = None,
                 unet_fingerprint: str | None = None,
                 reload_vae: Callable[[], dict[str, torch.Tensor]] | None = None) -> Any:  # fmt: skip
    """Give ``model`` (a StableDiffusionModel) an OpenVINO UNet and VAE decoder; returns ``model``.

    With ``reload_unet`` (a function returning the UNet's state dict again, from the checkpoint) the
    PyTorch UNet's weights are freed once the graph is compiled (:meth:`OpenVINOUNet.release_weights`);
    with ``reload_vae`` (the VAE's state dict) likewise the VAE decoder's (:class:`OpenVINODecoder`).
    ``unet_fingerprint`` names a cached UNet graph (:func:`cached_unet_fingerprint`); the UNet may then
    come without weights (``meta``: the loader did not read them). Should that graph have left the
    cache meanwhile, the weights are read with ``reload_unet`` and converted as usual.
    """
    threads = threads or torch.get_num_threads()
    if unet_fingerprint is not None and not CompiledGraph.cached("unet", unet_fingerprint, cache_dir):
        unet_fingerprint = None
    if unet_fingerprint is None and has_meta_weights(model.unet):
        if reload_unet is None:
            raise SDStudioError("the UNet has no weights loaded and none to read them from")
        assign_weights(model.unet, reload_unet())
    model.compiled_unet = OpenVINOUNet(model.unet, model.dtype, cache_dir, threads, unet_fingerprint)
    model.compiled_decoder = OpenVINODecoder(model.vae, model.dtype, cache_dir, threads)
    if model.tiny_vae is not None:  # fast mode's decoder (TAESD), converted like the VAE's
        model.compiled_tiny_decoder = OpenVINODecoder(
            model.tiny_vae, model.dtype, cache_dir, threads, "taesd"
        )
    if reload_unet is not None:
        model.compiled_unet.release_weights(reload_unet)
    if reload_vae is not None:
        model.compiled_decoder.release_weights(reload_vae)
    return model


def has_meta_weights(module: torch.nn.Module) -> bool:
    """True when ``module``'s parameters are on the ``meta`` device (structure without storage)."""
    return any(p.is_meta for p in module.parameters())


def assign_weights(module: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """Give ``module`` the tensors of ``state_dict`` (same names and shapes; strict), frozen."""
    module.load_state_dict(state_dict, strict=True, assign=True)
    module.requires_grad_(False)


def memory_available() -> int | None:
    """Bytes of memory the kernel says are available (``MemAvailable``), None where it can't tell."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def auto_backend_reason(model: Any) -> str | None:
    """Why ``--backend auto`` runs ``model`` on PyTorch (None: it runs on OpenVINO).

    OpenVINO is chosen on a CPU when the package is installed, the UNet converts, and memory allows
    the compiled graph beside PyTorch's weights: ``2 x weights + 1 GiB`` available is asked for, a
    margin over what the first conversion of a checkpoint adds (the UNet's trace and the converted
    graph; BENCHMARKS.md run 9: 2.81 GiB for the whole SD 1.5 process in bf16, the first 512 px job
    2.97 GiB; run 5, before the weights were freed and streamed, 6.95 GiB). Converted, a process
    holds 2.85 GiB at 512 px (run 9) against 3.15 GiB on PyTorch alone (run 8).
    """
    if model.device.type != "cpu":
        return f"the model is on {model.device.type}"
    if not openvino_available():
        return "openvino is not installed (pip install openvino)"
    if not supports_openvino(model.unet):
        return "the UNet is not one OpenVINO converts here (SDXL, class labels)"
    weights = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    available = memory_available()
    if available is not None and available < 2 * weights + 2**30:
        return (
            f"{available / 2**30:.1f} GiB available is too little to compile a {weights / 2**30:.1f} GiB UNet"
        )
    return None


def _save_atomically(ov, graph, path: Path) -> None:
    """Write ``path`` (.xml) and its .bin under temporary names, then rename both into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.xml")
    ov.save_model(graph, str(tmp), compress_to_fp16=False)  # exact weights, not rounded to fp16
    tmp.with_suffix(".bin").replace(path.with_suffix(".bin"))
    tmp.replace(path)
