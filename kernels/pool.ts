/**
 * Pooling over NCHW float32 tensors with PyTorch's semantics: max pooling (`torch.nn.MaxPool2d`, any
 * kernel / stride / padding, dilation 1, floor mode) and global average pooling
 * (`torch.nn.AdaptiveAvgPool2d((1, 1))`).
 *
 * Max pooling treats padding as −∞ (it never wins) and picks the first maximum in row-major window order,
 * as PyTorch's CPU kernel does; a NaN wins. Forward saves the argmax of every window as its index in the
 * input plane (h·W + w, encoded in f32, exact below 2²⁴). Backward gathers instead of scattering: each input
 * position sums dy over the windows that contain it and whose argmax it is, so overlapping windows need
 * no float atomics. Global average backward broadcasts dy / (H·W).
 *
 * All outputs and gradients are new tensors (overwrite); nothing accumulates. Tensors larger than one
 * storage binding run as several runs of whole planes (kernels/_ranges.ts). The differentiable
 * `maxPool2d` and `globalAvgPool2d` (autograd) are in ops/pool.ts.
 *
 * @module
 */
import { checkNCHW } from "./check.ts";
import { grid } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import type { Tensor } from "../engine/tensor.ts";
import { kahanAdd, LINEAR_ID, linearEntry, treeReduce, wgsl, WORKGROUP_ID, workgroupEntry } from "./_wgsl.ts";
import { bindElements, rowRuns } from "./_ranges.ts";
import { flatLoad, textureReads } from "../engine/flat.ts";

/** Options of {@linkcode maxPool2dForward} (and `maxPool2d` in ops/): a number means the same value for height and width. */
export interface MaxPool2dOptions {
  kernelSize: number | readonly [number, number];
  /** Default: `kernelSize`. */
  stride?: number | readonly [number, number];
  /** Implicit −∞ padding on each side, at most half the kernel (default 0). */
  padding?: number | readonly [number, number];
}

/** Options of {@linkcode globalAvgPool2dForward} (and `globalAvgPool2d` in ops/). */
export interface GlobalAvgPool2dOptions {
  /** Return [N, C, 1, 1] instead of [N, C] (default false). */
  keepDims?: boolean;
}

/** Resolved max-pool geometry. */
export interface PoolGeometry {
  kh: number;
  kw: number;
  sh: number;
  sw: number;
  ph: number;
  pw: number;
  /** Output height and width. */
  ho: number;
  wo: number;
}

const WG = 256;

const GEOMETRY = {
  h: "u32",
  w: "u32",
  ho: "u32",
  wo: "u32",
  kh: "u32",
  kw: "u32",
  sh: "u32",
  sw: "u32",
  ph: "u32",
  pw: "u32",
} as const;

// Every kernel sees one run of whole planes (kernels/_ranges.ts): input plane j of the run starts at
// x[xoff + j·H·W], output plane j at y[yoff + j·Ho·Wo]; a tensor that fits one binding is one run, offsets 0.

