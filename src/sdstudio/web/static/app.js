/* sdstudio web UI. Plain JS, no build step; talks only to the public HTTP API (/api, /sdapi/v1). */
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

const CLIENT_ID = (() => {
  let id = sessionStorage.getItem("sdstudio-client");
  if (!id) {
    id = "web-" + Math.random().toString(36).slice(2, 10);
    sessionStorage.setItem("sdstudio-client", id);
  }
  return id;
})();

const state = { info: null, samplers: [], schedulers: [], upscalers: [], gallery: { offset: 0, limit: 48, total: 0 } };

/* ---------------------------------------------------------------- HTTP */
async function api(method, path, body) {
  const opts = { method, headers: { "X-Client-Id": CLIENT_ID } };
  if (body !== undefined) {
    opts.headers["Content-Type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const res = await fetch(path, opts);
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!res.ok) {
    const err = new Error((data && data.detail) || `${res.status} ${res.statusText}`);
    err.status = res.status;
    err.field = data && data.field;
    throw err;
  }
  return data;
}

function blobToDataURL(blob) {
  return new Promise((resolve, reject) => {
    const r = new FileReader();
    r.onload = () => resolve(r.result);
    r.onerror = () => reject(r.error);
    r.readAsDataURL(blob);
  });
}

async function urlToDataURL(url) {
  const res = await fetch(url);
  if (!res.ok) throw new Error(`could not load ${url}`);
  return blobToDataURL(await res.blob());
}

/* ---------------------------------------------------------------- knobs */
// Labels and help text follow the classic web UI (REFERENCE.md §1).
function generationKnobs() {
  const lim = (state.info && state.info.limits) || {};
  return [
    { name: "sampler_name", label: "Sampling method", help: "which algorithm turns noise into an image", type: "select", options: () => state.samplers, value: "Euler a" },
    { name: "scheduler", label: "Schedule type", help: "how the noise levels are spaced", type: "select", options: () => state.schedulers, value: "Automatic" },
    { name: "steps", label: "Sampling Steps", help: "how many times to improve the image; more is slower", type: "range", min: 1, max: lim.max_steps || 150, step: 1, value: 20, wide: true },
    { name: "width", label: "Width", help: "multiple of 8", type: "range", min: 64, max: lim.max_width || 2048, step: 8, value: 512 },
    { name: "height", label: "Height", help: "multiple of 8", type: "range", min: 64, max: lim.max_height || 2048, step: 8, value: 512 },
    { name: "n_iter", label: "Batch count", help: "how many batches of images to generate", type: "range", min: 1, max: Math.min(lim.max_batch_count || 100, 100), step: 1, value: 1 },
    { name: "batch_size", label: "Batch size", help: "how many images are in a batch; memory-hungry", type: "range", min: 1, max: lim.max_batch_size || 8, step: 1, value: 1 },
    { name: "cfg_scale", label: "Classifier Free Guidance Scale", help: "how strongly the image should follow the prompt", type: "range", min: 1, max: 30, step: 0.5, value: 7, wide: true },
    { name: "seed", label: "Seed", help: "blank or -1 to randomize", type: "seed", value: "" },
    { name: "clip_skip", label: "Clip skip", help: "use an earlier text-encoder layer", type: "range", min: 1, max: 12, step: 1, value: 1 },
    { name: "fast", label: "Fast mode", help: "reuse deep UNet features between steps (DeepCache), tiny VAE decode, int8 UNet on OpenVINO, token downsampling (ToDo) from 512x512; small quality cost, see BENCHMARKS.md", type: "check", value: false, wide: true },
  ];
}

const KNOB_GROUPS = {
  hires: () => [
    { name: "enable_hr", label: "Enable hires. fix", help: "generate small, upscale, then refine", type: "check", value: false, wide: true },
    { name: "hr_upscaler", label: "Upscaler", help: "", type: "select", options: () => state.upscalers, value: "Latent" },
    { name: "hr_scale", label: "Upscale by", help: "", type: "range", min: 1, max: 4, step: 0.05, value: 2 },
    { name: "hr_second_pass_steps", label: "Hires steps", help: "0 = same as sampling steps", type: "range", min: 0, max: 150, step: 1, value: 0 },
    { name: "denoising_strength", label: "Denoising strength", help: "how much the second pass may change", type: "range", min: 0, max: 1, step: 0.01, value: 0.7 },
  ],
  "img2img-extra": () => [
    { name: "denoising_strength", label: "Denoising strength", help: "0 keeps the image, 1 replaces it", type: "range", min: 0, max: 1, step: 0.01, value: 0.75, wide: true },
    { name: "resize_mode", label: "Resize mode", help: "when the image and output sizes differ", type: "select", options: () => [["0", "Just resize"], ["1", "Crop and resize"], ["2", "Resize and fill"]], value: "0", wide: true },
  ],
  inpaint: () => [
    { name: "mask_blur", label: "Mask blur", help: "soften the mask edge (px)", type: "range", min: 0, max: 64, step: 1, value: 4 },
    { name: "inpainting_fill", label: "Masked content", help: "what the masked area starts from", type: "select", options: () => [["0", "fill"], ["1", "original"], ["2", "latent noise"], ["3", "latent nothing"]], value: "1" },
    { name: "inpaint_full_res", label: "Inpaint area", help: "only masked = crop, upscale, paste back", type: "select", options: () => [["false", "Whole picture"], ["true", "Only masked"]], value: "false" },
    { name: "inpaint_full_res_padding", label: "Only masked padding, pixels", help: "", type: "range", min: 0, max: 256, step: 4, value: 32 },
    { name: "inpainting_mask_invert", label: "Mask mode", help: "", type: "select", options: () => [["0", "Inpaint masked"], ["1", "Inpaint not masked"]], value: "0", wide: true },
  ],
  outpaint: () => [
    { name: "outpaint_left", label: "Left", help: "pixels to add", type: "range", min: 0, max: 512, step: 8, value: 0 },
    { name: "outpaint_right", label: "Right", help: "pixels to add", type: "range", min: 0, max: 512, step: 8, value: 64 },
    { name: "outpaint_top", label: "Up", help: "pixels to add", type: "range", min: 0, max: 512, step: 8, value: 0 },
    { name: "outpaint_bottom", label: "Down", help: "pixels to add", type: "range", min: 0, max: 512, step: 8, value: 0 },
    { name: "mask_blur", label: "Mask blur", help: "blend the seam (px)", type: "range", min: 0, max: 64, step: 1, value: 8 },
    { name: "inpainting_fill", label: "Masked content", help: "", type: "select", options: () => [["0", "fill"], ["1", "original"], ["2", "latent noise"]], value: "1" },
  ],
  txt2img: generationKnobs,
  img2img: generationKnobs,
};

function el(tag, attrs = {}, children = []) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") node.textContent = v;
    else if (k === "class") node.className = v;
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of [].concat(children)) if (c) node.append(c);
  return node;
}

