"""The speed suite: sdstudio (default and --fast) vs diffusers fp32/bf16 and stable-diffusion.cpp.

    python3 bench/suite.py [--sizes 256 512] [--repeats 2] [--sdcpp-sizes 256] [--out BENCHMARKS.md]

Builds once, cached in ``~/.cache/sdstudio/bench/`` (``SDSTUDIO_CACHE_DIR`` overrides), a
random-weight SD 1.5-architecture model (shipped config, fixed seed, no download) as an
original-layout fp16 single file and as a diffusers folder of the same weights. Then, in ONE run,
each contender runs in its own process (``bench/_worker.py``: peak RSS and load time are its
own), contenders alternate in a rotating order, each repeated; medians are reported, as ratios to
the baselines measured in the same run. 20 steps DPM++ 2M (Karras), CFG 7, batch 1.

Also: the cold process (``sdstudio txt2img`` CLI on the single file vs a plain diffusers fp32
script on the folder; first image of a fresh process, OS file cache warm), the embedded model
(bench/embedded_speed.py) and, with ``--quality``, bench/quality_steps.py. Writes BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = "import sys; from sdstudio.cli import main; sys.exit(main())"  # what the `sdstudio` script runs
CONTENDERS = ("sdstudio", "sdstudio-fast", "sdstudio-torch", "sdstudio-torch-fast", "sdstudio-openvino",
              "diffusers-fp32", "diffusers-bf16", "sdcpp")  # fmt: skip
DEFAULT_CONTENDERS = ("sdstudio", "sdstudio-fast", "diffusers-fp32", "diffusers-bf16", "sdcpp")


def cache_dir() -> Path:
    base = Path(os.environ.get("SDSTUDIO_CACHE_DIR") or Path.home() / ".cache" / "sdstudio")
    return base / "bench"


def child_env() -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


TINY_VAE_DIR = "sd15-random-taesd"  # a random-weight TAESD-shaped tiny VAE beside the single file


def ensure_tiny_vae(folder: Path) -> Path:
    """A random-weight tiny VAE of TAESD's shape (64 channels, 3 blocks) for the random SD 1.5: fast
    mode decodes with it, as it would with a real SD 1.5's TAESD (speed only: its images are noise)."""
    path = folder / TINY_VAE_DIR
    if not (path / "config.json").is_file():
        code = ("from sdstudio.models.tiny_vae import build_tiny_vae, save_tiny_vae;"
                f"save_tiny_vae(build_tiny_vae(4, 8, 64, 3, 0), {str(path)!r})")  # fmt: skip
        subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
    return path


def ensure_model(folder: Path) -> tuple[Path, Path]:
    """(single file, diffusers folder) of the random SD 1.5, built once in a subprocess (and its tiny VAE)."""
    single, diffusers_dir = folder / "sd15-random-fp16.safetensors", folder / "sd15-random-fp16-diffusers"
    if single.is_file() and (diffusers_dir / "model_index.json").is_file():
        ensure_tiny_vae(folder)
        return single, diffusers_dir
    folder.mkdir(parents=True, exist_ok=True)
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'bench')!r}); from bench_txt2img import build_sd15;"
        "from sdstudio.models.save import save_single_file, save_diffusers;"
        f"m = build_sd15(); save_single_file(m, {str(single)!r}, half=True);"
        f"save_diffusers(m, {str(diffusers_dir)!r}, half=True)"
    )
    print(f"building the random SD 1.5 in {folder} (once) ...", flush=True)
    subprocess.run([sys.executable, "-c", code], check=True, env=child_env())
    ensure_tiny_vae(folder)
    return single, diffusers_dir