// x: (planes, H, W) → y: (planes, Ho, Wo) and, with `indices`, idx: (planes, Ho, Wo) = f32(argmax h·W + w).
// One thread per output. Windows are clipped to the input (−∞ padding); every window holds an input
// value because padding ≤ kernel / 2.
// With `tex`, x is read from its flat texture (engine/flat.ts; software adapters): the same values.
const maxForwardKernel = variants("maxpool2d", (p: { indices: boolean; tex?: boolean }) => ({
  bindings: [
    p.tex
      ? { name: "X", access: "read", texture: "sampled" } as const
      : { name: "x", access: "read" } as const,
    { name: "y", access: "read_write" },
    ...(p.indices ? [{ name: "idx", access: "read_write" } as const] : []),
  ],
  uniforms: { n: "u32", ...GEOMETRY, xoff: "u32", yoff: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let ow = i % p.wo;
  let oh = (i / p.wo) % p.ho;
  let plane = i / (p.wo * p.ho);
  let h0 = i32(oh * p.sh) - i32(p.ph);
  let w0 = i32(ow * p.sw) - i32(p.pw);
  let h1 = u32(min(h0 + i32(p.kh), i32(p.h)));
  let w1 = u32(min(w0 + i32(p.kw), i32(p.w)));
  let hs = u32(max(h0, 0));
  let ws = u32(max(w0, 0));
  let base = p.xoff + plane * p.h * p.w;
  var arg = hs * p.w + ws;
  var best = ${p.tex ? flatLoad("X", "base + arg") : "x[base + arg]"};
  for (var hh = hs; hh < h1; hh++) {
    for (var ww = ws; ww < w1; ww++) {
      let j = hh * p.w + ww;
      let v = ${p.tex ? flatLoad("X", "base + j") : "x[base + j]"};
      if (v > best || v != v) {
        best = v;
        arg = j;
      }
    }
  }
  y[p.yoff + i] = best;
#if ${p.indices}
  idx[p.yoff + i] = f32(arg);
#endif
}`,
}));

// dy, idx: (planes, Ho, Wo) → dx: (planes, H, W). One thread per input position (h, w); it visits the
// windows that contain it, oh ∈ [⌈(h + ph − kh + 1) / sh⌉, ⌊(h + ph) / sh⌋] ∩ [0, Ho) (likewise ow), in
// output order, and sums dy where the window's argmax is (h, w).
const maxBackwardKernel = single("maxpool2d_backward", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "idx", access: "read" },
    { name: "dx", access: "read_write" },
  ],
  uniforms: { n: "u32", ...GEOMETRY, xoff: "u32", yoff: "u32" },
  workgroupSize: [WG],
  body: wgsl`
fn first_window(pos: u32, pad: u32, k: u32, s: u32) -> u32 {
  let a = i32(pos + pad) - i32(k) + 1;
  return select(0u, (u32(a) + s - 1u) / s, a > 0);
}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let xw = i % p.w;
  let xh = (i / p.w) % p.h;
  let plane = i / (p.w * p.h);
  let me = xh * p.w + xw;
  let oh0 = first_window(xh, p.ph, p.kh, p.sh);
  let ow0 = first_window(xw, p.pw, p.kw, p.sw);
  let oh1 = min((xh + p.ph) / p.sh + 1u, p.ho);
  let ow1 = min((xw + p.pw) / p.sw + 1u, p.wo);
  var acc = 0.0;
  for (var oh = oh0; oh < oh1; oh++) {
    for (var ow = ow0; ow < ow1; ow++) {
      let o = p.yoff + (plane * p.ho + oh) * p.wo + ow;
      if (u32(idx[o]) == me) { acc += dy[o]; }
    }
  }
  dx[p.xoff + i] = acc;
}`,
}));

const AVG_WG = 64;

// x: (rows, L) → y: (rows) = mean over L, one workgroup of 64 per row: strided compensated sums, then a
// tree.
const avgForwardKernel = single("global_avgpool2d", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { rows: "u32", len: "u32", scale: "f32", xoff: "u32", yoff: "u32" },
  workgroupSize: [AVG_WG],
  body: wgsl`
var<workgroup> sh: array<f32, ${AVG_WG}>;
${workgroupEntry(AVG_WG)} {
  ${WORKGROUP_ID}
  if (w >= p.rows) { return; }   // uniform per workgroup
  let base = p.xoff + w * p.len;
  var acc = 0.0;
  var comp = 0.0;
  for (var k = t; k < p.len; k += ${AVG_WG}u) {
    ${kahanAdd("acc", "comp", "x[base + k]")}
  }
  sh[t] = acc;
  ${treeReduce("sh", AVG_WG, (a, b) => `${a} + ${b}`)}
  if (t == 0u) { y[p.yoff + w] = sh[0] * p.scale; }
}`,
}));

// x: (rows, L) → y: (rows) = mean over L for short rows (a 7 × 7 plane) on software adapters: one
// invocation per row, a compensated sum in order, x from its flat texture (engine/flat.ts) where it has one,
// else from storage (the same bits either way, so they do not depend on the batch size). The tree above
// runs 64 invocations and six barriers per row for 49 values, which llvmpipe pays for dearly.
const avgSerialKernel = variants("global_avgpool2d_serial", (v: { tex: boolean }) => ({
  bindings: [
    v.tex
      ? { name: "X", access: "read", texture: "sampled" } as const
      : { name: "x", access: "read" } as const,
    { name: "y", access: "read_write" },
  ],
  uniforms: { rows: "u32", len: "u32", scale: "f32", xoff: "u32", yoff: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.rows) { return; }
  let base = p.xoff + i * p.len;
  var acc = 0.0;
  var comp = 0.0;
  for (var k = 0u; k < p.len; k++) {
    ${kahanAdd("acc", "comp", v.tex ? flatLoad("X", "base + k") : "x[base + k]")}
  }
  y[p.yoff + i] = acc * p.scale;
}`,
}));

/** Rows of at most this many values take {@linkcode avgSerialKernel} on software adapters. */
const AVG_SERIAL_MAX = 256;

