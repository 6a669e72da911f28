/**
 * The HE2Gene input transform on the GPU: `img.crop(box).resize((224, 224), BILINEAR)` (PIL ≥ 7, bit
 * exact, see `resample.ts`; `BICUBIC` too), then `ToTensor()` and `Normalize(mean, std)`; a window of the
 * resized image (torchvision's `CenterCrop` after `Resize`, as timm's eval transform); and the eight
 * dihedral symmetries for test-time augmentation.
 *
 * Source images travel as one f32 per pixel holding `R + 256·G + 65536·B` (an integer < 2^24, exact in
 * f32; the engine's tensors are f32), shape `[M, H, W]`. The fixed-point weights (< 2^23) and tap bounds
 * travel as f32 too and are converted to i32 in the kernel, so all resampling arithmetic is PIL's integer
 * arithmetic: the horizontal pass is rounded and clipped to uint8 before the vertical pass reads it.
 * One invocation computes one output pixel (3 channels) and redoes the horizontal taps of the rows it
 * needs (2–3 rows when upsampling 150 → 224), instead of storing an intermediate image.
 *
 * All outputs are new tensors; nothing accumulates. No backward (inference only).
 *
 * @module
 */
import { type Engine, grid } from "../engine/engine.ts";
import { single } from "../engine/kernel.ts";
import type { Tensor } from "../engine/tensor.ts";
import { LINEAR_ID, linearEntry } from "../kernels/_wgsl.ts";
import type { RgbImage } from "./decode.ts";
import {
  checkBox,
  type CropBox,
  cropCpu,
  pilCoeffs,
  PRECISION_BITS,
  type ResampleFilter,
  resizeCpu,
} from "./resample.ts";

/** HE2Gene's `Normalize` mean (R, G, B). */
export const HE2GENE_MEAN = [0.5319, 0.5080, 0.6824] as const;
/** HE2Gene's `Normalize` std (R, G, B). */
export const HE2GENE_STD = [0.2442, 0.2063, 0.1633] as const;

const WG = 64;

/**
 * Pack decoded images of one size for {@linkcode resizeNormalize}: `[M, H, W]`, one f32 per pixel
 * holding `R + 256·G + 65536·B`.
 *
 * @example
 * ```ts
 * const src = uploadImages(engine, [decodeImage(bytes, "a.tif")]); // [1, 150, 150]
 * ```
 */
export function uploadImages(
  engine: Engine,
  images: readonly Pick<RgbImage, "width" | "height" | "data">[],
): Tensor {
  if (images.length === 0) throw new RangeError("Cannot upload images: the list is empty");
  const { width: w, height: h } = images[0];
  const packed = new Float32Array(images.length * w * h);
  images.forEach((img, m) => {
    if (img.width !== w || img.height !== h) {
      throw new RangeError(
        `Cannot upload images of different sizes: image 0 is ${w}×${h}, image ${m} is ${img.width}×${img.height}`,
      );
    }
    const d = img.data;
    if (d.length !== w * h * 3) {
      throw new RangeError(`Cannot upload image ${m}: expected ${w * h * 3} bytes (RGB), got ${d.length}`);
    }
    const base = m * w * h;
    for (let i = 0; i < w * h; i++) packed[base + i] = d[3 * i] + 256 * d[3 * i + 1] + 65536 * d[3 * i + 2];
  });
  return engine.tensor(packed, [images.length, h, w]);
}

/** Options for {@linkcode resizeNormalize}. */
export interface ResizeOptions {
  /** Output `[height, width]` (torchvision's order) or one number for a square (default 224). */
  size?: number | readonly [number, number];
  /**
   * Crops `[left, upper, right, lower]` taken from every image before resizing, as `img.crop(box)`
   * (pixels outside the source are 0). All boxes must have the same width and height. Default: the whole
   * image. Output item `i · boxes.length + j` is image `i`, box `j`.
   */
  boxes?: readonly CropBox[];
  /** Which source images (default all, in order). */
  images?: readonly number[];
  /** PIL's `BILINEAR` (default) or `BICUBIC`. */
  filter?: ResampleFilter;
  /**
   * A window `[left, upper, right, lower]` of the resized image (`size`) kept after resizing, as
   * torchvision's `CenterCrop` after `Resize`: the output is the window's size, pixels outside the resized
   * image are 0 (torchvision's padding). Default: the whole resized image.
   */
  window?: CropBox;
  /** Per-channel mean (default {@linkcode HE2GENE_MEAN}); `[0, 0, 0]` with std `[1, 1, 1]` gives `ToTensor()`. */
  mean?: readonly [number, number, number];
  /** Per-channel std (default {@linkcode HE2GENE_STD}). */
  std?: readonly [number, number, number];
}