def run_worker(contender: str, size: int, steps: int, single: Path, folder: Path, cold: bool = False) -> dict:
    cmd = [sys.executable, str(ROOT / "bench" / "_worker.py"), contender, "--size", str(size),
           "--steps", str(steps), "--single", str(single), "--folder", str(folder)]  # fmt: skip
    if cold:
        cmd.append("--cold")
    t = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
    wall = time.perf_counter() - t
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        print(f"  {contender} {size}px FAILED: {' | '.join(tail)}", flush=True)
        return {"contender": contender, "size": size, "failed": " | ".join(tail)[-300:]}
    result = json.loads(lines[-1].removeprefix("RESULT "))
    result["wall"] = wall
    print(f"  {contender:15s} {size}px image {result['phases']['image']:7.2f} s  load {result['phases']['load']:6.2f} s"
          f"  peak RSS {result['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
    return result


def run_cli_cold(size: int, steps: int, single: Path) -> dict:
    """Wall time of the real ``sdstudio txt2img`` process, measured from outside."""
    with tempfile.TemporaryDirectory() as out:
        cmd = [sys.executable, "-c", CLI, "txt2img", "a cute fluffy cat plays trumpet",
               "--model", str(single), "--width", str(size), "--height", str(size), "--steps", str(steps),
               "--sampler", "DPM++ 2M", "--cfg-scale", "7", "--seed", "1", "--outdir", out]  # fmt: skip
        t = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), check=False)
        wall = time.perf_counter() - t
    if proc.returncode != 0:
        return {"contender": "sdstudio-cli", "failed": proc.stderr.strip().splitlines()[-1:]}
    print(f"  sdstudio txt2img CLI (cold) {wall:7.2f} s", flush=True)
    return {"contender": "sdstudio-cli", "wall": wall}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: list[dict]) -> dict:
    """{(contender, size): medians} over the successful repeats."""
    table: dict = {}
    for r in results:
        if "failed" in r:
            table.setdefault((r["contender"], r["size"]), {"failed": r["failed"]})
            continue
        table.setdefault((r["contender"], r["size"]), {"runs": []})["runs"].append(r)
    for row in table.values():
        runs = row.get("runs", [])
        if not runs:
            continue
        row["image"] = median([r["phases"]["image"] for r in runs])
        row["cpu"] = median([r["phases"]["image_cpu"] for r in runs if r["phases"].get("image_cpu")])
        row["load"] = median([r["phases"]["load"] for r in runs])
        row["rss"] = max(r["peak_rss_gib"] for r in runs)
        row["split"] = {k: median([r["split"][k] for r in runs]) for k in runs[0]["split"]}
        row["unet"] = (runs[0]["unet_calls"], runs[0]["unet_full_calls"], runs[0]["unet_rows"])
        row["n"] = len(runs)
    return table


def machine() -> str:
    import torch

    cpu, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    isa = "AVX-512 bf16" if "avx512_bf16" in flags else "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    isa += ", AMX bf16/int8" if "amx_bf16" in flags else ""  # bf16 GEMMs several times the AVX-512 rate
    return f"{cpu} ({isa or 'ISA unknown'}), {os.cpu_count()} cores, torch {torch.__version__}, Python {platform.python_version()}"


def fmt(x: float | None, unit: str = "s") -> str:
    return "—" if x is None else f"{x:.2f} {unit}".strip()


