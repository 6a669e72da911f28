/**
 * Stain normalisation of packed RGB patches on the GPU: Macenko and Reinhard, each with a float64 CPU
 * reference.
 *
 * Images travel packed as in `resize.ts` (`[M, H, W]`, one f32 per pixel holding `R + 256·G + 65536·B`);
 * outputs are new tensors in the same layout, so `resizeNormalize` consumes them. Nothing accumulates;
 * no backward (inference only).
 *
 * **Macenko** (Macenko et al. 2009, "A method for normalizing histology slides for quantitative
 * analysis", https://doi.org/10.1109/ISBI.2009.5193250), as torchstain's `NumpyMacenkoNormalizer`
 * (Io = 240, alpha = 1, beta = 0.15): OD = −log((I + 1)/Io); tissue = pixels with OD ≥ beta in all three
 * channels; the plane of the two largest eigenvectors of the tissue OD covariance; angles
 * φ = atan2(OD·v₃, OD·v₂) and their alpha / 100 − alpha percentiles give the two stain vectors (the one
 * with the larger red OD is haematoxylin); concentrations C = pinv(HE)·OD of every pixel; each stain is
 * scaled by maxCRef / (99th percentile of C); I = Io·exp(−HERef·C).
 * Differences from torchstain, both deliberate:
 * - eigenvector signs are fixed (first component ≥ 0, as staintools) — `numpy.linalg.eigh`'s signs are
 *   arbitrary and a flipped vector moves the angles across ±π, which breaks the percentiles;
 * - the output is clipped to [0, 255] and rounded half to even; torchstain maps values > 255 to 254 and
 *   truncates.
 *
 * Where the percentiles come from:
 * - `fitMacenko` and the CPU references sort (exact, numpy's linear interpolation);
 * - `applyMacenko` computes them on the GPU with a two-level histogram per image and target: pass A bins
 *   the values into 4096 bins over a bound that holds all of them ([−π, π] for angles, interval
 *   arithmetic on pinv(HE) for concentrations), the CPU finds the bin that holds the wanted rank, pass B
 *   splits that bin into 4096 sub-bins (the same f32 bin arithmetic, so a value lands in the same bin in
 *   both passes). Within a sub-bin the values are taken as evenly spread. The resolution is
 *   range / 4096², i.e. the f32 resolution of the values themselves.
 *
 * **Reinhard** (Reinhard et al. 2001, "Color transfer between images",
 * https://doi.org/10.1109/38.946629): per channel, `(x − mean) / std · stdRef + meanRef` in CIELAB.
 * NOTE: the LAB is skimage's `rgb2lab` (float sRGB → XYZ → CIELAB, D65 white, 2° observer), not cv2's
 * 8-bit quantised LAB that staintools uses: it is exact, invertible and the same in f32 and float64.
 * Mean and std (ddof 0) run over all pixels of the image.
 *
 * Degenerate images (fewer tissue pixels than `minTissuePixels`, a singular stain matrix, a zero 99th
 * percentile or a zero LAB std) are copied through unchanged and listed in `skipped`.
 *
 * @module
 */
import { type Engine, grid } from "../engine/engine.ts";
import { single } from "../engine/kernel.ts";
import { LINEAR_ID, linearEntry, WORKGROUP_ID, workgroupEntry } from "../kernels/_wgsl.ts";
import type { Tensor } from "../engine/tensor.ts";
import type { RgbImage } from "./decode.ts";
import { uploadImages } from "./resize.ts";

/** An 8-bit RGB image (interleaved `R G B …`), as `decodeImage` returns. */
export interface RgbLike {
  width: number;
  height: number;
  data: Uint8Array;
}

/** Stain normalisation methods. */
export type StainMethod = "macenko" | "reinhard" | "none";

/** Result of a GPU normalisation: packed images `[M, H, W]` and the images left unchanged. */
export interface StainResult {
  images: Tensor;
  /** Indices of degenerate images (too little tissue, singular fit) that were copied unchanged. */
  skipped: number[];
}

/** Macenko parameters (torchstain's defaults). */
export interface MacenkoOptions {
  /** Transmitted light intensity (default 240). */
  io?: number;
  /** Angle percentile, in percent (default 1: the 1st and 99th percentiles). */
  alpha?: number;
  /** OD threshold of tissue pixels (default 0.15). */
  beta?: number;
  /** Fewest tissue pixels to fit a stain matrix (default: 1% of the pixels, at least 3). */
  minTissuePixels?: number;
}

/** A Macenko target: the reference stain matrix and the reference 99th percentiles of the concentrations. */
export interface MacenkoTarget {
  /** Unit OD vectors (R, G, B) of haematoxylin and eosin: torchstain's `HERef` columns. */
  stains: [[number, number, number], [number, number, number]];
  /** 99th percentiles of the H and E concentrations: torchstain's `maxCRef`. */
  maxC: [number, number];
}

/** torchstain's default target (`HERef`, `maxCRef` of `NumpyMacenkoNormalizer`). */
export const MACENKO_DEFAULT_TARGET: MacenkoTarget = {
  stains: [[0.5626, 0.7201, 0.4062], [0.2159, 0.8012, 0.5581]],
  maxC: [1.9705, 1.0308],
};

/** A Reinhard target: per-channel mean and std (ddof 0) of a reference image in CIELAB (L, a, b). */
export interface ReinhardTarget {
  mean: [number, number, number];
  std: [number, number, number];
}

/** Reinhard options. */
export interface ReinhardOptions {
  /** Fewest tissue pixels (OD ≥ beta in all channels, Io = 240) to normalise (default 1%, at least 3). */
  minTissuePixels?: number;
  /** OD threshold of tissue pixels (default 0.15). */
  beta?: number;
}

const IO = 240, ALPHA = 1, BETA = 0.15;
const BINS = 4096;
const WG = 256;

function resolve(o: MacenkoOptions, n: number) {
  return {
    io: o.io ?? IO,
    alpha: o.alpha ?? ALPHA,
    beta: o.beta ?? BETA,
    minTissue: Math.max(3, o.minTissuePixels ?? Math.ceil(0.01 * n)),
  };
}