function resolveSize(size: ResizeOptions["size"]): [number, number] {
  const [h, w] = typeof size === "number" ? [size, size] : size ?? [224, 224];
  if (!Number.isInteger(h) || !Number.isInteger(w) || h < 1 || w < 1) {
    throw new RangeError(`Cannot resize: size must be positive integers, current value is [${h}, ${w}]`);
  }
  return [h, w];
}

// y[n, c, oy, ox] = (clip8(Σ_ky wv[ky] · clip8(Σ_kx wh[kx] · crop[n][vs + ky][hs + kx][c])) / 255 − mean[c]) / std[c]
// src: [M, H, W] packed RGB; items: [N, 3] (image, left, top); cf: bounds and weights (see coeffTable).
const resizeKernel = single("resize_pil", () => ({
  bindings: [
    { name: "src", access: "read" },
    { name: "items", access: "read" },
    { name: "cf", access: "read" },
    { name: "y", access: "read_write" },
  ],
  uniforms: {
    n: "u32",
    srcW: "u32",
    srcH: "u32",
    outW: "u32",
    outH: "u32",
    kh: "u32",
    kv: "u32",
    m0: "f32",
    m1: "f32",
    m2: "f32",
    s0: "f32",
    s1: "f32",
    s2: "f32",
  },
  workgroupSize: [WG],
  body: String.raw`
const HALF: i32 = ${1 << (PRECISION_BITS - 1)};
// PIL's clip8: ≤ 0 → 0, ≥ 256·2^22 → 255, else v >> 22.
fn clip8(v: vec3<i32>) -> vec3<i32> {
  return clamp(v >> vec3<u32>(${PRECISION_BITS}u), vec3<i32>(0), vec3<i32>(255));
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n * p.outH * p.outW) { return; }
  let ox = i % p.outW;
  let t = i / p.outW;
  let oy = t % p.outH;
  let n = t / p.outH;
  let img = u32(items[n * 3u]);
  let left = i32(items[n * 3u + 1u]);
  let top = i32(items[n * 3u + 2u]);
  // cf = [hStart(outW), hCount(outW), vStart(outH), vCount(outH), hW(outW·kh), vW(outH·kv)]
  let hs = i32(cf[ox]);
  let hc = i32(cf[p.outW + ox]);
  let vs = i32(cf[2u * p.outW + oy]);
  let vc = i32(cf[2u * p.outW + p.outH + oy]);
  let wh = 2u * (p.outW + p.outH) + ox * p.kh;
  let wv = 2u * (p.outW + p.outH) + p.outW * p.kh + oy * p.kv;
  let plane = img * p.srcH * p.srcW;
  var acc = vec3<i32>(HALF);
  for (var ky = 0; ky < vc; ky++) {
    let sy = top + vs + ky;
    var h = vec3<i32>(HALF);
    if (sy >= 0 && sy < i32(p.srcH)) {
      let row = plane + u32(sy) * p.srcW;
      for (var kx = 0; kx < hc; kx++) {
        let sx = left + hs + kx;
        if (sx >= 0 && sx < i32(p.srcW)) {
          let v = u32(src[row + u32(sx)]);
          let px = vec3<i32>(i32(v & 255u), i32((v >> 8u) & 255u), i32(v >> 16u));
          h += px * i32(cf[wh + u32(kx)]);
        }
      }
    }
    acc += clip8(h) * i32(cf[wv + u32(ky)]);
  }
  let o = vec3<f32>(clip8(acc));
  // ToTensor then Normalize, in float32 as torchvision: (v / 255 − mean) / std.
  let hw = p.outH * p.outW;
  let base = n * 3u * hw + oy * p.outW + ox;
  y[base] = (o.x / 255.0 - p.m0) / p.s0;
  y[base + hw] = (o.y / 255.0 - p.m1) / p.s1;
  y[base + 2u * hw] = (o.z / 255.0 - p.m2) / p.s2;
}`,
}));

// Coefficient tables, cached per engine and geometry (they never change).
const tables = new WeakMap<Engine, Map<string, { t: Tensor; kh: number; kv: number }>>();

