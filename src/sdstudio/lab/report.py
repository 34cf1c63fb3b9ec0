"""One self-contained HTML report per study: images, attention maps, tables and matplotlib plots
embedded as base64 (no CDN, readable offline), plus the reproducing command. Numbers come from
the study's JSON dict; the wording of the findings only claims what the CIs support.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

METRICS = {"pixel_mad": "mean |pixel diff|", "ssim_distance": "1 - SSIM", "clip_distance": "CLIP distance"}


def _b64(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _img(image, alt: str, width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_b64(image)}"{w}>'


def _ci(e: dict, digits: int = 4) -> str:
    return f"{e['mean']:.{digits}f} <span class=ci>[{e['lo']:.{digits}f}, {e['hi']:.{digits}f}]</span>"


def image_grid(data: dict, samples: list, n: int = 8):
    """Variants as rows, the first ``n`` seeds as columns, labelled (A1111-style grid)."""
    from sdstudio.pipelines.scripts.grid import labelled_grid

    seeds = data["seeds"][:n]
    by_key = {(s.variant, s.seed): s.image for s in samples}
    prompts = [v["prompt"] for v in data["variants"]]
    cells = [by_key[(i, seed)] for i in range(len(prompts)) for seed in seeds]
    return labelled_grid(cells, [f"seed {s}" for s in seeds], prompts)


def plot_change(data: dict):
    """Bar chart: image change of each variant vs the base, with CIs, and the noise floor band."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), dpi=90)
    for ax, (key, label) in zip(axes, METRICS.items()):
        names = [f"v{e['variant']}" for e in data["image_change"]]
        means = [e[key]["mean"] for e in data["image_change"]]
        err = [[m - e[key]["lo"] for m, e in zip(means, data["image_change"])],
               [e[key]["hi"] - m for m, e in zip(means, data["image_change"])]]  # fmt: skip
        ax.bar(names, means, yerr=err, capsize=4, color="#4c78a8")
        nf = data["noise_floor"][key]
        ax.axhspan(nf["lo"], nf["hi"], color="#f58518", alpha=0.3, label="noise floor (seed k vs k+1)")
        ax.axhline(nf["mean"], color="#f58518")
        ax.set_title(label, fontsize=9)
        ax.tick_params(labelsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return _fig_image(fig)


def plot_dominance(data: dict):
    """CLIP margin (a - b) and a's attention share per variant, with CIs."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    dom = data["dominance"]
    a, b = (c.replace("$", r"\$") for c in dom[0]["concepts"])  # text, never matplotlib mathtext
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.8), dpi=90)
    for ax, key, title, ref in (
        (axes[0], "clip_margin_a_minus_b", f"CLIP sim({a}) - sim({b})", 0.0),
        (axes[1], "attention_share_a", f"attention share of '{a}'", 0.5),
        (axes[2], "map_overlap", "heat-map overlap (cosine)", None),
    ):
        means = [e[key]["mean"] for e in dom]
        err = [[m - e[key]["lo"] for m, e in zip(means, dom)], [e[key]["hi"] - m for m, e in zip(means, dom)]]
        ax.bar([f"v{e['variant']}" for e in dom], means, yerr=err, capsize=4, color="#54a24b")
        if ref is not None:
            ax.axhline(ref, color="black", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=8)
    fig.tight_layout()
    return _fig_image(fig)


def _fig_image(fig):
    import matplotlib.pyplot as plt
    from PIL import Image

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    buf.seek(0)
    return Image.open(buf).convert("RGB")


def findings(data: dict) -> list[str]:
    """Plain sentences; "beyond the noise floor" only when the CI of (change - floor) excludes 0."""
    out = []
    for e in data["image_change"]:
        v = data["variants"][e["variant"]]["prompt"]
        d = e["minus_noise_floor"]["pixel_mad"]
        r = e["ratio_to_noise_floor"]["pixel_mad"]
        if d["lo"] > 0:
            verdict = "changes the image more than a new seed does"
        elif d["hi"] < 0:
            verdict = "changes the image less than a new seed does"
        else:
            verdict = "changes the image about as much as a new seed does (no effect beyond the noise floor)"
        out.append(f"'{v}' vs '{data['variants'][0]['prompt']}': {verdict}; pixel change / noise floor = "
                   f"{r['mean']:.2f} [{r['lo']:.2f}, {r['hi']:.2f}].")  # fmt: skip
    for e in data.get("dominance", []):
        a, b = e["concepts"]
        m = e["clip_margin_a_minus_b"]
        side = a if m["lo"] > 0 else b if m["hi"] < 0 else None
        who = f"looks more like '{side}'" if side else f"is not clearly closer to '{a}' or '{b}'"
        out.append(f"'{e['prompt']}': the image {who} (CLIP margin {m['mean']:.4f} [{m['lo']:.4f}, {m['hi']:.4f}]); "
                   f"'{a}' gets {e['attention_share_a']['mean']:.1%} of the two words' attention.")  # fmt: skip
    return out


def write_report(data: dict, samples: list, out: Path) -> Path:
    """Write ``out/report.html`` (self-contained) and return its path."""
    parts = [
        _head(data),
        f"<h2>Findings</h2><ul>{''.join(f'<li>{html.escape(s)}</li>' for s in findings(data))}</ul>",
    ]
    parts.append(
        "<h2>Images</h2><p>Rows: variants; columns: the first seeds (every variant uses the same seeds).</p>"
    )
    parts.append(_img(image_grid(data, samples), "study grid"))
    parts.append(_tokens_table(data))
    parts.append("<h2>Image change vs the base prompt (paired by seed)</h2>" + _change_table(data))
    parts.append(_img(plot_change(data), "image change plot"))
    parts.append("<h2>Conditioning change (text encoder states)</h2>" + _cond_table(data))
    if data.get("dominance"):
        parts.append("<h2>Concept dominance and attention</h2>" + _dominance_table(data))
        parts.append(_img(plot_dominance(data), "dominance plot"))
    parts.append("</body></html>")
    path = Path(out) / "report.html"
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def _head(data: dict) -> str:
    spec = data["spec"]
    settings = ", ".join(
        f"{k}={spec[k]}" for k in ("seeds", "first_seed", "steps", "sampler", "cfg_scale", "width", "height")
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>sdstudio study: {html.escape(data["study"])}</title>
<style>body{{font:14px/1.45 system-ui,sans-serif;max-width:1100px;margin:20px auto;padding:0 12px}}
table{{border-collapse:collapse;margin:8px 0}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:left}}
.ci{{color:#666;font-size:12px}}pre{{background:#f4f4f4;padding:8px;overflow:auto}}img{{max-width:100%}}</style></head><body>
<h1>Prompt study: {html.escape(data["study"])}</h1>
<p>Model {html.escape(str(data.get("model", {}).get("name", "")))}; judge {html.escape(data["judge"])}; {html.escape(settings)};
{data.get("timing", {}).get("images", "")} images in {data.get("timing", {}).get("total_s", "")} s.
95% CIs: paired bootstrap over seeds (2000 resamples). Noise floor: the base prompt at seed k vs seed k+1.</p>
<p>Reproduce:</p><pre>{html.escape(data["command"] or "(called from Python)")}</pre>"""


def _tokens_table(data: dict) -> str:
    rows = "".join(
        f"<tr><td>v{v['index']}</td><td>{html.escape(v['prompt'])}</td><td>{html.escape(' '.join(v['tokens']))}</td>"
        f"<td>{v['token_ids']}</td></tr>"
        for v in data["variants"] + data.get("token_probes", [])
    )
    return f"<h2>Tokens</h2><table><tr><th></th><th>prompt</th><th>BPE tokens</th><th>token ids</th></tr>{rows}</table>"


def _change_table(data: dict) -> str:
    head = "".join(f"<th>{m}</th>" for m in METRICS.values())
    nf = "".join(f"<td>{_ci(data['noise_floor'][k])}</td>" for k in METRICS)
    rows = [f"<tr><td>noise floor</td>{nf}</tr>"]
    for e in data["image_change"]:
        cells = "".join(
            f"<td>{_ci(e[k])}<br>ratio {_ci(e['ratio_to_noise_floor'][k], 2)}</td>" for k in METRICS
        )
        rows.append(f"<tr><td>v{e['variant']} vs v0</td>{cells}</tr>")
    return f"<table><tr><th></th>{head}</tr>{''.join(rows)}</table>"


def _cond_table(data: dict) -> str:
    rows = "".join(
        f"<tr><td>v{c['variant']} vs v0</td><td>{c['mean_cos_distance_prompt_tokens']:.4f}</td>"
        f"<td>{c['mean_cos_distance_all_77']:.4f}</td><td>{c['pooled_cos_distance']:.4f}</td></tr>"
        for c in data["conditioning"]
    )
    return ("<table><tr><th></th><th>per-token cos distance (prompt span)</th><th>all 77 positions</th>"
            f"<th>pooled (end-of-text)</th></tr>{rows}</table>")  # fmt: skip


def _dominance_table(data: dict) -> str:
    a, b = data["dominance"][0]["concepts"]
    keys = [("clip_sim_a", f"sim({a})"), ("clip_sim_b", f"sim({b})"), ("clip_margin_a_minus_b", "margin"),
            ("attention_share_a", f"attention share '{a}'"), ("map_overlap", "map overlap")]  # fmt: skip
    head = "".join(f"<th>{html.escape(t)}</th>" for _, t in keys)
    rows = "".join(
        f"<tr><td>v{e['variant']} {html.escape(e['prompt'])}</td>{''.join(f'<td>{_ci(e[k])}</td>' for k, _ in keys)}</tr>"
        for e in data["dominance"]
    )
    return f"<table><tr><th></th>{head}</tr>{rows}</table>"
