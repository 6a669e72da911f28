/// <reference lib="dom" />
/// <reference types="@webgpu/types" />
/**
 * The page (`web/index.html`): he2gene in a browser tab, on the client's GPU. Nothing is uploaded.
 *
 * - Interactive: pick or drop a checkpoint (`.pt` / `.safetensors`) and an H&E image (cut into square
 *   tiles, each predicted as a patch) or a folder of patches `{section}_{x}_{y}.{tif,png,jpg}`; the page
 *   predicts with progress, draws the gene map and the tumour map for the gene typed, and offers the CSVs
 *   and `predictions.npz` for download.
 * - URL contract, for automation and tests:
 *   `index.html?weights=URL&images=URL1,URL2&tta=single|tta|grid|grid_tta[&target_genes=URL&aux_genes=URL]
 *   [&batch_size=N]` fetches the files, predicts the patches (names: the files' stems, as `predict-patches`),
 *   sets `window.he2gene.result = { names, target_genes, target, aux_genes, aux, tumor_prob }` (numbers as
 *   arrays, `target[i]` the i-th patch's row; the interactive page sets it too) and a title ending in
 *   `done`, or `error: …`.
 *   `index.html?selftest` (`?selftest=quick`: the CLI's `--quick`) runs the kernel self-test and sets
 *   `window.he2gene.selftest = { passed, failed, adapter, failures }`.
 *   `index.html?tune[=quick][&only=OP,OP]` runs `he2gene tune` on this browser's adapter (`only`: ops whose
 *   name starts with one of these, as the CLI's `--only`) and stores the table in `localStorage`, keyed by
 *   the adapter and he2gene's version; every later page on this adapter predicts with it.
 *   `window.he2gene.tuning` says which table the page uses (`source`: `stored`, `tuned` or `none`).
 *
 * @module
 */
import { createEngine, type Engine } from "../engine/engine.ts";
import { runSelftest } from "../ops/selftest.ts";
import {
  patchCsvs,
  type PatchImage,
  patchNpz,
  type PatchPredictions,
  predictPatches,
} from "../pipeline/predict_patches.ts";
import { type Tta, TTAS } from "../pipeline/views.ts";
import { decodeImage, type RgbImage } from "../slide/decode.ts";
import { decodeNpy } from "../slide/npy.ts";
import { encodeRgbTiff } from "../slide/tiff_write.ts";
import { viridis, zScores } from "../slide/png.ts";
import { tissueTiles } from "../slide/tissue.ts";
import { loadCheckpoint } from "../pipeline/checkpoint.ts";
import { parseTuning, runTune, tuningStorageKey } from "../model/tune_cache.ts";
import { useTuning } from "../kernels/tuning.ts";
import { nothingToTune, unknownTuneOp } from "../model/tune.ts";

/** What the page exposes on `window.he2gene` for automation. */
export interface PageState {
  status: string;
  adapter?: string;
  /** The device's limits that the browser's defaults cap (128 MiB, 16 KiB), and why when it fell back. */
  limits?: {
    maxStorageBufferBindingSize: number;
    maxBufferSize: number;
    maxComputeWorkgroupStorageSize: number;
    fallback?: string;
  };
  result?: {
    names: string[];
    target_genes: string[];
    target: number[][];
    aux_genes: string[];
    aux: number[][];
    tumor_prob: number[];
  };
  /** The tuning table the page's engine uses: how many choices, and where it came from. */
  tuning?: { source: "stored" | "tuned" | "none"; entries: number; cases?: number; warning?: string };
  selftest?: {
    passed: number;
    failed: number;
    adapter: string;
    failures: { op: string; variant: string; detail: string }[];
  };
  error?: string;
}

const state: PageState = { status: "loading" };
(globalThis as unknown as { he2gene: PageState }).he2gene = state;

let enginePromise: Promise<Engine> | null = null;
/** One engine for the page, created on first use. */
function engine(): Promise<Engine> {
  enginePromise ??= createEngine().then((e) => {
    state.adapter = e.adapterInfo.name;
    const fb = e.adapterInfo.limitsFallback;
    state.limits = {
      maxStorageBufferBindingSize: e.limits.maxStorageBufferBindingSize,
      maxBufferSize: e.limits.maxBufferSize,
      maxComputeWorkgroupStorageSize: e.limits.maxComputeWorkgroupStorageSize,
      ...(fb ? { fallback: fb } : {}),
    };
    say(
      `WebGPU adapter: ${e.adapterInfo.name}${e.adapterInfo.software ? " (software)" : ""}` +
        (fb ? ` — ${fb}` : ""),
    );
    state.tuning = loadPageTuning(e);
    return e;
  });
  return enginePromise;
}

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T | null;