def per_image_table(table: dict, sizes: list[int]) -> list[str]:
    """Rows per contender; ratios are baseline / contender on wall time (CPU time in brackets)."""
    lines = [("| contender | size | s/image | CPU s/image | vs diffusers fp32 | vs diffusers bf16 | vs sd.cpp "
              "| text / UNet / VAE / save (s) | UNet calls (full) / rows | peak RSS | load |"),
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for size in sizes:
        bases = ("diffusers-fp32", "diffusers-bf16", "sdcpp")
        base = {c: table.get((c, size), {}) for c in bases}
        for c in CONTENDERS:
            row = table.get((c, size))
            if row is None:
                continue
            if "failed" in row and "image" not in row:
                lines.append(f"| {c} | {size} | failed: {row['failed'][:80]} | | | | | | | | |")
                continue
            ratios = [_ratio(b, row) for b in base.values()]
            sp = row["split"]
            split = (
                " / ".join(f"{sp[k]:.2f}" for k in ("text", "unet", "vae", "save")) if sp["unet"] else "n/a"
            )
            calls, full, rows = row["unet"]
            unet = f"{calls} ({full}) / {rows}" if calls else "n/a"
            lines.append(f"| {c} | {size} | {row['image']:.2f} s | {fmt(row.get('cpu'))} | {ratios[0]} | {ratios[1]} "
                         f"| {ratios[2]} | {split} | {unet} | {row['rss']:.2f} GiB | {row['load']:.2f} s |")  # fmt: skip
    return lines


def _ratio(base: dict, row: dict) -> str:
    if not base.get("image"):
        return "—"
    wall = f"{base['image'] / row['image']:.2f}x"
    if base.get("cpu") and row.get("cpu"):
        return f"{wall} ({base['cpu'] / row['cpu']:.2f}x)"
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--repeats", type=int, nargs="+", default=[2, 1], help="per size (last repeats)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--contenders", nargs="+", default=list(DEFAULT_CONTENDERS), choices=CONTENDERS)
    parser.add_argument(
        "--sdcpp-sizes", type=int, nargs="*", default=[256], help="sd.cpp is slow: sizes to run it at"
    )
    parser.add_argument("--sdcpp-repeats", type=int, default=1, help="sd.cpp runs in the first N rounds only")
    parser.add_argument("--cold-repeats", type=int, default=1)
    parser.add_argument("--cold-size", type=int, default=256)
    parser.add_argument("--no-embedded", action="store_true")
    parser.add_argument("--quality", action="store_true", help="also run bench/quality_steps.py (~10 min)")
    parser.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    parser.add_argument("--json", default=None)
    parser.add_argument(
        "--render", nargs="+", metavar="JSON", help="only re-render: a suite JSON [+ quality JSON]"
    )
    args = parser.parse_args()
    if args.render:
        report = json.loads(Path(args.render[0]).read_text())
        if len(args.render) > 1:
            report["quality"] = json.loads(Path(args.render[1]).read_text())
        Path(args.out).write_text(render(report, args))
        return

    single, folder = ensure_model(cache_dir())
    results: list[dict] = []
    for i, size in enumerate(args.sizes):
        repeats = args.repeats[min(i, len(args.repeats) - 1)]
        for rep in range(repeats):
            names = [
                c
                for c in args.contenders
                if c != "sdcpp" or (size in args.sdcpp_sizes and rep < args.sdcpp_repeats)
            ]
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: no contender always first
            print(f"{size}px, round {rep + 1}/{repeats}", flush=True)
            results += [run_worker(c, size, args.steps, single, folder) for c in order]
    cold: list[dict] = []
    for rep in range(args.cold_repeats):
        print(f"cold process, {args.cold_size}px, round {rep + 1}", flush=True)
        cold.append(run_cli_cold(args.cold_size, args.steps, single))
        cold.append(run_worker("diffusers-fp32", args.cold_size, args.steps, single, folder, cold=True))
        cold.append(run_worker("sdstudio", args.cold_size, args.steps, single, folder, cold=True))
    embedded = None
    if not args.no_embedded:
        proc = subprocess.run([sys.executable, str(ROOT / "bench" / "embedded_speed.py"), "--json", "-"],
                              capture_output=True, text=True, env=child_env(), check=False)  # fmt: skip
        print(proc.stdout, proc.stderr[-500:] if proc.returncode else "", flush=True)
        embedded = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    quality = None
    if args.quality:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            subprocess.run([sys.executable, str(ROOT / "bench" / "quality_steps.py"), "--json", tmp.name],
                           check=True, env=child_env())  # fmt: skip
            quality = json.loads(Path(tmp.name).read_text())
    report = {"machine": machine(), "argv": sys.argv[1:], "results": results, "cold": cold,
              "embedded": embedded, "quality": quality}  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    text = render(report, args)
    Path(args.out).write_text(text)
    print(text)


def render(report: dict, args) -> str:
    table = summarize(report["results"])
    lines = ["# Benchmarks", "", f"Machine: {report['machine']}. Measured with", "",
             f"    python3 bench/suite.py {' '.join(report['argv'])}", "",
             ("Random-weight SD 1.5 architecture (fp16 single file / diffusers folder of the same weights), "
             f"one image, {args.steps} steps DPM++ 2M Karras, CFG 7, batch 1; each contender in its own "
             "process, alternating, medians; ratios > 1 mean sdstudio's row is faster. Timings on a shared "
             "machine are only comparable within this run."), "", "## Per image (warm: after a 2-step warm-up)",
             "", *per_image_table(table, args.sizes), ""]  # fmt: skip
    lines += render_cold(report["cold"])
    lines += render_quality(report.get("quality"))
    if report["embedded"]:
        e = report["embedded"]
        lines += ["## Embedded model (64x64, 20 steps DPM++ 2M, CFG 7)", "",
                  "| mode | one image | batch 8 |", "|---|---|---|"]  # fmt: skip
        for mode, row in e["modes"].items():
            lines.append(f"| {mode} | {row['latency']:.3f} s | {row['batch8_images_per_s']:.1f} images/s |")
        lines.append("")
    return "\n".join(lines) + "\n"


def render_quality(q: dict | None) -> list[str]:
    """Quality per step (vs 200 steps) and fast mode's cost (vs the default path), embedded model."""
    if not q:
        return []
    tol = q["tolerance"]
    lines = [(f"## Quality per step, embedded model (mini-CLIP cosine / pixel MSE to 200 steps, "
             f"{len(q['prompts'])} prompts x {q['seeds']} seeds)"), "",
             f"Tolerance: cosine >= {tol['cosine']} and MSE <= {tol['mse']}.", ""]  # fmt: skip
    if q.get("per_step"):
        steps = list(next(iter(q["per_step"].values()))["rows"])
        lines += ["| sampler | " + " | ".join(f"{n} steps" for n in steps) + " | fewest within |",
                  "|---" * (len(steps) + 2) + "|"]  # fmt: skip
        for sampler, row in q["per_step"].items():
            cells = [f"{r['cosine']:.3f} / {r['mse']:.4f}" for r in row["rows"].values()]
            lines.append(f"| {sampler} | " + " | ".join(cells) + f" | {row['fewest_steps'] or '—'} |")
        lines.append("")
    if q.get("fast"):
        lines += ["Fast-mode techniques vs the default path (same seeds, DPM++ 2M, 20 steps):", "",
                  "| variant | cosine (min) | MSE | speed-up (this run) |", "|---|---|---|---|"]  # fmt: skip
        for name, r in q["fast"].items():
            if name != "default":
                lines.append(f"| {name} | {r['cosine']:.4f} ({r['cosine_min']:.4f}) | {r['mse']:.5f} "
                             f"| {r['speedup']:.2f}x |")  # fmt: skip
        lines.append("")
    return lines


def render_cold(cold: list[dict]) -> list[str]:
    ok = [c for c in cold if "failed" not in c]
    if not ok:
        return []
    cli = median([c["wall"] for c in ok if c["contender"] == "sdstudio-cli"])
    dif = [c for c in ok if c["contender"] == "diffusers-fp32"]
    sds = [c for c in ok if c["contender"] == "sdstudio"]
    lines = ["## Cold process, time to first image (256x256; OS file cache warm)", "",
             "| program | whole process | import | load | first image (incl. save) | peak RSS |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for label, rows in (("plain diffusers fp32 script, diffusers folder", dif),
                        ("sdstudio, same calls as the CLI (phases)", sds)):  # fmt: skip
        if rows:
            p = {k: median([r["phases"][k] for r in rows]) for k in ("process", "import", "load", "image")}
            lines.append(f"| {label} | {p['process']:.2f} s | {p['import']:.2f} s | {p['load']:.2f} s "
                         f"| {p['image']:.2f} s | {max(r['peak_rss_gib'] for r in rows):.2f} GiB |")  # fmt: skip
    if cli is not None:
        lines.append(
            f"| `sdstudio txt2img` CLI on the single file (timed from outside) | {cli:.2f} s | | | | |"
        )
    if cli is not None and dif:
        base = median([r["wall"] for r in dif])
        lines += ["", f"Whole process, diffusers fp32 / sdstudio CLI: {base / cli:.2f}x."]
    return [*lines, ""]


if __name__ == "__main__":
    main()