function buildKnob(group, spec) {
  const id = `${group}-${spec.name}`;
  const wrap = el("div", { class: "knob" + (spec.wide ? " wide" : "") + (spec.type === "check" ? " check" : ""), "data-name": spec.name });
  const head = el("div", { class: "head" }, [el("label", { for: id, text: spec.label })]);
  wrap.append(head);
  if (spec.help) wrap.append(el("div", { class: "help", text: spec.help }));
  if (spec.type === "range") {
    const range = el("input", { type: "range", min: spec.min, max: spec.max, step: spec.step, value: spec.value, "aria-label": spec.label });
    const num = el("input", { type: "number", id, name: spec.name, min: spec.min, max: spec.max, step: spec.step, value: spec.value });
    range.addEventListener("input", () => { num.value = range.value; });
    num.addEventListener("input", () => { range.value = num.value; });
    head.append(num);
    wrap.append(range);
  } else if (spec.type === "select") {
    const sel = el("select", { id, name: spec.name });
    fillSelect(sel, spec.options(), spec.value);
    sel.dataset.options = "dynamic";
    wrap.append(sel);
  } else if (spec.type === "check") {
    const box = el("input", { type: "checkbox", id, name: spec.name });
    box.checked = !!spec.value;
    $("label", head).prepend(box);
  } else if (spec.type === "seed") {
    const input = el("input", { type: "text", id, name: spec.name, value: spec.value, placeholder: "-1 (random)", inputmode: "numeric" });
    const dice = el("button", { type: "button", class: "ghost small", title: "Random seed (-1)", text: "Random" });
    dice.addEventListener("click", () => { input.value = ""; });
    wrap.append(el("div", { class: "seed-row" }, [input, dice]));
  }
  wrap.spec = spec;
  return wrap;
}

function fillSelect(sel, options, value) {
  const current = sel.value || value;
  sel.innerHTML = "";
  for (const opt of options) {
    const [v, label] = Array.isArray(opt) ? opt : [opt, opt];
    sel.append(el("option", { value: v, text: label }));
  }
  if ([...sel.options].some((o) => o.value === String(current))) sel.value = String(current);
}

function renderKnobs() {
  for (const box of $$("[data-knobs]")) {
    const group = box.dataset.knobs;
    box.innerHTML = "";
    for (const spec of KNOB_GROUPS[group]()) box.append(buildKnob(group, spec));
  }
}

function readKnobs(box) {
  const out = {};
  for (const knob of $$(".knob", box)) {
    const spec = knob.spec;
    const input = $(`[name="${spec.name}"]`, knob);
    if (spec.type === "check") out[spec.name] = input.checked;
    else if (spec.type === "range") out[spec.name] = Number(input.value);
    else if (spec.type === "seed") out[spec.name] = input.value.trim() === "" ? -1 : Number(input.value);
    else if (spec.type === "select") {
      const v = input.value;
      out[spec.name] = v === "true" ? true : v === "false" ? false : /^-?\d+$/.test(v) && spec.name !== "sampler_name" ? Number(v) : v;
    }
  }
  return out;
}

function setKnob(group, name, value) {
  const box = $(`[data-knobs="${group}"]`);
  const knob = box && $$(".knob", box).find((k) => k.spec.name === name);
  if (!knob || value === undefined || value === null || value === "") return false;
  const spec = knob.spec;
  const input = $(`[name="${name}"]`, knob);
  if (spec.type === "check") input.checked = !!value;
  else if (spec.type === "select") {
    const v = String(value);
    const match = [...input.options].find((o) => o.value === v || o.textContent === v || o.value.toLowerCase() === v.toLowerCase());
    if (match) input.value = match.value;
  } else {
    input.value = value;
    const range = $('input[type="range"]', knob);
    if (range) range.value = value;
  }
  return true;
}