/** A line in the page's log (and the console, for headless runs). */
function say(line: string): void {
  console.log(line);
  const log = $("log");
  if (log) log.textContent += line + "\n";
}

function setStatus(s: string): void {
  state.status = s;
  const el = $("status");
  if (el) el.textContent = s;
}

/** A patch's name in the outputs: its file name up to the first `.` (as `predict-patches`). */
export function patchName(file: string): string {
  return (file.split("/").pop() ?? file).split(".")[0];
}

/** A gene list as the CLI's `--target-genes` takes it: one name a line, or a `.npy` of strings. */
export function parseGeneList(bytes: Uint8Array, name: string): string[] {
  if (name.toLowerCase().endsWith(".npy")) {
    const a = decodeNpy(bytes, name);
    if (a.dtype !== "U") throw new Error(`Cannot read ${name}: a gene list must hold strings`);
    return (a.data as string[]).map((s) => s.trim());
  }
  const names = new TextDecoder().decode(bytes).split(/\r?\n/).map((s) => s.trim()).filter((s) => s);
  if (names.length === 0) throw new Error(`Cannot use ${name}: it lists no genes (it is empty)`);
  return names;
}

async function fetchBytes(url: string): Promise<Uint8Array> {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`Cannot fetch ${url}: HTTP ${r.status} ${r.statusText}`);
  return new Uint8Array(await r.arrayBuffer());
}

function rows(a: Float32Array, n: number): number[][] {
  const out: number[][] = [];
  for (let i = 0; i < a.length; i += n) out.push(Array.from(a.subarray(i, i + n)));
  return out;
}

/** The predictions, checkpoint and gene names of one run: what the inputs give. */
interface RunInputs {
  weights: { bytes: Uint8Array; name: string };
  images: PatchImage[];
  tta: Tta;
  batchSize: number;
  targetGenes?: string[];
  auxGenes?: string[];
  onProgress?: (done: number, total: number) => void;
}