// ---------------------------------------------------------------------------------------- CPU math

/** Round half to even (numpy's `round`, WGSL's `round`). */
export function rint(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

/** numpy's `percentile(v, q)` (linear interpolation) of values sorted ascending. */
export function percentileSorted(v: ArrayLike<number>, q: number): number {
  const pos = (q / 100) * (v.length - 1);
  const k = Math.floor(pos), f = pos - k;
  const a = v[k], b = v[Math.min(k + 1, v.length - 1)];
  return f === 0 ? a : a + f * (b - a);
}

/**
 * Eigen-decomposition of a symmetric 3×3 matrix (cyclic Jacobi, float64). Eigenvalues ascending (as
 * `numpy.linalg.eigh`); `vectors[k]` is the unit eigenvector of `values[k]`, sign fixed so its first
 * non-zero component is positive.
 */
export function eigh3(a: ArrayLike<number>): { values: number[]; vectors: number[][] } {
  const m = [[a[0], a[1], a[2]], [a[3], a[4], a[5]], [a[6], a[7], a[8]]];
  const v = [[1, 0, 0], [0, 1, 0], [0, 0, 1]]; // columns are eigenvectors
  for (let sweep = 0; sweep < 64; sweep++) {
    const off = m[0][1] ** 2 + m[0][2] ** 2 + m[1][2] ** 2;
    if (off === 0 || off < 1e-300) break;
    for (const [p, q] of [[0, 1], [0, 2], [1, 2]]) {
      if (m[p][q] === 0) continue;
      const theta = (m[q][q] - m[p][p]) / (2 * m[p][q]);
      const t = Math.sign(theta || 1) / (Math.abs(theta) + Math.sqrt(theta * theta + 1));
      const c = 1 / Math.sqrt(t * t + 1), s = t * c;
      for (let k = 0; k < 3; k++) { // m ← m·J
        const mkp = m[k][p], mkq = m[k][q];
        m[k][p] = c * mkp - s * mkq;
        m[k][q] = s * mkp + c * mkq;
      }
      for (let k = 0; k < 3; k++) { // m ← Jᵀ·m
        const mpk = m[p][k], mqk = m[q][k];
        m[p][k] = c * mpk - s * mqk;
        m[q][k] = s * mpk + c * mqk;
      }
      for (let k = 0; k < 3; k++) {
        const vkp = v[k][p], vkq = v[k][q];
        v[k][p] = c * vkp - s * vkq;
        v[k][q] = s * vkp + c * vkq;
      }
    }
  }
  const order = [0, 1, 2].sort((i, j) => m[i][i] - m[j][j]);
  const vectors = order.map((j) => {
    const vec = [v[0][j], v[1][j], v[2][j]];
    const lead = vec.find((x) => x !== 0) ?? 1;
    return lead < 0 ? vec.map((x) => -x) : vec;
  });
  return { values: order.map((j) => m[j][j]), vectors };
}

/** OD covariance (ddof 1) from moments `[n, Σx, Σy, Σz, Σxx, Σxy, Σxz, Σyy, Σyz, Σzz]`, row-major 3×3. */
function covariance(s: ArrayLike<number>): number[] {
  const n = s[0];
  const mu = [s[1] / n, s[2] / n, s[3] / n];
  const sxx = [[s[4], s[5], s[6]], [s[5], s[7], s[8]], [s[6], s[8], s[9]]];
  const c: number[] = [];
  for (let i = 0; i < 3; i++) for (let j = 0; j < 3; j++) c.push((sxx[i][j] - n * mu[i] * mu[j]) / (n - 1));
  return c;
}

/** Stain matrix from the plane basis (v₂, v₃) and the two percentile angles; null if degenerate. */
function stainsFromAngles(e1: number[], e2: number[], minPhi: number, maxPhi: number) {
  const vMin = [0, 1, 2].map((k) => e1[k] * Math.cos(minPhi) + e2[k] * Math.sin(minPhi));
  const vMax = [0, 1, 2].map((k) => e1[k] * Math.cos(maxPhi) + e2[k] * Math.sin(maxPhi));
  // torchstain's heuristic: haematoxylin first (the larger red OD).
  return (vMin[0] > vMax[0] ? [vMin, vMax] : [vMax, vMin]) as MacenkoTarget["stains"];
}

/** pinv of the 3×2 stain matrix (columns H, E): 2×3 rows, or null when singular. */
function pinvStains(st: MacenkoTarget["stains"]): number[][] | null {
  const [h, e] = st;
  const g00 = h[0] * h[0] + h[1] * h[1] + h[2] * h[2];
  const g01 = h[0] * e[0] + h[1] * e[1] + h[2] * e[2];
  const g11 = e[0] * e[0] + e[1] * e[1] + e[2] * e[2];
  const det = g00 * g11 - g01 * g01;
  if (!(det > 1e-8 * g00 * g11)) return null;
  const i00 = g11 / det, i01 = -g01 / det, i11 = g00 / det;
  return [
    [0, 1, 2].map((k) => i00 * h[k] + i01 * e[k]),
    [0, 1, 2].map((k) => i01 * h[k] + i11 * e[k]),
  ];
}

/** Optical densities of an RGB image, float64 `[n, 3]`. */
function odCpu(img: RgbLike, io: number): Float64Array {
  const n = img.width * img.height;
  const od = new Float64Array(3 * n);
  for (let i = 0; i < 3 * n; i++) od[i] = -Math.log((img.data[i] + 1) / io);
  return od;
}

/** The Macenko fit of one image in float64, or a reason why it is degenerate. */
export function macenkoStainsCpu(
  img: RgbLike,
  options: MacenkoOptions = {},
): { stains: MacenkoTarget["stains"]; maxC: [number, number]; tissue: number } | { degenerate: string } {
  const n = img.width * img.height;
  const { io, alpha, beta, minTissue } = resolve(options, n);
  const od = odCpu(img, io);
  const s = new Float64Array(10);
  const tissue: number[] = [];
  for (let i = 0; i < n; i++) {
    const x = od[3 * i], y = od[3 * i + 1], z = od[3 * i + 2];
    if (x < beta || y < beta || z < beta) continue;
    tissue.push(i);
    s[0]++, s[1] += x, s[2] += y, s[3] += z;
    s[4] += x * x, s[5] += x * y, s[6] += x * z, s[7] += y * y, s[8] += y * z, s[9] += z * z;
  }
  if (tissue.length < minTissue) {
    return { degenerate: `${tissue.length} tissue pixels (OD ≥ ${beta}), fewer than ${minTissue}` };
  }
  const { vectors } = eigh3(covariance(s));
  const [e1, e2] = [vectors[1], vectors[2]];
  const phi = new Float64Array(tissue.length);
  tissue.forEach((i, k) => {
    const o = [od[3 * i], od[3 * i + 1], od[3 * i + 2]];
    phi[k] = Math.atan2(dot(o, e2), dot(o, e1));
  });
  phi.sort();
  const stains = stainsFromAngles(e1, e2, percentileSorted(phi, alpha), percentileSorted(phi, 100 - alpha));
  const pinv = pinvStains(stains);
  if (!pinv) return { degenerate: "singular stain matrix" };
  const c0 = new Float64Array(n), c1 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const o = [od[3 * i], od[3 * i + 1], od[3 * i + 2]];
    c0[i] = dot(pinv[0], o);
    c1[i] = dot(pinv[1], o);
  }
  const maxC: [number, number] = [percentileSorted(c0.sort(), 99), percentileSorted(c1.sort(), 99)];
  if (!(maxC[0] > 1e-6 && maxC[1] > 1e-6)) return { degenerate: `99th percentiles ${maxC} not positive` };
  return { stains, maxC, tissue: tissue.length };
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  return a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
}