/* ---------------------------------------------------------------- tabs */
function showTab(name) {
  for (const b of $$(".tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const p of $$(".tab-panel")) p.classList.toggle("active", p.id === `tab-${name}`);
  if (name === "gallery") loadGallery();
  if (name === "models") loadModels();
  if (name === "txt2img" || name === "img2img") promptTarget = name;
  if (name === "lab") loadLab();
  location.hash = name;
}

function activeTab() {
  const b = $(".tabs button.active");
  return b ? b.dataset.tab : "txt2img";
}

/* ---------------------------------------------------------------- generation output */
class Output {
  constructor(kind) {
    this.kind = kind;
    this.root = $(`[data-output="${kind}"]`);
    this.root.append($("#output-template").content.cloneNode(true));
    this.q = (s) => $(s, this.root);
    this.job = null;
    this.source = null;
    this.shown = new Set();
    this.selected = null;
    this.q(".generate").addEventListener("click", () => generate(kind));
    this.q(".interrupt").addEventListener("click", () => this.control("cancel"));
    this.q(".skip").addEventListener("click", () => this.control("skip"));
    this.q(".send-i2i").addEventListener("click", () => this.selected && sendToImg2img(this.selected.url, this.selected.infotext));
    this.q(".reuse").addEventListener("click", () => this.selected && reuseInfotext(this.selected.infotext));
  }

  busy(on) {
    this.q(".generate").disabled = on;
    this.q(".interrupt").disabled = !on;
    this.q(".skip").disabled = !on;
  }

  message(text, cls = "") {
    const m = this.q(".message");
    m.hidden = !text;
    m.className = "message " + cls;
    m.textContent = text || "";
  }

  start() {
    this.busy(true);
    this.message("");
    this.shown.clear();
    this.q(".thumbs").innerHTML = "";
    this.q(".progress").hidden = false;
    this.setProgress(0, "Submitting…");
    this.q(".image-actions").hidden = true;
    this.q(".infotext").hidden = true;
  }

  reject(err) {
    // the server refused the request (422 naming a field, 429 queue full, ...): nothing is running
    this.busy(false);
    this.job = null;
    this.setProgress(0, err.status === 429 ? "Not queued — the queue is full" : "Not submitted — fix the request and try again");
    this.message(err.message, "error");
    if (err.field) highlightField(this.kind, err.field);
  }

  setProgress(fraction, text) {
    this.q(".fill").style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
    this.q(".progress-text").textContent = text;
  }

  follow(job) {
    this.job = job;
    this.update(job);
    if (window.EventSource) {
      this.source = new EventSource(`/api/jobs/${job.id}/events`);
      this.source.addEventListener("job", (ev) => this.update(JSON.parse(ev.data)));
      this.source.onerror = () => { this.closeStream(); if (!this.finished) this.poll(); };
    } else {
      this.poll();
    }
  }

  async poll() {
    while (this.job && !this.finished) {
      try { this.update(await api("GET", `/api/jobs/${this.job.id}`)); } catch (e) { this.message(e.message, "error"); return; }
      await new Promise((r) => setTimeout(r, 500));
    }
  }

  closeStream() {
    if (this.source) { this.source.close(); this.source = null; }
  }

  update(job) {
    this.job = job;
    this.finished = ["done", "failed", "cancelled"].includes(job.state);
    if (job.state === "queued") {
      this.setProgress(0, `Queued${job.position != null ? ` — ${job.position} job(s) ahead` : ""}`);
    } else if (job.state === "running" && !job.job_steps) {
      // no step yet: the worker is loading the model (a checkpoint's first use also converts it once)
      this.setProgress(0, `${job.phase || `Loading ${job.model || "the model"}…`} the first use of a checkpoint converts it once (1-2 min on a CPU)`);
    } else if (job.state === "running") {
      const eta = job.eta_seconds != null ? ` · ETA ${job.eta_seconds.toFixed(1)} s` : "";
      const batch = job.batch_count > 1 ? ` · batch ${job.batch_index + 1}/${job.batch_count}` : "";
      this.setProgress(job.progress, `Step ${job.job_step}/${job.job_steps}${batch}${eta}`);
      if (job.preview_url && !job.images.length) this.showMain(job.preview_url, true);
    }
    for (const img of job.images) this.addImage(img);
    if (this.finished) this.finish(job);
  }

  addImage(img) {
    if (!img.url || this.shown.has(img.url)) return;
    this.shown.add(img.url);
    const t = el("img", { src: img.url, alt: `seed ${img.seed}`, title: `seed ${img.seed}` });
    t.addEventListener("click", () => this.select(img, t));
    this.q(".thumbs").append(t);
    if (this.shown.size === 1) this.select(img, t);
  }

  select(img, thumb) {
    this.selected = img;
    for (const t of $$(".thumbs img", this.root)) t.classList.toggle("selected", t === thumb);
    this.showMain(img.url, false);
    const info = this.q(".infotext");
    info.hidden = false;
    info.textContent = img.infotext;
    this.q(".image-actions").hidden = false;
    const dl = this.q(".download");
    dl.href = img.url;
    dl.setAttribute("download", img.url.split("/").pop());
  }

  showInJobOrder(images) {
    // scripts (X/Y/Z plot, prompt matrix) finish with the grid first: put the thumbnails in the job's order
    const thumbs = this.q(".thumbs");
    const byUrl = new Map($$(".thumbs img", this.root).map((t) => [t.getAttribute("src"), t]));
    for (const img of [...images].reverse()) if (byUrl.has(img.url)) thumbs.prepend(byUrl.get(img.url));
    if (this.selected && this.selected.url !== images[0].url && byUrl.has(images[0].url)) this.select(images[0], byUrl.get(images[0].url));
  }

  showMain(url, preview) {
    const main = this.q(".main-image");
    main.hidden = false;
    main.onload = () => main.classList.toggle("pixelated", main.naturalWidth < 256);
    main.src = url;
    main.classList.toggle("preview", preview);
    this.q(".viewer").dataset.label = preview ? "Live preview" : "";
    this.q(".placeholder").hidden = true;
  }

  finish(job) {
    this.closeStream();
    this.busy(false);
    const n = this.shown.size;
    if (job.state === "done" && job.images.length) this.showInJobOrder(job.images);
    if (job.state === "done") this.setProgress(1, `Done — ${countImages([...this.shown])}`);
    else if (job.state === "cancelled") this.setProgress(job.progress, `Interrupted — ${countImages([...this.shown])} kept`);
    else this.setProgress(job.progress, "Failed");
    if (job.state === "failed") this.message(job.error || "generation failed", "error");
    else if (job.warnings && job.warnings.length) this.message(job.warnings.join("; "), "warn");
    if (!n && job.state !== "done") { this.q(".main-image").hidden = true; this.q(".placeholder").hidden = false; }
    refreshQueue();
  }

  async control(action) {
    if (!this.job) return;
    try { this.update(await api("POST", `/api/jobs/${this.job.id}/${action}`)); } catch (e) { this.message(e.message, "error"); }
  }
}

const outputs = {};

function countImages(urls) {
  // "9 images + 1 grid": grids are saved under *-grids/ (A1111's outdir_txt2img_grids)
  const grids = urls.filter((u) => /-grids\//.test(u)).length;
  const n = urls.length - grids;
  const text = `${n} image${n === 1 ? "" : "s"}`;
  return grids ? `${text} + ${grids} grid${grids === 1 ? "" : "s"}` : text;
}

function highlightField(kind, field) {
  // focus the control a 422 names (its field), if this form has one
  const input = $(`#tab-${kind} [name="${field}"]`);
  if (input) input.focus();
}

async function generate(kind) {
  const out = outputs[kind];
  if (out.job && !out.finished) return;
  const panel = $(`#tab-${kind}`);
  const payload = {
    prompt: $(`[name="prompt"]`, panel).value,
    negative_prompt: $(`[name="negative_prompt"]`, panel).value,
    ...readKnobs($(`[data-knobs="${kind}"]`)),
  };
  try {
    if (kind === "txt2img") Object.assign(payload, readKnobs($('[data-knobs="hires"]')), scriptPayload());
    else Object.assign(payload, img2imgPayload());
  } catch (e) {
    out.message(e.message, "error");
    return;
  }
  out.start();
  try {
    const job = await api("POST", `/api/jobs/${kind}`, payload);
    out.follow(job);
    refreshQueue();
  } catch (e) {
    out.reject(e);
  }
}

/* ---------------------------------------------------------------- Scripts panel (A1111 script_name / script_args) */
// Axis labels the server's X/Y/Z plot applies (A1111 names; sent as labels, which the API accepts).
const XYZ_AXES = ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps", "Hires steps", "CFG Scale", "Prompt S/R",
  "Prompt order", "Sampler", "Hires sampler", "Checkpoint name", "Sigma noise", "Schedule type", "Eta", "Clip skip",
  "Denoising", "Hires upscaler", "Size"];

function setupScripts() {
  const body = $("#scripts-body");
  const pick = el("select", { id: "script-name", "aria-label": "Script" });
  for (const [value, text] of [["", "None"], ["x/y/z plot", "X/Y/Z plot"], ["prompt matrix", "Prompt matrix"]]) pick.append(el("option", { value, text }));
  const xyz = el("div", { id: "script-xyz", hidden: true });
  const defaults = { x: ["Seed", "1-3"], y: ["CFG Scale", "3,5,7"], z: ["Nothing", ""] };
  for (const axis of ["x", "y", "z"]) {
    const type = el("select", { id: `xyz-${axis}-type`, "aria-label": `${axis.toUpperCase()} type` });
    for (const label of XYZ_AXES) type.append(el("option", { value: label, text: label }));
    type.value = defaults[axis][0];
    const values = el("input", { type: "text", id: `xyz-${axis}-values`, value: defaults[axis][1], placeholder: "1-5, 1-5 (+2), 1-10 [5], a,b", "aria-label": `${axis.toUpperCase()} values` });
    xyz.append(el("div", { class: "row xyz-axis" }, [el("span", { text: axis.toUpperCase() }), type, values]));
  }
  const check = (id, text, on) => el("label", { class: "check" }, [el("input", { type: "checkbox", id, ...(on ? { checked: "" } : {}) }), el("span", { text })]);
  xyz.append(el("div", { class: "row wrap" }, [check("xyz-legend", "Draw legend", true), check("xyz-lone", "Include sub images", false), check("xyz-subgrids", "Include sub grids", false)]));
  const matrix = el("div", { id: "script-matrix", hidden: true }, [
    el("p", { class: "muted", text: "Separate the parts with | in the prompt: a cat|in a hat|with a scarf gives every combination." }),
    el("div", { class: "row wrap" }, [check("matrix-start", "Set at prompt start", false), check("matrix-seeds", "Random seeds", false)]),
  ]);
  pick.addEventListener("change", () => { xyz.hidden = pick.value !== "x/y/z plot"; matrix.hidden = pick.value !== "prompt matrix"; });
  body.append(el("div", { class: "row" }, [el("span", { text: "Script" }), pick]), xyz, matrix);
}

function scriptPayload() {
  const name = $("#script-name").value;
  const on = (id) => $(`#${id}`).checked;
  if (name === "x/y/z plot") {
    const a = (axis) => [$(`#xyz-${axis}-type`).value, $(`#xyz-${axis}-values`).value, []];
    // A1111 v1.10 order: 3 axes, draw_legend, include_lone_images, include_sub_grids, no_fixed_seeds,
    // vary_seeds_x/y/z, margin_size, csv_mode (values are typed, so csv_mode is on)
    return { script_name: name, script_args: [...a("x"), ...a("y"), ...a("z"), on("xyz-legend"), on("xyz-lone"), on("xyz-subgrids"), false, false, false, false, 0, true] };
  }
  if (name === "prompt matrix") return { script_name: name, script_args: [on("matrix-start"), on("matrix-seeds"), "positive", "comma", 0] };
  return {};
}

/* ---------------------------------------------------------------- img2img input + mask painting */
const i2i = { dataURL: null, painting: false, last: null };

function i2iMode() {
  return $('input[name="i2i-mode"]:checked').value;
}

function img2imgPayload() {
  if (!i2i.dataURL) throw new Error("Add an init image first (drop one on the image box).");
  const mode = i2iMode();
  const body = { init_images: [i2i.dataURL], ...readKnobs($('[data-knobs="img2img-extra"]')) };
  if (mode === "inpaint") {
    const mask = exportMask();
    if (!mask) throw new Error("Paint the area to repaint on the image first.");
    Object.assign(body, readKnobs($('[data-knobs="inpaint"]')), { mask });
  } else if (mode === "outpaint") {
    Object.assign(body, readKnobs($('[data-knobs="outpaint"]')), { inpaint_full_res: false });
  }
  return body;
}

function setInitImage(dataURL) {
  i2i.dataURL = dataURL;
  const img = $("#init-preview");
  img.onload = () => {
    const c = $("#mask-canvas");
    c.width = img.naturalWidth;
    c.height = img.naturalHeight;
    c.getContext("2d").clearRect(0, 0, c.width, c.height);
    const lim = (state.info && state.info.limits) || {};
    const w = fitSize(img.naturalWidth, lim.max_width || 2048);
    const h = fitSize(img.naturalHeight, lim.max_height || 2048);
    setKnob("img2img", "width", w);
    setKnob("img2img", "height", h);
    touch("img2img", "width");
    touch("img2img", "height");
    const note = $("#init-size-note");
    note.hidden = w === img.naturalWidth && h === img.naturalHeight;
    note.textContent = `The image is ${img.naturalWidth}×${img.naturalHeight}; sizes must be multiples of 8 ` +
      `from 64 to ${lim.max_width || 2048}, so the output is ${w}×${h} and the image is resized to it (Resize mode below).`;
  };
  img.src = dataURL;
  $("#canvas-stack").hidden = false;
  $("#init-hint").hidden = true;
  $("#mask-tools").hidden = false;
}

function fitSize(px, max) {
  // the nearest allowed output size: a multiple of 8 within [64, max]
  return Math.min(Math.floor(max / 8) * 8, Math.max(64, Math.round(px / 8) * 8));
}

function clearInitImage() {
  i2i.dataURL = null;
  $("#init-size-note").hidden = true;
  $("#canvas-stack").hidden = true;
  $("#init-hint").hidden = false;
  $("#mask-tools").hidden = true;
}

function canvasPoint(ev) {
  const c = $("#mask-canvas");
  const r = c.getBoundingClientRect();
  return { x: ((ev.clientX - r.left) / r.width) * c.width, y: ((ev.clientY - r.top) / r.height) * c.height, scale: c.width / r.width };
}

function paint(ev) {
  const c = $("#mask-canvas");
  const ctx = c.getContext("2d");
  const p = canvasPoint(ev);
  ctx.strokeStyle = ctx.fillStyle = "rgb(255, 64, 64)";
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.lineWidth = Number($("#brush-size").value) * p.scale;
  ctx.beginPath();
  if (i2i.last) { ctx.moveTo(i2i.last.x, i2i.last.y); ctx.lineTo(p.x, p.y); ctx.stroke(); }
  else { ctx.arc(p.x, p.y, ctx.lineWidth / 2, 0, Math.PI * 2); ctx.fill(); }
  i2i.last = p;
}

function exportMask() {
  const c = $("#mask-canvas");
  if (!c.width) return null;
  const src = c.getContext("2d").getImageData(0, 0, c.width, c.height);
  const out = document.createElement("canvas");
  out.width = c.width;
  out.height = c.height;
  const octx = out.getContext("2d");
  const dst = octx.createImageData(c.width, c.height);
  let any = false;
  for (let i = 0; i < src.data.length; i += 4) {
    const on = src.data[i + 3] > 0;
    any = any || on;
    const v = on ? 255 : 0;
    dst.data[i] = dst.data[i + 1] = dst.data[i + 2] = v;
    dst.data[i + 3] = 255;
  }
  if (!any) return null;
  octx.putImageData(dst, 0, 0);
  return out.toDataURL("image/png");
}

function setupImg2img() {
  const drop = $("#init-drop");
  const file = $("#init-file");
  $("#init-browse").addEventListener("click", () => file.click());
  file.addEventListener("change", async () => { if (file.files[0]) setInitImage(await blobToDataURL(file.files[0])); });
  setupDrop(drop, async (f) => setInitImage(await blobToDataURL(f)));
  $("#mask-clear").addEventListener("click", () => { const c = $("#mask-canvas"); c.getContext("2d").clearRect(0, 0, c.width, c.height); });
  $("#init-remove").addEventListener("click", clearInitImage);
  const c = $("#mask-canvas");
  c.addEventListener("pointerdown", (ev) => { i2i.painting = true; i2i.last = null; c.setPointerCapture(ev.pointerId); paint(ev); });
  c.addEventListener("pointermove", (ev) => { if (i2i.painting) paint(ev); });
  const stop = () => { i2i.painting = false; i2i.last = null; };
  c.addEventListener("pointerup", stop);
  c.addEventListener("pointercancel", stop);
  const panel = $("#tab-img2img");
  const sync = () => { panel.dataset.mode = i2iMode(); };
  for (const r of $$('input[name="i2i-mode"]')) r.addEventListener("change", sync);
  sync();
}

function setupDrop(zone, onFile) {
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("drag"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("drag");
    const f = e.dataTransfer.files[0];
    if (f) onFile(f);
  });
}

/* ---------------------------------------------------------------- reuse / send */
function paramsFromInfotext(text) {
  // Client-side reader for the A1111 infotext layout: prompt, "Negative prompt: ...", "k: v, k: v" line.
  const lines = (text || "").trim().split("\n");
  let last = lines.length > 1 || /Steps: /.test(lines[0] || "") ? lines.pop() : "";
  if ((last.match(/\w[\w \-/]*: /g) || []).length < 3) { lines.push(last); last = ""; }
  const p = { Prompt: [], "Negative prompt": [] };
  let neg = false;
  for (const line of lines) {
    if (line.startsWith("Negative prompt:")) { neg = true; p["Negative prompt"].push(line.slice(16).trim()); }
    else (neg ? p["Negative prompt"] : p.Prompt).push(line);
  }
  p.Prompt = p.Prompt.join("\n");
  p["Negative prompt"] = p["Negative prompt"].join("\n");
  const re = /\s*([\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)/g;
  let m;
  while ((m = re.exec(last)) !== null) {
    let v = m[2].trim();
    if (v.startsWith('"')) { try { v = JSON.parse(v); } catch { /* keep raw */ } }
    p[m[1].trim()] = v;
    if (m[0] === "") break;
  }
  return p;
}

function applyParams(kind, p) {
  const panel = $(`#tab-${kind}`);
  $('[name="prompt"]', panel).value = p.Prompt || "";
  $('[name="negative_prompt"]', panel).value = p["Negative prompt"] || "";
  const size = String(p.Size || "").split("x");
  const map = {
    steps: p.Steps, sampler_name: p.Sampler, scheduler: p["Schedule type"], cfg_scale: p["CFG scale"], seed: p.Seed,
    width: size[0], height: size[1], clip_skip: p["Clip skip"],
  };
  for (const [k, v] of Object.entries(map)) if (setKnob(kind, k, v) && MODEL_DEFAULTED.includes(k)) touch(kind, k);
  if (kind === "img2img" && p["Denoising strength"]) setKnob("img2img-extra", "denoising_strength", p["Denoising strength"]);
  if (kind === "txt2img") {
    setKnob("hires", "enable_hr", !!p["Hires upscale"]);
    setKnob("hires", "hr_scale", p["Hires upscale"]);
    setKnob("hires", "hr_upscaler", p["Hires upscaler"]);
    setKnob("hires", "hr_second_pass_steps", p["Hires steps"]);
    if (p["Hires upscale"]) setKnob("hires", "denoising_strength", p["Denoising strength"]);
  }
}

function reuseInfotext(text) {
  applyParams("txt2img", paramsFromInfotext(text));
  showTab("txt2img");
}

async function sendToImg2img(url, infotext) {
  const data = url.startsWith("data:") ? url : await urlToDataURL(url);
  showTab("img2img");
  if (infotext) applyParams("img2img", paramsFromInfotext(infotext));
  setInitImage(data);
}

/* ---------------------------------------------------------------- gallery */
function galleryQuery() {
  const f = $("#gallery-filters");
  const params = new URLSearchParams();
  for (const name of ["q", "model", "sampler", "date_from", "date_to"]) {
    const v = f.elements[name].value.trim();
    if (v) params.set(name, v);
  }
  params.set("offset", state.gallery.offset);
  params.set("limit", state.gallery.limit);
  return params.toString();
}

async function loadGallery() {
  const grid = $("#gallery-grid");
  let page;
  try { page = await api("GET", `/api/history?${galleryQuery()}`); } catch (e) { grid.innerHTML = ""; grid.append(el("div", { class: "empty error", text: e.message })); return; }
  state.gallery.total = page.total;
  const f = $("#gallery-filters");
  fillSelect(f.elements.model, [["", "All models"], ...page.facets.models.map((m) => [m, m])], f.elements.model.value);
  fillSelect(f.elements.sampler, [["", "All samplers"], ...page.facets.samplers.map((m) => [m, m])], f.elements.sampler.value);
  grid.innerHTML = "";
  if (!page.items.length) grid.append(el("div", { class: "empty", text: "No images yet — generate some on the Text-to-image tab." }));
  for (const item of page.items) {
    const tile = el("div", { class: "tile", "data-id": item.id, title: item.prompt }, [
      el("img", { src: item.url, alt: item.prompt, loading: "lazy" }),
      el("div", { class: "cap", text: item.prompt || "(no prompt)" }),
    ]);
    tile.addEventListener("click", () => openLightbox(item));
    grid.append(tile);
  }
  const from = page.total ? page.offset + 1 : 0;
  $("#gallery-count").textContent = `${page.total} image${page.total === 1 ? "" : "s"}`;
  $("#gallery-page").textContent = `${from}–${page.offset + page.items.length} of ${page.total}`;
  $("#gallery-prev").disabled = page.offset === 0;
  $("#gallery-next").disabled = page.offset + page.items.length >= page.total;
}

let lightboxItem = null;
function openLightbox(item) {
  lightboxItem = item;
  $("#lightbox-img").src = item.url;
  $("#lightbox-text").textContent = item.infotext || "(no parameters stored)";
  const dl = $("#lightbox-download");
  dl.href = item.url;
  dl.setAttribute("download", item.path.split("/").pop());
  $("#lightbox").hidden = false;
}

function closeLightbox() {
  $("#lightbox").hidden = true;
  lightboxItem = null;
}

function setupGallery() {
  const f = $("#gallery-filters");
  let timer = null;
  const reload = () => { state.gallery.offset = 0; loadGallery(); };
  f.addEventListener("input", () => { clearTimeout(timer); timer = setTimeout(reload, 250); });
  $("#gallery-refresh").addEventListener("click", loadGallery);
  $("#gallery-prev").addEventListener("click", () => { state.gallery.offset = Math.max(0, state.gallery.offset - state.gallery.limit); loadGallery(); });
  $("#gallery-next").addEventListener("click", () => { state.gallery.offset += state.gallery.limit; loadGallery(); });
  $("#lightbox-close").addEventListener("click", closeLightbox);
  $("#lightbox").addEventListener("click", (e) => { if (e.target.id === "lightbox") closeLightbox(); });
  $("#lightbox-reuse").addEventListener("click", () => { const it = lightboxItem; closeLightbox(); reuseInfotext(it.infotext); });
  $("#lightbox-i2i").addEventListener("click", () => { const it = lightboxItem; closeLightbox(); sendToImg2img(it.url, it.infotext); });
  $("#lightbox-delete").addEventListener("click", async () => {
    const it = lightboxItem;
    if (!it || !confirm("Delete this image file and its gallery entry?")) return;
    try { await api("DELETE", `/api/history/${it.id}`); } catch (e) { alert(e.message); return; }
    closeLightbox();
    loadGallery();
  });
}

/* ---------------------------------------------------------------- PNG info */
const pngState = { dataURL: null, text: "" };

async function readPng(file) {
  const dataURL = await blobToDataURL(file);
  pngState.dataURL = dataURL;
  const img = $("#png-preview");
  img.src = dataURL;
  img.hidden = false;
  $("#png-hint").hidden = true;
  const table = $("#png-params");
  table.innerHTML = "";
  try {
    const res = await api("POST", "/api/png-info", { image: dataURL });
    pngState.text = res.info;
    $("#png-text").textContent = res.info || "This image carries no generation parameters.";
    for (const [k, v] of Object.entries(res.parameters)) {
      if (/-\d$/.test(k)) continue;
      table.append(el("tr", {}, [el("td", { text: k }), el("td", { text: String(v) })]));
    }
    for (const [k, v] of Object.entries(res.items || {})) table.append(el("tr", {}, [el("td", { text: k }), el("td", { text: String(v) })]));
  } catch (e) {
    pngState.text = "";
    $("#png-text").textContent = e.message;
  }
  $("#png-to-txt2img").disabled = !pngState.text;
  $("#png-to-img2img").disabled = false;
}

function setupPngInfo() {
  const file = $("#png-file");
  $("#png-browse").addEventListener("click", () => file.click());
  file.addEventListener("change", () => file.files[0] && readPng(file.files[0]));
  setupDrop($("#png-drop"), readPng);
  $("#png-to-txt2img").addEventListener("click", () => reuseInfotext(pngState.text));
  $("#png-to-img2img").addEventListener("click", () => sendToImg2img(pngState.dataURL, pngState.text));
}

/* ---------------------------------------------------------------- models, lab, queue */
async function loadModels() {
  let data;
  try { data = await api("GET", "/api/models"); } catch (e) { $("#models-error").hidden = false; $("#models-error").textContent = e.message; return; }
  $("#models-dir").textContent = data.models_dir ? `Models folder: ${data.models_dir} (Stable-diffusion/, Lora/, VAE/, embeddings/)` : "No models folder configured.";
  $("#models-error").hidden = !data.last_error;
  $("#models-error").textContent = data.last_error || "";
  const table = $("#models-table");
  table.innerHTML = "";
  table.append(el("tr", {}, [el("th", { text: "Checkpoint" }), el("th", { text: "Hash" }), el("th", { text: "Status" }), el("th", { text: "" })]));
  for (const m of data.models) {
    const badges = el("td");
    if (m.selected) badges.append(el("span", { class: "badge on", text: "selected" }));
    if (m.loaded) badges.append(el("span", { class: "badge on", text: "loaded" }));
    if (m.in_memory) badges.append(el("span", { class: "badge", text: "in memory" }));
    if (m.embedded) badges.append(el("span", { class: "badge", text: "embedded default" }));
    if (m.native_size) badges.append(el("span", { class: "badge", text: `${m.native_size}px` }));
    const btn = el("button", { type: "button", class: "ghost small", text: "Use" });
    btn.disabled = m.selected;
    btn.addEventListener("click", () => selectModel(m.title));
    table.append(el("tr", {}, [el("td", { text: m.title }), el("td", { class: "mono", text: m.hash || "—" }), badges, el("td", {}, [btn])]));
    if (m.embedded) table.append(el("tr", { class: "model-note" }, [el("td", { colspan: 4, class: "muted", text: EMBEDDED_NOTE })]));
  }
  if (!data.models.length) table.append(el("tr", {}, [el("td", { colspan: 4, class: "muted", text: "No checkpoints found; the embedded default model is used." })]));
  networkCards(data);
  const sel = $("#model-select");
  const selected = data.models.find((m) => m.selected) || {};
  fillSelect(sel, data.models.map((m) => [m.title, m.title]), selected.title);
  if (!data.models.length) fillSelect(sel, [["", "no model"]], "");
}

/* Extra-network cards (A1111's extra networks page): a click puts the LoRA tag or the embedding's
   name into the prompt of the last generation tab used; a VAE card sets the sd_vae option. */
let promptTarget = "txt2img";

function insertIntoPrompt(text) {
  const area = $(`#${promptTarget}-prompt`);
  const sep = area.value && !/\s$/.test(area.value) ? " " : "";
  area.value = area.value + sep + text;
  area.dispatchEvent(new Event("input", { bubbles: true }));
}

function networkCards(data) {
  const cards = (id, items, onClick) => {
    const box = $(id);
    box.innerHTML = "";
    for (const it of items) {
      const card = el("button", { type: "button", class: "net-card" + (it.on ? " on" : ""), title: it.title, "data-name": it.name, text: it.label });
      card.addEventListener("click", () => onClick(it));
      box.append(card);
    }
    if (!items.length) box.append(el("span", { class: "muted", text: "none" }));
  };
  cards("#lora-list", data.loras.map((l) => ({ name: l.name, label: l.alias !== l.name ? `${l.name} (${l.alias})` : l.name, title: `insert <lora:${l.name}:1> into the ${promptTarget} prompt` })),
    (it) => insertIntoPrompt(`<lora:${it.name}:1>`));
  cards("#emb-list", data.embeddings.map((e) => ({ name: e, label: e, title: `insert ${e} into the ${promptTarget} prompt` })),
    (it) => insertIntoPrompt(it.name));
  const current = data.sd_vae || "Automatic";
  const vaes = [["Automatic", "Automatic (NAME.vae.* beside the checkpoint)"], ["None", "None (the checkpoint's own)"], ...data.vaes.map((v) => [v.model_name, v.model_name])];
  cards("#vae-list", vaes.map(([name, label]) => ({ name, label, on: name === current, title: `use ${name} as the VAE for the next jobs` })),
    async (it) => {
      try { await api("POST", "/sdapi/v1/options", { sd_vae: it.name }); } catch (e) { alert(e.message); }
      loadModels();
    });
}

/* Model defaults: the knobs a request may leave out take the model's values on the server (native size,
   the steps/sampler/CFG its sdstudio.json declares). The form shows the same values, so a prompt and
   seed give the same image here, in the CLI and through the API. A knob the user set is left alone,
   except Width/Height, which follow a newly selected model's native size. */
const MODEL_DEFAULTED = ["width", "height", "steps", "sampler_name", "cfg_scale"];

function knobOf(group, name) {
  const box = $(`[data-knobs="${group}"]`);
  return box && $$(".knob", box).find((k) => k.spec.name === name);
}

function touch(group, name) {
  const knob = knobOf(group, name);
  if (knob) knob.dataset.touched = "1";
}

async function loadModelDefaults(newModel) {
  let d;
  try { d = await api("GET", "/api/models/defaults"); } catch { return; }
  const values = { width: d.size, height: d.size, steps: d.steps, sampler_name: d.sampler, cfg_scale: d.cfg_scale };
  for (const group of ["txt2img", "img2img"]) {
    for (const name of MODEL_DEFAULTED) {
      const knob = knobOf(group, name);
      const size = name === "width" || name === "height";
      const follow = newModel && size && !(group === "img2img" && i2i.dataURL); // an init image keeps its size
      if (!knob || (knob.dataset.touched && !follow)) continue;
      const value = values[name] ?? (size ? null : knob.spec.value); // undeclared: the form's own default
      if (value === null || value === undefined) continue;
      setKnob(group, name, value);
      if (follow) delete knob.dataset.touched;
    }
  }
  document.body.dataset.defaults = JSON.stringify(d); // for tests and the curious
}

const EMBEDDED_NOTE = "The embedded model draws 64×64 emoji-style pictures. It was trained from scratch on ~3,600 " +
  "Noto emoji and has largely memorised them: for a caption it knows (\"cat face\", \"red heart\", \"grinning face\") " +
  "different seeds give almost the same picture, and unseen captions give loose mixtures. It is for learning and " +
  "testing; put a real checkpoint in models/Stable-diffusion/ for variety.";

async function selectModel(title) {
  try { await api("POST", "/api/models/select", { name: title }); } catch (e) { alert(e.message); }
  await loadModelDefaults(true);
  loadModels();
}

async function loadLab() {
  const body = $("#lab-body");
  if (body.dataset.ready) return;
  try {
    await api("GET", "/api/lab");
  } catch (e) {
    body.innerHTML = "";
    body.append(el("h3", { text: "Lab" }), el("p", { class: "muted", text: e.status === 404 ? "The lab routes are not mounted on this server." : e.message }));
    return;
  }
  body.innerHTML = "";
  body.dataset.ready = "1";
  // Build and Demolish each have their own output area, under their own controls.
  const out = el("div", { class: "lab-out", id: "lab-out" });
  const status = el("p", { class: "muted lab-status", id: "lab-status", text: "" });
  const demolishOut = el("div", { class: "lab-out", id: "lab-demolish-out" });
  const demolishStatus = el("p", { class: "muted lab-status", id: "lab-demolish-status", text: "" });
  // Build: the reverse process x_T -> x_0 with the model's predicted x_0 at every step.
  const prompt = el("input", { type: "text", id: "lab-prompt", value: "cat face", "aria-label": "Lab prompt" });
  const steps = el("input", { type: "number", id: "lab-steps", min: 1, max: 50, value: 10, "aria-label": "Steps" });
  const sampler = el("select", { id: "lab-sampler", "aria-label": "Sampler" });
  for (const name of state.samplers.map((x) => (Array.isArray(x) ? x[0] : x))) sampler.append(el("option", { value: name, text: name }));
  sampler.value = "Euler";
  const seed = el("input", { type: "number", id: "lab-seed", value: 1, "aria-label": "Seed" });
  const buildBtn = el("button", { type: "button", class: "primary", id: "lab-build", text: "Build" });
  // Demolish: the forward process q(x_t|x_0) of an uploaded image (a styled file picker).
  const file = el("input", { type: "file", accept: "image/*", id: "lab-image", class: "visually-hidden", "aria-label": "Image to demolish" });
  const fileName = el("span", { class: "muted file-name", id: "lab-image-name", text: "no image chosen" });
  const picker = el("label", { class: "button file-pick", for: "lab-image" }, [el("span", { text: "Choose image…" }), file]);
  file.addEventListener("change", () => { fileName.textContent = file.files.length ? file.files[0].name : "no image chosen"; });
  const ts = el("input", { type: "text", id: "lab-timesteps", value: "0,50,100,200,300,500,700,999", "aria-label": "Timesteps" });
  const demolishBtn = el("button", { type: "button", id: "lab-demolish", text: "Demolish" });
  body.append(
    el("section", { class: "lab-section", id: "lab-build-section" }, [
      el("h3", { text: "Build: the reverse process" }),
      el("p", { class: "muted", text: "Start from pure noise x_T and denoise step by step; the bottom row is the model's guess of the final image x_0 at each step." }),
      el("div", { class: "row wrap" }, [prompt, el("span", { text: "steps" }), steps, sampler, el("span", { text: "seed" }), seed, buildBtn]),
      status,
      out,
    ]),
    el("section", { class: "lab-section", id: "lab-demolish-section" }, [
      el("h3", { text: "Demolish: the forward process" }),
      el("p", { class: "muted", text: "Add Gaussian noise to an image at increasing timesteps t, as DDPM training does (one noise draw for every t)." }),
      el("div", { class: "row wrap" }, [picker, fileName, ts, demolishBtn]),
      demolishStatus,
      demolishOut,
    ]),
  );
  const show = (target, label, data) => {
    target.innerHTML = "";
    target.append(el("img", { src: `data:image/png;base64,${data.image}`, alt: "lab result", class: "lab-picture" }));
    label.textContent = data.info && data.info.seed !== undefined ? `seed ${data.info.seed}, ${data.info.model || ""}` : "";
  };
  const run = async (button, target, label, path, payload) => {
    button.disabled = true;
    label.textContent = "working…";
    try { show(target, label, await api("POST", path, await payload())); } catch (e) { label.textContent = e.message; }
    finally { button.disabled = false; }
  };
  buildBtn.addEventListener("click", () => run(buildBtn, out, status, "/api/lab/build", async () => ({
    prompt: prompt.value, steps: Number(steps.value), sampler_name: sampler.value, seed: Number(seed.value),
  })));
  demolishBtn.addEventListener("click", () => run(demolishBtn, demolishOut, demolishStatus, "/api/lab/demolish", async () => {
    if (!file.files.length) throw new Error("choose an image first");
    return { image: await blobToDataURL(file.files[0]), timesteps: ts.value };
  }));
  setupStudies(body);
}

/* Prompt studies: queue a study job, follow its progress, list finished reports. */
function setupStudies(body) {
  const kind = el("select", { id: "study-kind", "aria-label": "Study" });
  for (const k of ["word-order", "separators", "punctuation", "custom"]) kind.append(el("option", { value: k, text: k }));
  const a = el("input", { type: "text", id: "study-a", value: "girl", "aria-label": "Concept a" });
  const b = el("input", { type: "text", id: "study-b", value: "boy", "aria-label": "Concept b" });
  const seeds = el("input", { type: "number", id: "study-seeds", min: 2, max: 256, value: 32, "aria-label": "Seeds" });
  const steps = el("input", { type: "number", id: "study-steps", min: 1, max: 50, value: 10, "aria-label": "Study steps" });
  const variants = el("textarea", { id: "study-variants", rows: 3, placeholder: "custom: one prompt per line (the first is the base)", "aria-label": "Variants" });
  const start = el("button", { type: "button", class: "primary", id: "study-start", text: "Run study" });
  const status = el("p", { class: "muted", id: "study-status", text: "" });
  const list = el("ul", { id: "study-list" });
  body.append(
    el("h3", { text: "Prompt study" }),
    el("p", { class: "muted", text: "Every variant at the same seeds; image change vs the seed-to-seed noise floor, concept dominance and attention, with 95% bootstrap CIs. The report opens offline." }),
    el("div", { class: "row wrap study-form" }, [kind, el("span", { text: "a" }), a, el("span", { text: "b" }), b, el("span", { text: "seeds" }), seeds, el("span", { text: "steps" }), steps]),
    variants, el("div", { class: "row" }, [start]), status, list,
  );
  // the variants box belongs to the custom study only, and sits above the Run button
  const syncKind = () => { variants.hidden = kind.value !== "custom"; };
  kind.addEventListener("change", syncKind);
  syncKind();
  const refresh = async () => {
    const data = await api("GET", "/api/lab/studies");
    list.innerHTML = "";
    for (const st of data.studies) {
      const label = `${st.kind} · ${st.state}${st.variants ? " · " + st.variants.join(" | ") : ""}`;
      list.append(el("li", {}, st.state === "done" ? [el("a", { href: st.report, target: "_blank", text: label })] : [el("span", { text: label })]));
    }
  };
  start.addEventListener("click", async () => {
    const payload = { kind: kind.value, a: a.value, b: b.value, seeds: Number(seeds.value), steps: Number(steps.value) };
    if (kind.value === "custom") { payload.variants = variants.value.split("\n").map((v) => v.trim()).filter(Boolean); payload.concepts = Boolean(a.value && b.value); }
    start.disabled = true;
    try {
      const links = await api("POST", "/api/lab/study", payload);
      for (;;) {
        const job = await api("GET", links.job);
        status.textContent = `${job.state} ${Math.round((job.progress || 0) * 100)}%`;
        if (["done", "failed", "cancelled"].includes(job.state)) { if (job.error) status.textContent += `: ${job.error}`; break; }
        await new Promise((r) => setTimeout(r, 1000));
      }
      await refresh();
    } catch (e) { status.textContent = e.message; }
    finally { start.disabled = false; }
  });
  refresh().catch(() => {});
}

async function refreshQueue() {
  try {
    const data = await api("GET", "/api/jobs?limit=1");
    const parts = [];
    if (data.running) parts.push("1 running");
    if (data.queued) parts.push(`${data.queued} queued`);
    $("#queue-status").textContent = parts.length ? parts.join(" · ") : "idle";
  } catch { $("#queue-status").textContent = "offline"; }
}

/* ---------------------------------------------------------------- start-up */
async function init() {
  try {
    const [info, samplers, schedulers] = await Promise.all([api("GET", "/api/info"), api("GET", "/sdapi/v1/samplers"), api("GET", "/sdapi/v1/schedulers")]);
    state.info = info;
    state.samplers = samplers.map((s) => s.name);
    state.schedulers = schedulers.map((s) => s.label);
    state.upscalers = info.upscalers.filter((u) => u !== "None");
  } catch (e) {
    document.body.prepend(el("div", { class: "message error", text: `Cannot reach the server API: ${e.message}` }));
  }
  renderKnobs();
  for (const group of ["txt2img", "img2img"]) {
    for (const name of MODEL_DEFAULTED) {
      const knob = knobOf(group, name);
      for (const ev of ["input", "change"]) knob.addEventListener(ev, () => touch(group, name));
    }
  }
  outputs.txt2img = new Output("txt2img");
  outputs.img2img = new Output("img2img");
  for (const b of $$(".tabs button")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("#model-select").addEventListener("change", (e) => e.target.value && selectModel(e.target.value));
  await loadModelDefaults(false);
  $("#models-refresh").addEventListener("click", async () => { await api("POST", "/api/models/refresh"); loadModels(); });
  setupImg2img();
  setupScripts();
  setupGallery();
  setupPngInfo();
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "Enter") {
      const tab = activeTab();
      if (tab === "txt2img" || tab === "img2img") { e.preventDefault(); generate(tab); }
    }
    if (e.key === "Escape" && !$("#lightbox").hidden) closeLightbox();
  });
  loadModels();
  refreshQueue();
  setInterval(() => { if (!document.hidden) refreshQueue(); }, 3000);
  // a hash names a tab only if it is one: any other (hostile, garbled, an old link) is ignored, never
  // parsed as a selector (that threw and stopped the start-up)
  let initial = location.hash.slice(1);
  try { initial = decodeURIComponent(initial); } catch { /* a malformed %-escape: not a tab name */ }
  if ($$(".tabs button").some((b) => b.dataset.tab === initial)) showTab(initial);
  document.body.dataset.ready = "1";
}

init();