// The coefficients of outputs [w0, w0 + n) of an axis resized inSize → outSize; outputs outside
// [0, outSize) read nothing (count 0: the kernel gives 0 there, torchvision's padding).
function axisWindow(inSize: number, outSize: number, filter: ResampleFilter, w0: number, n: number) {
  const c = pilCoeffs(inSize, outSize, filter);
  const start = new Int32Array(n), count = new Int32Array(n), weights = new Int32Array(n * c.ksize);
  for (let i = 0; i < n; i++) {
    const j = w0 + i;
    if (j < 0 || j >= outSize) continue;
    start[i] = c.start[j];
    count[i] = c.count[j];
    weights.set(c.weights.subarray(j * c.ksize, (j + 1) * c.ksize), i * c.ksize);
  }
  return { start, count, weights, ksize: c.ksize };
}

function coeffTable(
  e: Engine,
  inW: number,
  inH: number,
  outW: number,
  outH: number,
  filter: ResampleFilter,
  win: CropBox,
) {
  let m = tables.get(e);
  if (!m) tables.set(e, m = new Map());
  const key = `${inW}x${inH}->${outW}x${outH} ${filter} [${win}]`;
  let entry = m.get(key);
  if (!entry || entry.t.disposed) {
    const ww = win[2] - win[0], wh = win[3] - win[1];
    const h = axisWindow(inW, outW, filter, win[0], ww);
    const v = axisWindow(inH, outH, filter, win[1], wh);
    const data = new Float32Array(2 * (ww + wh) + ww * h.ksize + wh * v.ksize);
    let o = 0;
    for (const a of [h.start, h.count, v.start, v.count, h.weights, v.weights]) {
      data.set(a, o);
      o += a.length;
    }
    entry = { t: e.tensor(data, [data.length]).keep(), kh: h.ksize, kv: v.ksize };
    m.set(key, entry);
  }
  return entry;
}

/**
 * Crop, resize (PIL-exact bilinear or bicubic), take a window, scale to [0, 1] and normalise a batch of
 * packed images: `[M, H, W]` → `[N, 3, outH, outW]` with `N = images × boxes` (`outH × outW`: the window's,
 * else `size`).
 *
 * @example
 * ```ts
 * const src = uploadImages(engine, patches);                       // [M, 150, 150]
 * const x = resizeNormalize(src);                                  // [M, 3, 224, 224]
 * const c = resizeNormalize(src, { boxes: [centerBox(150, 150, 75)] }); // centre 75×75 crops
 * // timm's eval transform at crop_pct 0.875: Resize(256, BICUBIC), CenterCrop(224)
 * const t = resizeNormalize(src, { size: 256, filter: "bicubic", window: [16, 16, 240, 240] });
 * ```
 */
export function resizeNormalize(src: Tensor, options: ResizeOptions = {}): Tensor {
  if (src.rank !== 3) {
    throw new RangeError(
      `Cannot resizeNormalize: expected packed images [M, H, W], current shape is [${src.shape}]`,
    );
  }
  const e = src.engine;
  const [M, H, W] = src.shape;
  const [sizeH, sizeW] = resolveSize(options.size);
  const win = options.window ?? [0, 0, sizeW, sizeH];
  checkBox(win, "resizeNormalize (window)");
  const outW = win[2] - win[0], outH = win[3] - win[1];
  const filter = options.filter ?? "bilinear";
  const boxes = options.boxes ?? [[0, 0, W, H] as const];
  if (boxes.length === 0) throw new RangeError("Cannot resizeNormalize: boxes is empty");
  for (const b of boxes) checkBox(b, "resizeNormalize");
  const cw = boxes[0][2] - boxes[0][0], ch = boxes[0][3] - boxes[0][1];
  const odd = boxes.findIndex((b) => b[2] - b[0] !== cw || b[3] - b[1] !== ch);
  if (odd >= 0) {
    throw new RangeError(
      `Cannot resizeNormalize: all boxes must have one size; box 0 is ${cw}×${ch}, box ${odd} is [${
        boxes[odd]
      }]`,
    );
  }
  const images = options.images ?? Array.from({ length: M }, (_, i) => i);
  const badImg = images.find((i) => !Number.isInteger(i) || i < 0 || i >= M);
  if (badImg !== undefined) {
    throw new RangeError(`Cannot resizeNormalize: image index ${badImg} is outside [0, ${M})`);
  }
  const mean = options.mean ?? HE2GENE_MEAN, std = options.std ?? HE2GENE_STD;
  const N = images.length * boxes.length;
  const items = new Float32Array(N * 3);
  images.forEach((m, i) => boxes.forEach((b, j) => items.set([m, b[0], b[1]], (i * boxes.length + j) * 3)));
  const { t: cf, kh, kv } = coeffTable(e, cw, ch, sizeW, sizeH, filter, win);
  const y = e.empty([N, 3, outH, outW], "resize");
  if (N === 0) return y;
  if (y.bytes > e.maxBinding || src.bytes > e.maxBinding) {
    y.dispose();
    throw new RangeError(
      `Cannot resizeNormalize [${src.shape}] to [${y.shape}]: larger than one storage binding ` +
        `(${e.maxBinding} bytes); use a smaller batch`,
    );
  }
  const it = e.tensor(items, [N, 3]);
  e.run(resizeKernel(), {
    bindings: [src, it, cf, y],
    uniforms: {
      n: N,
      srcW: W,
      srcH: H,
      outW,
      outH,
      kh,
      kv,
      m0: mean[0],
      m1: mean[1],
      m2: mean[2],
      s0: std[0],
      s1: std[1],
      s2: std[2],
    },
    workgroups: grid(N * outH * outW, WG),
    info: `[${src.shape}] crop ${cw}x${ch} → ${sizeW}x${sizeH} ${filter} → [${y.shape}]`,
  });
  // Recorded work keeps reading the old contents (GPU work runs in recording order).
  it.dispose();
  return y;
}