/**
 * Fit a Macenko target (stain matrix and 99th percentiles) to a reference image, on the CPU in float64
 * with exact (sorted) percentiles.
 *
 * @example
 * ```ts
 * const target = fitMacenko(decodeImage(await Deno.readFile("ref.tif"), "ref.tif"));
 * const { images } = await applyMacenko(uploadImages(engine, patches), target);
 * ```
 */
export function fitMacenko(ref: RgbLike, options: MacenkoOptions = {}): MacenkoTarget {
  const fit = macenkoStainsCpu(ref, options);
  if ("degenerate" in fit) {
    throw new RangeError(
      `Cannot fit a Macenko target: the reference image is degenerate (${fit.degenerate})`,
    );
  }
  return { stains: fit.stains, maxC: fit.maxC };
}

/** Recompose with the target: per pixel `Io·exp(−HERef·(pinv(HE)·OD ⊙ scale))`, clipped and rounded. */
function recomposeCpu(
  img: RgbLike,
  pinv: number[][],
  scale: number[],
  target: MacenkoTarget,
  io: number,
): Uint8Array {
  const n = img.width * img.height;
  const out = new Uint8Array(3 * n);
  const [h, e] = target.stains;
  for (let i = 0; i < n; i++) {
    const o = [0, 1, 2].map((c) => -Math.log((img.data[3 * i + c] + 1) / io));
    const c0 = dot(pinv[0], o) * scale[0], c1 = dot(pinv[1], o) * scale[1];
    for (let c = 0; c < 3; c++) {
      out[3 * i + c] = rint(Math.min(255, Math.max(0, io * Math.exp(-(h[c] * c0 + e[c] * c1)))));
    }
  }
  return out;
}

/**
 * Macenko-normalise one image on the CPU (float64, exact percentiles): the reference for
 * {@linkcode applyMacenko}. A degenerate image is returned unchanged with `skipped: true`.
 *
 * @example
 * ```ts
 * const { data } = macenkoCpu(patch, MACENKO_DEFAULT_TARGET); // HWC uint8
 * ```
 */
export function macenkoCpu(
  img: RgbLike,
  target: MacenkoTarget,
  options: MacenkoOptions = {},
): { data: Uint8Array; skipped: boolean } {
  const fit = macenkoStainsCpu(img, options);
  if ("degenerate" in fit) return { data: img.data.slice(), skipped: true };
  const pinv = pinvStains(fit.stains)!;
  const { io } = resolve(options, 1);
  const scale = [target.maxC[0] / fit.maxC[0], target.maxC[1] / fit.maxC[1]];
  return { data: recomposeCpu(img, pinv, scale, target, io), skipped: false };
}

// ------------------------------------------------------------------------------------- GPU kernels

const WGSL_COMMON = String.raw`
fn unpack(v: f32) -> vec3<f32> {
  let u = u32(v);
  return vec3<f32>(f32(u & 255u), f32((u >> 8u) & 255u), f32(u >> 16u));
}
fn pack(c: vec3<f32>) -> f32 { return c.x + 256.0 * c.y + 65536.0 * c.z; }`;

// Tree sum of `rows` per-invocation sums held in sh[k·WG + t] (k < rows); afterwards sh[k·WG] holds sum k.
const sumRows = (rows: number) =>
  `for (var k = 0u; k < ${rows}u; k++) { sh[k * ${WG}u + t] = a[k]; }
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (t < s) {
      for (var k = 0u; k < ${rows}u; k++) { sh[k * ${WG}u + t] += sh[k * ${WG}u + t + s]; }
    }
    workgroupBarrier();
  }`;