// dy: (rows) → dx: (rows, L) = dy / L.
const avgBackwardKernel = single("global_avgpool2d_backward", () => ({
  bindings: [{ name: "dy", access: "read" }, { name: "dx", access: "read_write" }],
  uniforms: { n: "u32", len: "u32", scale: "f32", xoff: "u32", yoff: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  dx[p.xoff + i] = dy[p.yoff + i / p.len] * p.scale;
}`,
}));

// ---------------------------------------------------------------- launchers

const pair = (v: number | readonly [number, number]): [number, number] =>
  typeof v === "number" ? [v, v] : [v[0], v[1]];

const checkInput = checkNCHW;

/**
 * Resolve max-pool options for an input of height `h` and width `w`, with PyTorch's checks and its output
 * size ⌊(H + 2p − k) / s⌋ + 1.
 *
 * @example
 * ```ts
 * maxPool2dGeometry(112, 112, { kernelSize: 3, stride: 2, padding: 1 }); // ho = wo = 56
 * ```
 */
export function maxPool2dGeometry(h: number, w: number, options: MaxPool2dOptions): PoolGeometry {
  const [kh, kw] = pair(options.kernelSize);
  const [sh, sw] = pair(options.stride ?? options.kernelSize);
  const [ph, pw] = pair(options.padding ?? 0);
  const all = { kernelSize: [kh, kw], stride: [sh, sw], padding: [ph, pw] };
  for (const [name, v] of Object.entries(all)) {
    const min = name === "padding" ? 0 : 1;
    if (!v.every((d) => Number.isInteger(d) && d >= min)) {
      throw new RangeError(`Cannot maxPool2d: ${name} must be integers ≥ ${min}, current value is [${v}]`);
    }
  }
  if (2 * ph > kh || 2 * pw > kw) {
    throw new RangeError(
      `Cannot maxPool2d: padding must be at most half the kernel size, current value is [${ph},${pw}] ` +
        `for kernel [${kh},${kw}]`,
    );
  }
  const ho = Math.floor((h + 2 * ph - kh) / sh) + 1;
  const wo = Math.floor((w + 2 * pw - kw) / sw) + 1;
  if (ho < 1 || wo < 1) {
    throw new RangeError(
      `Cannot maxPool2d input of size ${h}×${w} with kernel [${kh},${kw}] and padding [${ph},${pw}]: ` +
        `output size ${ho}×${wo} is too small`,
    );
  }
  if (h * w >= 2 ** 24) {
    throw new RangeError(`Cannot maxPool2d: an input plane of ${h}×${w} is too large for f32 indices`);
  }
  return { kh, kw, sh, sw, ph, pw, ho, wo };
}

/**
 * Max-pool forward without autograd. With `indices` it also returns the argmax of each window (index in
 * the input plane, h·W + w, as f32) for {@linkcode maxPool2dBackward}. Tensors larger than one storage
 * binding run as several runs of whole planes.
 *
 * @example
 * ```ts
 * const { y, indices } = maxPool2dForward(x, { kernelSize: 3, stride: 2, padding: 1 }, true);
 * ```
 */
export function maxPool2dForward(
  x: Tensor,
  options: MaxPool2dOptions,
  indices = false,
): { y: Tensor; indices: Tensor | null } {
  const op = "maxPool2d";
  const [n, c, h, w] = checkInput(op, x);
  const geo = maxPool2dGeometry(h, w, options);
  const e = x.engine;
  const shape = [n, c, geo.ho, geo.wo];
  const inPlane = h * w, outPlane = geo.ho * geo.wo;
  const runs = rowRuns(e, op, n * c, [inPlane, outPlane], "plane");
  const y = e.empty(shape, "maxpool2d");
  const idx = indices ? e.empty(shape, "maxpool2d indices") : null;
  // One run: x through a flat texture where the adapter is a software one (texel fetches, not storage
  // loads, which are a loop over the SIMD lanes on llvmpipe).
  const X = runs.length === 1 ? textureReads(e, "pool.x", [x], x.size % 4 === 0)?.[0] ?? null : null;
  for (const r of runs) {
    const size = r.count * outPlane;
    if (size === 0) continue;
    const bx = bindElements(x, r.start * inPlane, r.count * inPlane);
    const by = bindElements(y, r.start * outPlane, size);
    const src = X ?? bx.binding;
    e.run(maxForwardKernel(X ? { indices, tex: true } : { indices }), {
      bindings: idx
        ? [src, by.binding, bindElements(idx, r.start * outPlane, size).binding]
        : [src, by.binding],
      uniforms: { n: size, h, w, ...geo, xoff: bx.off, yoff: by.off },
      workgroups: grid(size, WG),
      info: `[${x.shape}]→[${shape}] k${geo.kh}x${geo.kw} s${geo.sh}x${geo.sw} p${geo.ph}x${geo.pw}` +
        (runs.length > 1 ? ` planes ${r.start}+${r.count}` : ""),
    });
  }
  return { y, indices: idx };
}

/**
 * Max-pool backward: dx (shape `xShape`) from dy and the saved argmax indices. A new tensor.
 *
 * @example
 * ```ts
 * const dx = maxPool2dBackward(dy, indices, x.shape, { kernelSize: 3, stride: 2, padding: 1 });
 * ```
 */
export function maxPool2dBackward(
  dy: Tensor,
  indices: Tensor,
  xShape: readonly number[],
  options: MaxPool2dOptions,
): Tensor {
  const [n, c, h, w] = xShape;
  const geo = maxPool2dGeometry(h, w, options);
  const want = [n, c, geo.ho, geo.wo];
  if (dy.rank !== 4 || dy.shape.some((d, i) => d !== want[i]) || indices.size !== dy.size) {
    throw new RangeError(
      `Cannot maxPool2d backward: dy has shape [${dy.shape}] and indices [${indices.shape}], expected [${want}]`,
    );
  }
  const e = dy.engine;
  const inPlane = h * w, outPlane = geo.ho * geo.wo;
  const runs = rowRuns(e, "maxPool2d backward", n * c, [inPlane, outPlane], "plane");
  const dx = e.empty(xShape, "maxpool2d dx");
  for (const r of runs) {
    const size = r.count * inPlane;
    if (size === 0) continue;
    const bdy = bindElements(dy, r.start * outPlane, r.count * outPlane);
    const bdx = bindElements(dx, r.start * inPlane, size);
    e.run(maxBackwardKernel(), {
      bindings: [
        bdy.binding,
        bindElements(indices, r.start * outPlane, r.count * outPlane).binding,
        bdx.binding,
      ],
      uniforms: { n: size, h, w, ...geo, xoff: bdx.off, yoff: bdy.off },
      workgroups: grid(size, WG),
      info: `[${dy.shape}]→[${xShape}]` + (runs.length > 1 ? ` planes ${r.start}+${r.count}` : ""),
    });
  }
  return dx;
}

/**
 * Global average pool without autograd: [N, C, H, W] → [N, C] (or [N, C, 1, 1] with `keepDims`).
 *
 * @example
 * ```ts
 * const features = globalAvgPool2dForward(x); // [N, 2048, 7, 7] → [N, 2048]
 * ```
 */
export function globalAvgPool2dForward(x: Tensor, options: GlobalAvgPool2dOptions = {}): Tensor {
  const op = "globalAvgPool2d";
  const [n, c, h, w] = checkInput(op, x);
  const e = x.engine;
  const len = h * w;
  const shape = options.keepDims ? [n, c, 1, 1] : [n, c];
  if (len === 0) return e.tensor(new Float32Array(n * c).fill(NaN), shape);
  const runs = rowRuns(e, op, n * c, [len, 1], "plane");
  const y = e.empty(shape, "avgpool2d");
  const serial = e.adapterInfo.software && len <= AVG_SERIAL_MAX;
  // From 2¹⁶ values, one run: x through its flat texture.
  const X = serial && runs.length === 1
    ? textureReads(e, "pool.x", [x], x.size % 4 === 0)?.[0] ?? null
    : null;
  if (X) {
    e.run(avgSerialKernel({ tex: true }), {
      bindings: [X, y],
      uniforms: { rows: n * c, len, scale: 1 / len, xoff: 0, yoff: 0 },
      workgroups: grid(n * c, WG),
      info: `[${x.shape}]→[${shape}] serial`,
    });
    return y;
  }
  for (const r of runs) {
    if (r.count === 0) continue;
    const bx = bindElements(x, r.start * len, r.count * len);
    const by = bindElements(y, r.start, r.count);
    if (serial) {
      e.run(avgSerialKernel({ tex: false }), {
        bindings: [bx.binding, by.binding],
        uniforms: { rows: r.count, len, scale: 1 / len, xoff: bx.off, yoff: by.off },
        workgroups: grid(r.count, WG),
        info: `[${x.shape}]→[${shape}] serial` + (runs.length > 1 ? ` rows ${r.start}+${r.count}` : ""),
      });
      continue;
    }
    e.run(avgForwardKernel(), {
      bindings: [bx.binding, by.binding],
      uniforms: { rows: r.count, len, scale: 1 / len, xoff: bx.off, yoff: by.off },
      workgroups: grid(r.count, 1),
      info: `[${x.shape}]→[${shape}]` + (runs.length > 1 ? ` rows ${r.start}+${r.count}` : ""),
    });
  }
  return y;
}

/**
 * Global average pool backward: dx = dy / (H·W) broadcast over [N, C, H, W]. A new tensor.
 *
 * @example
 * ```ts
 * const dx = globalAvgPool2dBackward(dy, x.shape);
 * ```
 */
export function globalAvgPool2dBackward(dy: Tensor, xShape: readonly number[]): Tensor {
  const [n, c, h, w] = xShape;
  if (dy.size !== n * c) {
    throw new RangeError(`Cannot globalAvgPool2d backward: dy has shape [${dy.shape}], input [${xShape}]`);
  }
  const e = dy.engine;
  const len = h * w;
  const runs = rowRuns(e, "globalAvgPool2d backward", n * c, [len, 1], "plane");
  const dx = e.empty(xShape, "avgpool2d dx");
  for (const r of runs) {
    const size = r.count * len;
    if (size === 0) continue;
    const bdy = bindElements(dy, r.start, r.count);
    const bdx = bindElements(dx, r.start * len, size);
    e.run(avgBackwardKernel(), {
      bindings: [bdy.binding, bdx.binding],
      uniforms: { n: size, len, scale: 1 / len, xoff: bdx.off, yoff: bdy.off },
      workgroups: grid(size, WG),
      info: `[${dy.shape}]→[${xShape}]` + (runs.length > 1 ? ` rows ${r.start}+${r.count}` : ""),
    });
  }
  return dx;
}

// ---------------------------------------------------------------- CPU references

/** CPU reference of {@linkcode maxPool2dForward}: output, argmax indices (h·W + w) and output shape. */
export function maxPool2dCpu(
  x: Float32Array,
  shape: readonly number[],
  options: MaxPool2dOptions,
): { y: Float32Array; indices: Int32Array; shape: number[] } {
  const [n, c, h, w] = shape;
  const { kh, kw, sh, sw, ph, pw, ho, wo } = maxPool2dGeometry(h, w, options);
  const y = new Float32Array(n * c * ho * wo);
  const indices = new Int32Array(y.length);
  for (let plane = 0; plane < n * c; plane++) {
    for (let oh = 0; oh < ho; oh++) {
      for (let ow = 0; ow < wo; ow++) {
        let best = -Infinity, arg = -1;
        for (let i = 0; i < kh; i++) {
          for (let j = 0; j < kw; j++) {
            const hh = oh * sh - ph + i, ww = ow * sw - pw + j;
            if (hh < 0 || hh >= h || ww < 0 || ww >= w) continue; // −∞ padding
            const v = x[plane * h * w + hh * w + ww];
            if (arg < 0 || v > best || Number.isNaN(v)) {
              best = v;
              arg = hh * w + ww;
            }
          }
        }
        const o = (plane * ho + oh) * wo + ow;
        y[o] = best;
        indices[o] = arg;
      }
    }
  }
  return { y, indices, shape: [n, c, ho, wo] };
}

/** CPU reference of {@linkcode maxPool2dBackward}: scatter dy to the argmax, summing in float64. */
export function maxPool2dBackwardCpu(
  dy: Float32Array,
  indices: ArrayLike<number>,
  xShape: readonly number[],
): Float32Array {
  const [n, c, h, w] = xShape;
  const per = dy.length / (n * c);
  const dx = new Float64Array(n * c * h * w);
  for (let o = 0; o < dy.length; o++) dx[Math.floor(o / per) * h * w + indices[o]] += dy[o];
  return Float32Array.from(dx);
}

/** CPU reference of {@linkcode globalAvgPool2dForward} ([N, C] order), in float64. */
export function globalAvgPool2dCpu(x: Float32Array, shape: readonly number[]): Float32Array {
  const [n, c, h, w] = shape;
  const len = h * w;
  const y = new Float32Array(n * c);
  for (let r = 0; r < n * c; r++) {
    let s = 0;
    for (let k = 0; k < len; k++) s += x[r * len + k];
    y[r] = s / len;
  }
  return y;
}

/** CPU reference of {@linkcode globalAvgPool2dBackward}. */
export function globalAvgPool2dBackwardCpu(dy: Float32Array, xShape: readonly number[]): Float32Array {
  const len = xShape[2] * xShape[3];
  return Float32Array.from({ length: dy.length * len }, (_, i) => dy[Math.floor(i / len)] / len);
}