/**
 * CPU reference of {@linkcode resizeNormalize} for one image and box: PIL resize (`resizeCpu`), the window
 * (`cropCpu`: 0 outside), then ToTensor + Normalize in float32. Returns `[3, outH, outW]`.
 */
export function resizeNormalizeCpu(
  img: Pick<RgbImage, "width" | "height" | "data">,
  options: Omit<ResizeOptions, "boxes" | "images"> & { box?: CropBox } = {},
): Float32Array {
  const [outH, outW] = resolveSize(options.size);
  let r = resizeCpu(img, [outW, outH], { box: options.box, filter: options.filter });
  if (options.window) r = cropCpu(r, options.window);
  return normalizeCpu(r.data, r.width, r.height, options.mean ?? HE2GENE_MEAN, options.std ?? HE2GENE_STD);
}

/** ToTensor + Normalize of uint8 HWC RGB in float32, as torchvision: `[3, H, W]`. */
export function normalizeCpu(
  data: Uint8Array,
  width: number,
  height: number,
  mean: readonly number[] = HE2GENE_MEAN,
  std: readonly number[] = HE2GENE_STD,
): Float32Array {
  const f = Math.fround;
  const out = new Float32Array(3 * width * height);
  const hw = width * height;
  for (let c = 0; c < 3; c++) {
    const m = f(mean[c]), s = f(std[c]);
    for (let i = 0; i < hw; i++) out[c * hw + i] = f(f(f(data[3 * i + c] / 255) - m) / s);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ dihedral

/**
 * The eight symmetries of the square, indexed by `k` in 0..7 with bits `k = hflip | vflip << 1 | rot90 << 2`,
 * applied in that order (`rot90(vflip(hflip(x)))`), torchvision conventions: hflip reverses width,
 * vflip reverses height, rot90 is `torch.rot90(x, 1, [2, 3])` (counter-clockwise; `[H, W]` → `[W, H]`).
 *
 * | k | transform | k | transform |
 * |---|-----------|---|-----------|
 * | 0 | identity | 4 | rot90 |
 * | 1 | hflip | 5 | rot90 ∘ hflip |
 * | 2 | vflip | 6 | rot90 ∘ vflip |
 * | 3 | hflip + vflip (= rot180) | 7 | rot90 ∘ rot180 (= rot270) |
 */
export const DIHEDRAL_NAMES = [
  "identity",
  "hflip",
  "vflip",
  "rot180",
  "rot90",
  "rot90(hflip)",
  "rot90(vflip)",
  "rot270",
] as const;

// y[nc, i, j] = x[nc, a, b] with (a, b) from the inverse of rot90 ∘ vflip ∘ hflip.
const dihedralKernel = single("dihedral", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { n: "u32", h: "u32", w: "u32", k: "u32" },
  workgroupSize: [WG],
  body: String.raw`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let rot = (p.k & 4u) != 0u;
  let wo = select(p.w, p.h, rot); // output width
  let col = i % wo;
  let t = i / wo;
  let ho = select(p.h, p.w, rot);
  let row = t % ho;
  let nc = t / ho;
  // Undo rot90: out[row][col] = in[col][W − 1 − row].
  var a = select(row, col, rot);
  var b = select(col, p.w - 1u - row, rot);
  if ((p.k & 2u) != 0u) { a = p.h - 1u - a; }
  if ((p.k & 1u) != 0u) { b = p.w - 1u - b; }
  y[i] = x[(nc * p.h + a) * p.w + b];
}`,
}));