// src: [M, n] packed → y: [M, 10] = (count, Σod, Σod·odᵀ upper triangle) over pixels with od ≥ beta.
const momentsKernel = single("stain_od_moments", () => ({
  bindings: [{ name: "src", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { m: "u32", n: "u32", io: "f32", beta: "f32" },
  workgroupSize: [WG],
  body: WGSL_COMMON + String.raw`
var<workgroup> sh: array<f32, ${WG * 10}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  let img = w;
  if (img >= p.m) { return; }   // uniform per workgroup
  var a: array<f32, 10>;
  for (var i = t; i < p.n; i += ${WG}u) {
    let o = log(vec3<f32>(p.io) / (unpack(src[img * p.n + i]) + 1.0));
    if (all(o >= vec3<f32>(p.beta))) {
      a[0] += 1.0; a[1] += o.x; a[2] += o.y; a[3] += o.z;
      a[4] += o.x * o.x; a[5] += o.x * o.y; a[6] += o.x * o.z;
      a[7] += o.y * o.y; a[8] += o.y * o.z; a[9] += o.z * o.z;
    }
  }
  ${sumRows(10)}
  if (t < 10u) { y[img * 10u + t] = sh[t * ${WG}u]; }
}`,
}));

// One workgroup per (image, target): a histogram of BINS bins of per-pixel values.
// src: [M, n] packed; prm: [M, 16] = (a (3), b (3), lo₀, scale₀, bin₀, lo₁, scale₁, bin₁, 0…);
// y: [M, 2, BINS] counts.
// mode 0 (angles): value = atan2(od·b, od·a) over tissue pixels (od ≥ beta), both targets.
// mode 1 (concentrations): value = od·a (target 0) or od·b (target 1) over all pixels.
// t = (value − lo)·scale; pass A (bin < 0) counts floor(t) (clamped), pass B counts, among values with
// floor(t) = bin, the sub-bin floor((t − bin)·BINS).
const histKernel = single("stain_hist", () => ({
  bindings: [
    { name: "src", access: "read" },
    { name: "prm", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: { m: "u32", n: "u32", io: "f32", beta: "f32", mode: "u32" },
  workgroupSize: [WG],
  body: WGSL_COMMON + String.raw`
const BINS: u32 = ${BINS}u;
var<workgroup> h: array<atomic<u32>, ${BINS}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= 2u * p.m) { return; }   // uniform per workgroup
  let img = w / 2u;
  let tg = w % 2u;
  for (var i = t; i < BINS; i += ${WG}u) { atomicStore(&h[i], 0u); }
  workgroupBarrier();
  let q = img * 16u;
  let va = vec3<f32>(prm[q], prm[q + 1u], prm[q + 2u]);
  let vb = vec3<f32>(prm[q + 3u], prm[q + 4u], prm[q + 5u]);
  let lo = prm[q + 6u + 3u * tg];
  let sc = prm[q + 7u + 3u * tg];
  let rb = prm[q + 8u + 3u * tg];
  let top = f32(BINS - 1u);
  for (var i = t; i < p.n; i += ${WG}u) {
    let o = log(vec3<f32>(p.io) / (unpack(src[img * p.n + i]) + 1.0));
    var v: f32;
    var ok = true;
    if (p.mode == 0u) {
      ok = all(o >= vec3<f32>(p.beta));
      v = atan2(dot(o, vb), dot(o, va));
    } else {
      v = select(dot(o, vb), dot(o, va), tg == 0u);
    }
    if (ok) {
      let x = (v - lo) * sc;
      let fb = clamp(floor(x), 0.0, top);
      if (rb < 0.0) {
        atomicAdd(&h[u32(fb)], 1u);
      } else if (fb == rb) {
        atomicAdd(&h[u32(clamp(floor((x - fb) * f32(BINS)), 0.0, top))], 1u);
      }
    }
  }
  workgroupBarrier();
  for (var i = t; i < BINS; i += ${WG}u) { y[w * BINS + i] = f32(atomicLoad(&h[i])); }
}`,
}));

// src, y: [M, n] packed; prm: [M, 8] = (pinv row 0 (3), pinv row 1 (3), scale₀, scale₁); a scale₀ ≤ 0
// means "copy unchanged" (a flag, not NaN: WGSL may fold NaN comparisons away).
// y = clip(round(Io·exp(−(H·c₀ + E·c₁))), 0, 255) with c = (pinv·od) ⊙ scale.
const recomposeKernel = single("macenko_recompose", () => ({
  bindings: [
    { name: "src", access: "read" },
    { name: "prm", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: {
    total: "u32",
    n: "u32",
    io: "f32",
    h0: "f32",
    h1: "f32",
    h2: "f32",
    e0: "f32",
    e1: "f32",
    e2: "f32",
  },
  workgroupSize: [64],
  body: WGSL_COMMON + String.raw`
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let q = (i / p.n) * 8u;
  let s0 = prm[q + 6u];
  if (s0 <= 0.0) { y[i] = src[i]; return; }   // degenerate image: copy
  let o = log(vec3<f32>(p.io) / (unpack(src[i]) + 1.0));
  let c0 = dot(vec3<f32>(prm[q], prm[q + 1u], prm[q + 2u]), o) * s0;
  let c1 = dot(vec3<f32>(prm[q + 3u], prm[q + 4u], prm[q + 5u]), o) * prm[q + 7u];
  let od = vec3<f32>(p.h0, p.h1, p.h2) * c0 + vec3<f32>(p.e0, p.e1, p.e2) * c1;
  y[i] = pack(clamp(round(p.io * exp(-od)), vec3<f32>(0.0), vec3<f32>(255.0)));
}`,
}));

// ------------------------------------------------------------------------- GPU percentile search

/** Where the wanted rank sits after pass A: the bin, and the values below it. */
interface Located {
  bin: number;
  below: number;
  /** Count in the bin. */
  count: number;
}

function locate(h: Float32Array, off: number, rank: number): Located {
  let below = 0;
  for (let b = 0; b < BINS; b++) {
    const c = h[off + b];
    if (rank < below + c) return { bin: b, below, count: c };
    below += c;
  }
  throw new RangeError(`Cannot locate rank ${rank}: the histogram holds ${below} values`);
}

/**
 * numpy's `percentile(values, q)` from the two-level histogram of one target: ranks k = ⌊pos⌋ and k + 1,
 * values taken as evenly spread within a (sub-)bin: the r-th of c values in bin b is at b + (r + ½)/c.
 */
function histPercentile(
  a: Float32Array,
  b: Float32Array,
  off: number,
  n: number,
  q: number,
  lo: number,
  sc: number,
  fine: Located,
): number {
  const pos = (q / 100) * (n - 1);
  const k = Math.floor(pos), f = pos - k;
  const valueAt = (rank: number): number => {
    if (rank >= fine.below && rank < fine.below + fine.count) {
      const s = locate(b, off, rank - fine.below);
      return lo + (fine.bin + (s.bin + (rank - fine.below - s.below + 0.5) / s.count) / BINS) / sc;
    }
    const c = locate(a, off, rank);
    return lo + (c.bin + (rank - c.below + 0.5) / c.count) / sc;
  };
  const v0 = valueAt(k);
  return f === 0 ? v0 : v0 + f * (valueAt(Math.min(k + 1, n - 1)) - v0);
}

/**
 * Two-level histogram percentiles on the GPU: for each image `m` and target `t`, the `qs[m][t]`
 * percentile of the values selected by `mode`.
 */
async function gpuPercentiles(
  src: Tensor,
  mode: 0 | 1,
  vecs: Float64Array, // [M, 6]: a, b
  ranges: Float64Array, // [M, 2, 2]: lo, hi
  qs: (m: number, t: number) => number,
  io: number,
  beta: number,
): Promise<{ values: Float64Array; counts: Float64Array }> {
  const e = src.engine;
  const [M, H, W] = src.shape;
  const n = H * W;
  const prm = new Float32Array(M * 16);
  const lo = new Float64Array(2 * M), sc = new Float64Array(2 * M);
  for (let m = 0; m < M; m++) {
    for (let k = 0; k < 6; k++) prm[16 * m + k] = vecs[6 * m + k];
    for (let t = 0; t < 2; t++) {
      // Bounds rounded to f32 so the GPU and the host agree on the bin arithmetic.
      lo[2 * m + t] = Math.fround(ranges[4 * m + 2 * t]);
      sc[2 * m + t] = Math.fround(BINS / (ranges[4 * m + 2 * t + 1] - ranges[4 * m + 2 * t]));
      prm.set([lo[2 * m + t], sc[2 * m + t], -1], 16 * m + 6 + 3 * t);
    }
  }
  const pass = async (): Promise<Float32Array> => {
    const p = e.tensor(prm, [M, 16]);
    const y = e.empty([M, 2, BINS], "stain_hist");
    e.run(histKernel(), {
      bindings: [src, p, y],
      uniforms: { m: M, n, io, beta, mode },
      workgroups: grid(2 * M, 1),
      info: `[${src.shape}] mode ${mode}`,
    });
    const h = await y.toArray();
    p.dispose();
    y.dispose();
    return h;
  };
  const a = await pass();
  const counts = new Float64Array(2 * M);
  const fine: Located[] = [];
  for (let w = 0; w < 2 * M; w++) {
    let c = 0;
    for (let b = 0; b < BINS; b++) c += a[w * BINS + b];
    counts[w] = c;
    const k = Math.floor((qs(w >> 1, w & 1) / 100) * (c - 1));
    fine.push(c > 0 ? locate(a, w * BINS, k) : { bin: 0, below: 0, count: 0 });
    prm[16 * (w >> 1) + 8 + 3 * (w & 1)] = fine[w].bin;
  }
  const b = await pass();
  const values = new Float64Array(2 * M);
  for (let w = 0; w < 2 * M; w++) {
    values[w] = counts[w] > 0
      ? histPercentile(a, b, w * BINS, counts[w], qs(w >> 1, w & 1), lo[w], sc[w], fine[w])
      : NaN;
  }
  return { values, counts };
}

function checkPacked(x: Tensor, what: string): [number, number, number] {
  if (x.rank !== 3) {
    throw new RangeError(`Cannot ${what}: expected packed images [M, H, W], current shape is [${x.shape}]`);
  }
  if (x.bytes > x.engine.maxBinding) {
    throw new RangeError(
      `Cannot ${what} [${x.shape}]: larger than one storage binding (${x.engine.maxBinding} bytes); ` +
        `use a smaller batch`,
    );
  }
  return x.shape as [number, number, number];
}

/**
 * Macenko-normalise a batch of packed images on the GPU towards `target`; each image gets its own stain
 * matrix and 99th percentiles (GPU moments → CPU 3×3 eigenvectors → GPU histogram percentiles → GPU
 * recomposition). Degenerate images are copied unchanged and listed in `skipped`.
 *
 * @example
 * ```ts
 * const src = uploadImages(engine, patches);                       // [M, 150, 150]
 * const { images, skipped } = await applyMacenko(src, fitMacenko(reference));
 * const x = resizeNormalize(images);                               // [M, 3, 224, 224]
 * ```
 */
export async function applyMacenko(
  packed: Tensor,
  target: MacenkoTarget,
  options: MacenkoOptions = {},
): Promise<StainResult> {
  const [M, H, W] = checkPacked(packed, "applyMacenko");
  const e: Engine = packed.engine;
  const n = H * W;
  const { io, alpha, beta, minTissue } = resolve(options, n);

  // 1. Tissue OD moments → covariance → plane of the two largest eigenvectors (CPU, float64).
  const mom = e.empty([M, 10], "stain_moments");
  e.run(momentsKernel(), {
    bindings: [packed, mom],
    uniforms: { m: M, n, io, beta },
    workgroups: grid(M, 1),
    info: `[${packed.shape}]`,
  });
  const s = await mom.toArray();
  mom.dispose();
  const skipped = new Set<number>();
  const basis = new Float64Array(6 * M);
  for (let m = 0; m < M; m++) {
    const sm = s.subarray(10 * m, 10 * m + 10);
    if (sm[0] < minTissue) {
      skipped.add(m);
      basis.set([1, 0, 0, 0, 1, 0], 6 * m);
      continue;
    }
    const { vectors } = eigh3(covariance(sm));
    basis.set([...vectors[1], ...vectors[2]], 6 * m);
  }

  // 2. Angle percentiles → stain matrices → pinv.
  const angleRange = new Float64Array(4 * M).map((_, i) => (i % 2 === 0 ? -Math.PI : Math.PI));
  const phi = await gpuPercentiles(
    packed,
    0,
    basis,
    angleRange,
    (_m, t) => t === 0 ? alpha : 100 - alpha,
    io,
    beta,
  );
  const pinvs = new Float64Array(6 * M);
  const cRange = new Float64Array(4 * M);
  const odLo = Math.log(io / 256), odHi = Math.log(io);
  for (let m = 0; m < M; m++) {
    let pv: number[][] | null = null;
    if (!skipped.has(m) && phi.counts[2 * m] >= minTissue) {
      const b = basis.subarray(6 * m, 6 * m + 6);
      pv = pinvStains(
        stainsFromAngles([...b.subarray(0, 3)], [...b.subarray(3)], phi.values[2 * m], phi.values[2 * m + 1]),
      );
    }
    if (!pv) {
      skipped.add(m);
      pv = [[1, 0, 0], [0, 1, 0]];
    }
    pinvs.set([...pv[0], ...pv[1]], 6 * m);
    for (let t = 0; t < 2; t++) {
      // Interval arithmetic: od ∈ [log(Io/256), log(Io)] per channel bounds pinv·od.
      let lo = 0, hi = 0;
      for (const c of pv[t]) {
        lo += Math.min(c * odLo, c * odHi);
        hi += Math.max(c * odLo, c * odHi);
      }
      const pad = 1e-3 * (hi - lo) + 1e-6;
      cRange.set([lo - pad, hi + pad], 4 * m + 2 * t);
    }
  }

  // 3. 99th percentiles of the concentrations of all pixels.
  const conc = await gpuPercentiles(packed, 1, pinvs, cRange, () => 99, io, beta);

  // 4. Recompose.
  const prm = new Float32Array(8 * M);
  for (let m = 0; m < M; m++) {
    const c0 = conc.values[2 * m], c1 = conc.values[2 * m + 1];
    if (!(c0 > 1e-6 && c1 > 1e-6)) skipped.add(m);
    prm.set(pinvs.subarray(6 * m, 6 * m + 6), 8 * m);
    prm.set(skipped.has(m) ? [-1, -1] : [target.maxC[0] / c0, target.maxC[1] / c1], 8 * m + 6);
  }
  const p = e.tensor(prm, [M, 8]);
  const y = e.empty([M, H, W], "macenko");
  const [h, st] = target.stains;
  e.run(recomposeKernel(), {
    bindings: [packed, p, y],
    uniforms: { total: M * n, n, io, h0: h[0], h1: h[1], h2: h[2], e0: st[0], e1: st[1], e2: st[2] },
    workgroups: grid(M * n, 64),
    info: `[${packed.shape}]`,
  });
  p.dispose();
  return { images: y, skipped: [...skipped].sort((a, b) => a - b) };
}

// ----------------------------------------------------------------------------------------- Reinhard

// sRGB (linear) → XYZ, skimage's `xyz_from_rgb`, and the D65 white point (2° observer).
const XYZ_FROM_RGB = [
  0.412453,
  0.357580,
  0.180423,
  0.212671,
  0.715160,
  0.072169,
  0.019334,
  0.119193,
  0.950227,
];
const WHITE = [0.95047, 1.0, 1.08883];

function inverse3(a: number[]): number[] {
  const [a0, a1, a2, a3, a4, a5, a6, a7, a8] = a;
  const c = [
    a4 * a8 - a5 * a7,
    a2 * a7 - a1 * a8,
    a1 * a5 - a2 * a4,
    a5 * a6 - a3 * a8,
    a0 * a8 - a2 * a6,
    a2 * a3 - a0 * a5,
    a3 * a7 - a4 * a6,
    a1 * a6 - a0 * a7,
    a0 * a4 - a1 * a3,
  ];
  const det = a0 * c[0] + a1 * c[3] + a2 * c[6];
  return c.map((x) => x / det);
}
const RGB_FROM_XYZ = inverse3(XYZ_FROM_RGB);

/** skimage's `rgb2lab` of one 8-bit pixel, float64. */
export function rgbToLab(r: number, g: number, b: number): [number, number, number] {
  const lin = [r, g, b].map((v) => {
    const c = v / 255;
    return c > 0.04045 ? ((c + 0.055) / 1.055) ** 2.4 : c / 12.92;
  });
  const f = [0, 1, 2].map((k) => {
    const t =
      (XYZ_FROM_RGB[3 * k] * lin[0] + XYZ_FROM_RGB[3 * k + 1] * lin[1] + XYZ_FROM_RGB[3 * k + 2] * lin[2]) /
      WHITE[k];
    return t > 0.008856 ? Math.cbrt(t) : 7.787 * t + 16 / 116;
  });
  return [116 * f[1] - 16, 500 * (f[0] - f[1]), 200 * (f[1] - f[2])];
}

/** skimage's `lab2rgb` to 8-bit values (clipped to [0, 1], ×255, rounded half to even), float64. */
export function labToRgb(l: number, a: number, b: number): [number, number, number] {
  const fy = (l + 16) / 116;
  const f = [a / 500 + fy, fy, Math.max(fy - b / 200, 0)];
  const xyz = f.map((v, k) => (v > 0.2068966 ? v ** 3 : (v - 16 / 116) / 7.787) * WHITE[k]);
  return [0, 1, 2].map((k) => {
    const lin = RGB_FROM_XYZ[3 * k] * xyz[0] + RGB_FROM_XYZ[3 * k + 1] * xyz[1] +
      RGB_FROM_XYZ[3 * k + 2] * xyz[2];
    const c = lin > 0.0031308 ? 1.055 * lin ** (1 / 2.4) - 0.055 : 12.92 * lin;
    return rint(Math.min(1, Math.max(0, c)) * 255);
  }) as [number, number, number];
}

/** Per-channel LAB mean and std (ddof 0) of an image, and its tissue pixel count (OD ≥ beta, Io = 240). */
export function labStatsCpu(img: RgbLike, beta = BETA): ReinhardTarget & { tissue: number } {
  const n = img.width * img.height;
  const s = [0, 0, 0], ss = [0, 0, 0];
  let tissue = 0;
  const odMax = IO * Math.exp(-beta) - 1; // OD ≥ beta ⇔ I + 1 ≤ Io·e^(−beta)
  for (let i = 0; i < n; i++) {
    const [r, g, b] = [img.data[3 * i], img.data[3 * i + 1], img.data[3 * i + 2]];
    if (r <= odMax && g <= odMax && b <= odMax) tissue++;
    const lab = rgbToLab(r, g, b);
    for (let c = 0; c < 3; c++) {
      s[c] += lab[c];
      ss[c] += lab[c] * lab[c];
    }
  }
  const mean = s.map((v) => v / n) as [number, number, number];
  const std = ss.map((v, c) => Math.sqrt(Math.max(0, v / n - mean[c] * mean[c]))) as [number, number, number];
  return { mean, std, tissue };
}

/**
 * Fit a Reinhard target: LAB mean and std of a reference image (CPU, float64).
 *
 * @example
 * ```ts
 * const { images } = await applyReinhard(uploadImages(engine, patches), fitReinhard(reference));
 * ```
 */
export function fitReinhard(ref: RgbLike): ReinhardTarget {
  const { mean, std } = labStatsCpu(ref);
  if (!(std[0] > 0 && std[1] > 0 && std[2] > 0)) {
    throw new RangeError(`Cannot fit a Reinhard target: the reference image has LAB std [${std}]`);
  }
  return { mean, std };
}

/**
 * Reinhard-normalise one image on the CPU (float64): the reference for {@linkcode applyReinhard}.
 *
 * @example
 * ```ts
 * const { data } = reinhardCpu(patch, fitReinhard(reference));
 * ```
 */
export function reinhardCpu(
  img: RgbLike,
  target: ReinhardTarget,
  options: ReinhardOptions = {},
): { data: Uint8Array; skipped: boolean } {
  const n = img.width * img.height;
  const st = labStatsCpu(img, options.beta ?? BETA);
  const minTissue = Math.max(3, options.minTissuePixels ?? Math.ceil(0.01 * n));
  if (st.tissue < minTissue || !(st.std[0] > 1e-6 && st.std[1] > 1e-6 && st.std[2] > 1e-6)) {
    return { data: img.data.slice(), skipped: true };
  }
  const gain = [0, 1, 2].map((c) => target.std[c] / st.std[c]);
  const offset = [0, 1, 2].map((c) => target.mean[c] - st.mean[c] * gain[c]);
  const out = new Uint8Array(3 * n);
  for (let i = 0; i < n; i++) {
    const lab = rgbToLab(img.data[3 * i], img.data[3 * i + 1], img.data[3 * i + 2]);
    out.set(labToRgb(...(lab.map((v, c) => v * gain[c] + offset[c]) as [number, number, number])), 3 * i);
  }
  return { data: out, skipped: false };
}

const f32c = (x: number) => {
  const s = x.toPrecision(9);
  return s.includes(".") || s.includes("e") ? s : s + ".0";
};
const WGSL_LAB = String.raw`
const XYZ_FROM_RGB = mat3x3<f32>(${[0, 3, 6, 1, 4, 7, 2, 5, 8].map((i) => f32c(XYZ_FROM_RGB[i])).join(", ")});
const RGB_FROM_XYZ = mat3x3<f32>(${[0, 3, 6, 1, 4, 7, 2, 5, 8].map((i) => f32c(RGB_FROM_XYZ[i])).join(", ")});
const WHITE = vec3<f32>(${WHITE.map(f32c).join(", ")});
fn rgb2lab(rgb: vec3<f32>) -> vec3<f32> {
  let c = rgb / 255.0;
  let lin = select(c / 12.92, pow((c + 0.055) / 1.055, vec3<f32>(2.4)), c > vec3<f32>(0.04045));
  let t = (XYZ_FROM_RGB * lin) / WHITE;
  let f = select(7.787 * t + 16.0 / 116.0, pow(max(t, vec3<f32>(1e-30)), vec3<f32>(1.0 / 3.0)),
                 t > vec3<f32>(0.008856));
  return vec3<f32>(116.0 * f.y - 16.0, 500.0 * (f.x - f.y), 200.0 * (f.y - f.z));
}
fn lab2rgb(lab: vec3<f32>) -> vec3<f32> {
  let fy = (lab.x + 16.0) / 116.0;
  let f = vec3<f32>(lab.y / 500.0 + fy, fy, max(fy - lab.z / 200.0, 0.0));
  let xyz = select((f - 16.0 / 116.0) / 7.787, f * f * f, f > vec3<f32>(0.2068966)) * WHITE;
  let lin = RGB_FROM_XYZ * xyz;
  let c = select(12.92 * lin, 1.055 * pow(max(lin, vec3<f32>(1e-30)), vec3<f32>(1.0 / 2.4)) - 0.055,
                 lin > vec3<f32>(0.0031308));
  return round(clamp(c, vec3<f32>(0.0), vec3<f32>(1.0)) * 255.0);
}`;

// src: [M, n] packed → y: [M, 8] = (tissue count, Σ(L − 50), Σa, Σb, Σ(L − 50)², Σa², Σb², 0).
const labStatsKernel = single("reinhard_stats", () => ({
  bindings: [{ name: "src", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { m: "u32", n: "u32", odMax: "f32" },
  workgroupSize: [WG],
  body: WGSL_COMMON + WGSL_LAB + String.raw`
var<workgroup> sh: array<f32, ${WG * 7}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  let img = w;
  if (img >= p.m) { return; }   // uniform per workgroup
  var a: array<f32, 7>;
  for (var i = t; i < p.n; i += ${WG}u) {
    let rgb = unpack(src[img * p.n + i]);
    if (all(rgb <= vec3<f32>(p.odMax))) { a[0] += 1.0; }
    let lab = rgb2lab(rgb) - vec3<f32>(50.0, 0.0, 0.0);   // shifted: less cancellation in Σx² − (Σx)²/n
    a[1] += lab.x; a[2] += lab.y; a[3] += lab.z;
    a[4] += lab.x * lab.x; a[5] += lab.y * lab.y; a[6] += lab.z * lab.z;
  }
  ${sumRows(7)}
  if (t < 7u) { y[img * 8u + t] = sh[t * ${WG}u]; }
  if (t == 7u) { y[img * 8u + 7u] = 0.0; }
}`,
}));

// src, y: [M, n] packed; prm: [M, 8] = (gain (3), offset (3), copy flag, 0): lab' = lab ⊙ gain + offset.
const reinhardKernel = single("reinhard_apply", () => ({
  bindings: [
    { name: "src", access: "read" },
    { name: "prm", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: { total: "u32", n: "u32" },
  workgroupSize: [64],
  body: WGSL_COMMON + WGSL_LAB + String.raw`
${linearEntry(64)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let q = (i / p.n) * 8u;
  if (prm[q + 6u] > 0.5) { y[i] = src[i]; return; }
  let lab = rgb2lab(unpack(src[i]));
  let gain = vec3<f32>(prm[q], prm[q + 1u], prm[q + 2u]);
  let off = vec3<f32>(prm[q + 3u], prm[q + 4u], prm[q + 5u]);
  y[i] = pack(lab2rgb(lab * gain + off));
}`,
}));

/**
 * Reinhard-normalise a batch of packed images on the GPU: per-image LAB statistics from a GPU reduction,
 * then one kernel converts, matches mean and std, and converts back. Degenerate images (too little tissue
 * or a zero std) are copied unchanged and listed in `skipped`.
 *
 * @example
 * ```ts
 * const { images } = await applyReinhard(uploadImages(engine, patches), fitReinhard(reference));
 * ```
 */
export async function applyReinhard(
  packed: Tensor,
  target: ReinhardTarget,
  options: ReinhardOptions = {},
): Promise<StainResult> {
  const [M, H, W] = checkPacked(packed, "applyReinhard");
  const e = packed.engine;
  const n = H * W;
  const minTissue = Math.max(3, options.minTissuePixels ?? Math.ceil(0.01 * n));
  const stats = e.empty([M, 8], "reinhard_stats");
  e.run(labStatsKernel(), {
    bindings: [packed, stats],
    uniforms: { m: M, n, odMax: IO * Math.exp(-(options.beta ?? BETA)) - 1 },
    workgroups: grid(M, 1),
    info: `[${packed.shape}]`,
  });
  const s = await stats.toArray();
  stats.dispose();
  const prm = new Float32Array(8 * M);
  const skipped: number[] = [];
  for (let m = 0; m < M; m++) {
    const q = 8 * m;
    const mean = [s[q + 1] / n + 50, s[q + 2] / n, s[q + 3] / n];
    const sh = [s[q + 1] / n, s[q + 2] / n, s[q + 3] / n];
    const std = [0, 1, 2].map((c) => Math.sqrt(Math.max(0, s[q + 4 + c] / n - sh[c] * sh[c])));
    if (s[q] < minTissue || !std.every((v) => v > 1e-6)) {
      skipped.push(m);
      prm[q + 6] = 1;
      continue;
    }
    for (let c = 0; c < 3; c++) {
      const gain = target.std[c] / std[c];
      prm[q + c] = gain;
      prm[q + 3 + c] = target.mean[c] - mean[c] * gain;
    }
  }
  const p = e.tensor(prm, [M, 8]);
  const y = e.empty([M, H, W], "reinhard");
  e.run(reinhardKernel(), {
    bindings: [packed, p, y],
    uniforms: { total: M * n, n },
    workgroups: grid(M * n, 64),
    info: `[${packed.shape}]`,
  });
  p.dispose();
  return { images: y, skipped };
}

/**
 * Normalise packed images with one of the {@linkcode StainMethod}s; `"none"` returns the input tensor
 * itself (not a copy).
 *
 * @example
 * ```ts
 * const { images, skipped } = await normalizeStain(src, "macenko", MACENKO_DEFAULT_TARGET);
 * ```
 */
export function normalizeStain(
  packed: Tensor,
  method: StainMethod,
  options: { target?: MacenkoTarget | ReinhardTarget } = {},
): Promise<StainResult> {
  if (method === "none") return Promise.resolve({ images: packed, skipped: [] });
  const t = options.target;
  if (method === "macenko") {
    if (t && !("stains" in t)) {
      throw new TypeError("Cannot normalise with macenko: the target is a Reinhard target");
    }
    return applyMacenko(packed, t ?? MACENKO_DEFAULT_TARGET);
  }
  if (method === "reinhard") {
    if (!t || !("std" in t)) {
      throw new TypeError("Cannot normalise with reinhard: a Reinhard target is required");
    }
    return applyReinhard(packed, t);
  }
  throw new TypeError(`Cannot normalise stains: unknown method "${method}" (macenko, reinhard, none)`);
}

/**
 * Stain-normalise decoded images of one size in place (upload, normalise on the GPU, read back): for
 * patch pipelines that keep RGB on the host (extract-patches, training). Returns the indices left unchanged.
 *
 * @example
 * ```ts
 * const { skipped } = await normalizeStainImages(engine, patches, "macenko", MACENKO_DEFAULT_TARGET);
 * ```
 */
export async function normalizeStainImages(
  engine: Engine,
  images: Pick<RgbImage, "width" | "height" | "data">[],
  method: StainMethod,
  target?: MacenkoTarget | ReinhardTarget,
): Promise<{ skipped: number[] }> {
  if (method === "none" || images.length === 0) return { skipped: [] };
  const packed = uploadImages(engine, images);
  try {
    const res = await normalizeStain(packed, method, { target });
    const data = await res.images.toArray();
    if (res.images !== packed) res.images.dispose();
    images.forEach((img, k) => {
      const n = img.width * img.height, o = k * n;
      for (let p = 0; p < n; p++) {
        const v = data[o + p]; // R + 256·G + 65536·B
        img.data[3 * p] = v % 256;
        img.data[3 * p + 1] = Math.floor(v / 256) % 256;
        img.data[3 * p + 2] = Math.floor(v / 65536);
      }
    });
    return { skipped: res.skipped };
  } finally {
    packed.dispose();
  }
}