async function predict(o: RunInputs): Promise<PatchPredictions> {
  const e = await engine();
  const t0 = performance.now();
  const ck = loadCheckpoint(e, o.weights.bytes, o.weights.name);
  say(
    `${o.weights.name}: ${ck.format}, backbone ${ck.model.config.backbone.name}, ` +
      `${ck.model.config.targetGenes} target + ${ck.model.config.auxGenes} aux genes`,
  );
  try {
    const p = await predictPatches(e, ck.model, o.images, {
      tta: o.tta,
      batchSize: o.batchSize,
      targetGenes: o.targetGenes ?? ck.targetGenes,
      auxGenes: o.auxGenes ?? ck.auxGenes,
      onProgress: o.onProgress,
      onWarning: (_, m) => say(`warning: ${m}`),
    });
    say(`${p.names.length} patches (${o.tta}) in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    return p;
  } finally {
    ck.model.dispose();
  }
}

function parseTta(v: string | null): Tta {
  const tta = (v ?? "tta") as Tta;
  if (!(TTAS as readonly string[]).includes(tta)) {
    throw new RangeError(`Cannot use tta=${v}: valid values are ${TTAS.join(", ")}`);
  }
  return tta;
}

/** `?weights=…&images=…`: predict the patches at the URLs and publish the result. */
async function runFromUrl(q: URLSearchParams): Promise<void> {
  const weightsUrl = q.get("weights")!;
  const urls = (q.get("images") ?? "").split(",").filter((u) => u);
  if (urls.length === 0) throw new Error("Cannot predict: images= names no image URL");
  const tta = parseTta(q.get("tta"));
  const batchSize = Number(q.get("batch_size") ?? 4);
  if (!(Number.isInteger(batchSize) && batchSize >= 1)) {
    throw new RangeError(`Cannot use batch_size=${q.get("batch_size")}: expected an integer ≥ 1`);
  }
  const genes = async (key: string) => {
    const u = q.get(key);
    return u ? parseGeneList(await fetchBytes(u), u) : undefined;
  };
  setStatus("fetching");
  const images: PatchImage[] = urls.map((u) => ({
    name: patchName(fileName(u)),
    bytes: () => fetchBytes(u),
  }));
  const p = await predict({
    weights: { bytes: await fetchBytes(weightsUrl), name: fileName(weightsUrl) },
    images,
    tta,
    batchSize,
    targetGenes: await genes("target_genes"),
    auxGenes: await genes("aux_genes"),
    onProgress: (d, t) => setStatus(`predicting ${d}/${t}`),
  });
  show({ p, spots: gridSpots(p.names), image: null });
}

/** The last part of a URL's path (`…/model_base.pt?x=1` → `model_base.pt`). */
function fileName(url: string): string {
  return decodeURIComponent(new URL(url, location.href).pathname.split("/").pop() ?? url);
}

/**
 * This adapter's tuning table from `localStorage` (made by `?tune`), applied to `e`; a stored table that
 * cannot apply is reported and the built-in defaults stay.
 */
function loadPageTuning(e: Engine): NonNullable<PageState["tuning"]> {
  let text: string | null = null;
  try {
    text = globalThis.localStorage?.getItem(tuningStorageKey(e)) ?? null;
  } catch {
    // Storage disabled (a sandboxed frame): no table.
  }
  if (text === null) return { source: "none", entries: 0 };
  const t = parseTuning(e, text);
  if (typeof t === "string") {
    const warning = `the stored tuning table ${t}; using built-in defaults`;
    say(`warning: ${warning}`);
    return { source: "none", entries: 0, warning };
  }
  useTuning(e, t);
  const entries = Object.keys(t.entries).length;
  say(`kernel variants: tuned table (${entries} choices, ${t.created})`);
  return { source: "stored", entries };
}

/** `?tune[=quick][&only=…]`: `he2gene tune` on this browser's adapter, the table kept in `localStorage`. */
async function runTunePage(quick: boolean, only: string[] | undefined): Promise<void> {
  const unknown = unknownTuneOp(only);
  if (unknown) throw new Error(`Cannot tune: only= names an ${unknown}`);
  const e = await engine();
  const o = { quick, ...(only ? { only } : {}) };
  const nothing = nothingToTune(e, o);
  if (nothing) throw new Error(`Cannot tune: only= ${nothing}`);
  const { tuned, total, ...table } = await runTune(e, o, (done, n, r) => {
    setStatus(`tune ${done}/${n}: ${r.op} ${r.shapeClass} → ${r.chosen}`);
  });
  const entries = Object.keys(table.entries).length;
  try {
    localStorage.setItem(tuningStorageKey(e), JSON.stringify(table));
  } catch (err) {
    throw new Error(`Cannot store the tuning table in localStorage: ${(err as Error).message}`);
  }
  useTuning(e, table);
  state.tuning = { source: "tuned", entries, cases: tuned };
  say(
    `tune: ${tuned} of ${total} cases, ${entries} choices differ from the defaults (${e.adapterInfo.name})`,
  );
}

/** `?selftest[=quick]`: every kernel against its CPU reference on this browser's adapter. */
async function runSelftestPage(quick: boolean): Promise<void> {
  const e = await engine();
  const results = await runSelftest(e, {
    quick,
    onStart: (c) => setStatus(`selftest ${c.index + 1}/${c.total}: ${c.op} ${c.variant}`),
  });
  const failures = results.filter((r) => !r.ok);
  for (const r of failures) say(`FAIL ${r.op} ${r.variant} ${r.shape}: ${r.detail ?? ""}`);
  state.selftest = {
    passed: results.length - failures.length,
    failed: failures.length,
    adapter: e.adapterInfo.name,
    failures: failures.map((r) => ({ op: r.op, variant: r.variant, detail: r.detail ?? "" })),
  };
  say(`selftest: ${state.selftest.passed} passed, ${state.selftest.failed} failed (${e.adapterInfo.name})`);
}

// ---------------------------------------------------------------------------------------------------------
// Maps

/** A spot on the map: its square in map coordinates (grid cells for patches, pixels for image tiles). */
interface Spot {
  x: number;
  y: number;
  side: number;
}

/** Patches `{section}_{x}_{y}` on their array grid; names that do not parse go on a row below. */
export function gridSpots(names: string[]): Spot[] {
  let extra = 0;
  const parsed = names.map((n) => /_(\d+)_(\d+)$/.exec(n));
  const maxY = Math.max(0, ...parsed.map((m) => (m ? Number(m[2]) : 0)));
  return parsed.map((m) =>
    m ? { x: Number(m[1]), y: Number(m[2]), side: 1 } : { x: extra++, y: maxY + 2, side: 1 }
  );
}

interface Shown {
  p: PatchPredictions;
  spots: Spot[];
  /** The image the tiles came from (drawn under the map), or null for patches. */
  image: RgbImage | null;
}
let shown: Shown | null = null;

/** Publish the predictions on `window.he2gene.result` and draw them. */
function show(s: Shown): void {
  shown = s;
  const p = s.p;
  state.result = {
    names: p.names,
    target_genes: p.targetGenes,
    target: rows(p.target, p.targetGenes.length),
    aux_genes: p.auxGenes,
    aux: rows(p.aux, p.auxGenes.length),
    tumor_prob: Array.from(p.tumorProb),
  };
  const gene = $<HTMLInputElement>("gene");
  if (gene && !gene.value) gene.value = s.p.targetGenes[0] ?? "";
  const list = $<HTMLDataListElement>("genes");
  if (list) {
    list.replaceChildren(
      ...[...s.p.targetGenes, ...s.p.auxGenes].slice(0, 2000).map((g) => {
        const o = document.createElement("option");
        o.value = g;
        return o;
      }),
    );
  }
  const dl = $("downloads");
  if (dl) dl.hidden = false;
  drawMaps();
}

/** The values of `gene` (target genes first, then aux), or null when the model has no such gene. */
function geneValues(p: PatchPredictions, gene: string): Float32Array | null {
  const g = gene.trim().toUpperCase();
  const pick = (genes: string[], a: Float32Array) => {
    const j = genes.findIndex((x) => x.toUpperCase() === g);
    if (j < 0) return null;
    const n = genes.length, out = new Float32Array(p.names.length);
    for (let i = 0; i < out.length; i++) out[i] = a[i * n + j];
    return out;
  };
  return pick(p.targetGenes, p.target) ?? pick(p.auxGenes, p.aux);
}

function drawMaps(): void {
  if (!shown) return;
  const gene = $<HTMLInputElement>("gene")?.value ?? "";
  const values = geneValues(shown.p, gene);
  const note = $("gene-note");
  if (note) note.textContent = values ? "" : `no gene "${gene}" in this model's target or aux genes`;
  const tumor = Array.from(shown.p.tumorProb, (v) => v > 0.5);
  if (values) {
    drawMap($<HTMLCanvasElement>("gene-map"), shown, zScores(values), {
      title: `${gene} (red outline: tumour p > 0.5)`,
      clip: 3,
      tumor,
    });
  }
  drawMap($<HTMLCanvasElement>("tumor-map"), shown, shown.p.tumorProb, {
    title: "tumour probability",
    clip: 0,
  });
}

/**
 * One map on `canvas`: the image (when any) with the spots' squares over it, coloured through viridis:
 * z-scores clipped at ±`clip` (clip > 0), or values in [0, 1] (clip 0), with a colour bar under it; spots
 * flagged in `tumor` get a red outline.
 */
function drawMap(
  canvas: HTMLCanvasElement | null,
  s: Shown,
  values: ArrayLike<number>,
  o: { title: string; clip: number; tumor?: boolean[] },
): void {
  const { title, clip } = o;
  if (!canvas) return;
  const x0 = Math.min(...s.spots.map((p) => p.x)), y0 = Math.min(...s.spots.map((p) => p.y));
  const x1 = Math.max(...s.spots.map((p) => p.x + p.side)),
    y1 = Math.max(...s.spots.map((p) => p.y + p.side));
  const W = s.image ? s.image.width : x1 - x0, H = s.image ? s.image.height : y1 - y0;
  const ox = s.image ? 0 : x0, oy = s.image ? 0 : y0;
  const scale = 480 / Math.max(W, H);
  canvas.width = Math.max(1, Math.round(W * scale));
  const mapH = Math.max(1, Math.round(H * scale));
  canvas.height = mapH + 22 + 30;
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.fillStyle = "#000";
  ctx.font = "14px sans-serif";
  ctx.fillText(title, 4, 16);
  ctx.translate(0, 22);
  ctx.save();
  ctx.beginPath();
  ctx.rect(0, 0, canvas.width, mapH); // edge tiles reach past the image
  ctx.clip();
  if (s.image) {
    const img = s.image, rgba = new Uint8ClampedArray(img.width * img.height * 4);
    for (let i = 0, j = 0; i < img.data.length; i += 3, j += 4) {
      rgba[j] = img.data[i];
      rgba[j + 1] = img.data[i + 1];
      rgba[j + 2] = img.data[i + 2];
      rgba[j + 3] = 255;
    }
    const c = document.createElement("canvas");
    c.width = img.width;
    c.height = img.height;
    c.getContext("2d")!.putImageData(new ImageData(rgba, img.width, img.height), 0, 0);
    ctx.drawImage(c, 0, 0, canvas.width, mapH);
    ctx.globalAlpha = 0.6;
  }
  s.spots.forEach((p, i) => {
    const v = values[i];
    const t = clip > 0 ? (Math.max(-clip, Math.min(clip, v)) + clip) / (2 * clip) : v;
    const [r, g, b] = Number.isFinite(t) ? viridis(t) : [190, 190, 190];
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    const gap = s.image ? 0 : 0.08;
    ctx.fillRect(
      (p.x - ox + gap) * scale,
      (p.y - oy + gap) * scale,
      (p.side - 2 * gap) * scale,
      (p.side - 2 * gap) * scale,
    );
  });
  ctx.globalAlpha = 1;
  ctx.strokeStyle = "rgb(228,26,28)";
  ctx.lineWidth = 2;
  s.spots.forEach((p, i) => {
    if (o.tumor?.[i]) {
      ctx.strokeRect((p.x - ox) * scale + 1, (p.y - oy) * scale + 1, p.side * scale - 2, p.side * scale - 2);
    }
  });
  ctx.restore();
  // The colour bar: viridis from the low end to the high end, labelled.
  const barY = mapH + 6, barW = Math.min(240, canvas.width - 80);
  for (let i = 0; i < barW; i++) {
    const [r, g, b] = viridis(i / (barW - 1));
    ctx.fillStyle = `rgb(${r},${g},${b})`;
    ctx.fillRect(30 + i, barY, 1, 10);
  }
  ctx.fillStyle = "#000";
  ctx.font = "12px sans-serif";
  ctx.fillText(clip > 0 ? `−${clip}` : "0", 4, barY + 10);
  ctx.fillText(clip > 0 ? `+${clip}${clip > 0 ? " (z-score)" : ""}` : "1", 36 + barW, barY + 10);
  ctx.setTransform(1, 0, 0, 1, 0, 0);
}

// ---------------------------------------------------------------------------------------------------------
// Interactive use

const PATCH_EXT = /\.(tiff?|png|jpe?g)$/i;
const CHECKPOINT_EXT = /\.(pt|pth|safetensors|bin)$/i;

let checkpointFile: File | null = null;
let imageFiles: File[] = [];

function takeFiles(files: File[]): void {
  for (const f of files) if (CHECKPOINT_EXT.test(f.name)) checkpointFile = f;
  const images = files.filter((f) => PATCH_EXT.test(f.name) || /\.svs$/i.test(f.name));
  if (images.length) imageFiles = images.sort((a, b) => a.name.localeCompare(b.name));
  const el = $("chosen");
  if (el) {
    el.textContent = `checkpoint: ${checkpointFile?.name ?? "none"}; images: ${
      imageFiles.length === 0
        ? "none"
        : imageFiles.length === 1
        ? imageFiles[0].name
        : `${imageFiles.length} patches`
    }`;
  }
  const go = $<HTMLButtonElement>("predict");
  if (go) go.disabled = !(checkpointFile && imageFiles.length);
}

/** Every file under a dropped folder (Chrome's `webkitGetAsEntry`). */
async function droppedFiles(items: DataTransferItemList): Promise<File[]> {
  const out: File[] = [];
  const walk = async (entry: FileSystemEntry): Promise<void> => {
    if (entry.isFile) {
      out.push(await new Promise<File>((ok, fail) => (entry as FileSystemFileEntry).file(ok, fail)));
    } else if (entry.isDirectory) {
      const reader = (entry as FileSystemDirectoryEntry).createReader();
      while (true) {
        const batch = await new Promise<FileSystemEntry[]>((ok, fail) => reader.readEntries(ok, fail));
        if (batch.length === 0) break;
        for (const e of batch) await walk(e);
      }
    }
  };
  for (const it of [...items]) {
    const entry = it.webkitGetAsEntry();
    if (entry) await walk(entry);
  }
  return out;
}

/**
 * One image (not a 150-px patch): its tissue (Otsu on saturation, as `predict-slide --tile`) cut into square
 * tiles of `side` px, each predicted as a patch named `{stem}_{col}_{row}`; past the image's edge is white.
 */
function tiles(img: RgbImage, stem: string, side: number): { images: PatchImage[]; spots: Spot[] } {
  const { tiles } = tissueTiles({ ...img, downsample: 1 }, { tilePx: side });
  const images: PatchImage[] = [], spots: Spot[] = [];
  for (const t of tiles) {
    const rgb = new Uint8Array(side * side * 3).fill(255);
    const w = Math.min(side, img.width - t.x);
    for (let y = 0; y < side && t.y + y < img.height; y++) {
      const src = ((t.y + y) * img.width + t.x) * 3;
      rgb.set(img.data.subarray(src, src + w * 3), y * side * 3);
    }
    images.push({ name: `${stem}_${t.col}_${t.row}`, bytes: encodeRgbTiff(side, side, rgb) });
    spots.push({ x: t.x, y: t.y, side });
  }
  return { images, spots };
}

async function runInteractive(): Promise<void> {
  if (!checkpointFile || imageFiles.length === 0) return;
  const bar = $<HTMLProgressElement>("progress");
  const tta = parseTta($<HTMLSelectElement>("tta")?.value ?? "tta");
  const weights = { bytes: new Uint8Array(await checkpointFile.arrayBuffer()), name: checkpointFile.name };
  let images: PatchImage[], spots: Spot[], image: RgbImage | null = null;
  const single = imageFiles.length === 1 ? imageFiles[0] : null;
  const decoded = single ? decodeImage(new Uint8Array(await single.arrayBuffer()), single.name) : null;
  if (single && decoded && (decoded.width > 300 || decoded.height > 300)) {
    // A whole image: tiles of the side asked for (default: about 400 tiles, at least 150 px).
    const asked = Number($<HTMLInputElement>("tile")?.value);
    const side = asked >= 16
      ? Math.round(asked)
      : Math.max(150, Math.ceil(Math.sqrt(decoded.width * decoded.height / 400)));
    ({ images, spots } = tiles(decoded, patchName(single.name), side));
    image = decoded;
    say(`${single.name}: ${decoded.width}×${decoded.height}, ${images.length} tissue tiles of ${side} px`);
    if (images.length === 0) throw new Error(`Cannot predict ${single.name}: no tissue found`);
  } else {
    images = imageFiles.map((f) => ({
      name: patchName(f.name),
      bytes: async () => new Uint8Array(await f.arrayBuffer()),
    }));
    spots = gridSpots(images.map((i) => i.name));
  }
  const p = await predict({
    weights,
    images,
    tta,
    batchSize: 4,
    onProgress: (d, t) => {
      setStatus(`predicting ${d}/${t}`);
      if (bar) {
        bar.max = t;
        bar.value = d;
      }
    },
  });
  show({ p, spots, image });
}

function download(name: string, data: string | Uint8Array, type: string): void {
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([data as BlobPart], { type }));
  a.download = name;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
}

function wire(): void {
  const files = $<HTMLInputElement>("files"), folder = $<HTMLInputElement>("folder");
  for (const input of [files, folder]) {
    input?.addEventListener("change", () => takeFiles([...(input.files ?? [])]));
  }
  const drop = $("drop");
  drop?.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop?.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop?.addEventListener("drop", async (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer) takeFiles(await droppedFiles(e.dataTransfer.items));
  });
  $("predict")?.addEventListener("click", () => guard(runInteractive));
  $("gene")?.addEventListener("input", drawMaps);
  $("csv")?.addEventListener("click", () => {
    if (!shown) return;
    for (const [name, text] of Object.entries(patchCsvs(shown.p))) download(name, text, "text/csv");
  });
  $("npz")?.addEventListener("click", () => {
    if (shown) download("predictions.npz", patchNpz(shown.p), "application/octet-stream");
  });
}

/** Run `f`, ending with the title `… done` or `… error: message`. */
async function guard(f: () => Promise<void>): Promise<void> {
  try {
    await f();
    setStatus("done");
    document.title = "he2gene: done";
  } catch (e) {
    const m = (e as Error).message ?? String(e);
    state.error = m;
    say(`error: ${m}`);
    setStatus(`error: ${m}`);
    document.title = `he2gene: error: ${m}`;
  }
}

const query = new URLSearchParams(location.search);
wire();
if (query.has("selftest")) guard(() => runSelftestPage(query.get("selftest") === "quick"));
else if (query.has("tune")) {
  guard(() => runTunePage(query.get("tune") === "quick", query.get("only")?.split(",").filter(Boolean)));
} else if (query.has("weights")) guard(() => runFromUrl(query));
else setStatus("ready: choose a checkpoint and an image or a folder of patches");