function checkDihedral(shape: readonly number[], k: number): void {
  if (shape.length !== 4) {
    throw new RangeError(`Cannot dihedral: expected [N, C, H, W], current shape is [${shape}]`);
  }
  if (!Number.isInteger(k) || k < 0 || k > 7) {
    throw new RangeError(`Cannot dihedral: k must be an integer in 0..7, current value is ${k}`);
  }
}

/**
 * Apply dihedral symmetry `k` (see {@linkcode DIHEDRAL_NAMES}) to an NCHW batch; `[N, C, H, W]` →
 * `[N, C, H, W]` (k < 4) or `[N, C, W, H]` (k ≥ 4).
 *
 * @example
 * ```ts
 * const views = [0, 1, 2, 3, 4, 5, 6, 7].map((k) => dihedral(x, k)); // 8-fold TTA
 * ```
 */
export function dihedral(x: Tensor, k: number): Tensor {
  checkDihedral(x.shape, k);
  const [N, C, H, W] = x.shape;
  const e = x.engine;
  const y = e.empty(k & 4 ? [N, C, W, H] : [N, C, H, W], "dihedral");
  if (y.size === 0) return y;
  e.run(dihedralKernel(), {
    bindings: [x, y],
    uniforms: { n: y.size, h: H, w: W, k },
    workgroups: grid(y.size, WG),
    info: `[${x.shape}] k=${k}`,
  });
  return y;
}

// Per-sample symmetry: k of sample n from ks[n] (square images, so shapes do not change).
const dihedralEachKernel = single("dihedral_each", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "ks", access: "read" }, {
    name: "y",
    access: "read_write",
  }],
  uniforms: { n: "u32", s: "u32", c: "u32" },
  workgroupSize: [WG],
  body: String.raw`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let col = i % p.s;
  let t = i / p.s;
  let row = t % p.s;
  let nc = t / p.s;
  let k = u32(ks[nc / p.c]);
  let rot = (k & 4u) != 0u;
  var a = select(row, col, rot);
  var b = select(col, p.s - 1u - row, rot);
  if ((k & 2u) != 0u) { a = p.s - 1u - a; }
  if ((k & 1u) != 0u) { b = p.s - 1u - b; }
  y[i] = x[(nc * p.s + a) * p.s + b];
}`,
}));

/**
 * Apply symmetry `ks[n]` to sample `n` of a square NCHW batch (random flips and 90° rotations for
 * training, one dispatch for the whole batch).
 *
 * @example
 * ```ts
 * const augmented = dihedralEach(x, [0, 5, 3, 7]); // x: [4, 3, 224, 224]
 * ```
 */
export function dihedralEach(x: Tensor, ks: readonly number[]): Tensor {
  const [N, C, H, W] = x.shape;
  if (x.rank !== 4 || H !== W) {
    throw new RangeError(`Cannot dihedralEach: expected square [N, C, S, S], current shape is [${x.shape}]`);
  }
  if (ks.length !== N) throw new RangeError(`Cannot dihedralEach: ${ks.length} symmetries for ${N} samples`);
  for (const k of ks) checkDihedral(x.shape, k);
  const e = x.engine;
  const y = e.empty(x.shape, "dihedral_each");
  if (y.size === 0) return y;
  const kt = e.tensor(Float32Array.from(ks), [N]);
  e.run(dihedralEachKernel(), {
    bindings: [x, kt, y],
    uniforms: { n: y.size, s: H, c: C },
    workgroups: grid(y.size, WG),
    info: `[${x.shape}]`,
  });
  kt.dispose();
  return y;
}

/** CPU reference of {@linkcode dihedral}. */
export function dihedralCpu(x: ArrayLike<number>, shape: readonly number[], k: number): Float32Array {
  checkDihedral(shape, k);
  const [N, C, H, W] = shape;
  const rot = (k & 4) !== 0;
  const ho = rot ? W : H, wo = rot ? H : W;
  const y = new Float32Array(N * C * H * W);
  for (let nc = 0; nc < N * C; nc++) {
    for (let i = 0; i < ho; i++) {
      for (let j = 0; j < wo; j++) {
        let a = rot ? j : i, b = rot ? W - 1 - i : j;
        if (k & 2) a = H - 1 - a;
        if (k & 1) b = W - 1 - b;
        y[(nc * ho + i) * wo + j] = x[(nc * H + a) * W + b];
      }
    }
  }
  return y;
}
