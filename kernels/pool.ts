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
 * All outputs and gradients are new tensors (overwrite); nothing accumulates.
 *
 * @module
 */
import { checkNCHW } from "./check.ts";
import { grid } from "../engine/engine.ts";
import { defineKernel, type Kernel, kernelCache } from "../engine/kernel.ts";
import type { Tensor } from "../engine/tensor.ts";
import { defineOp, isRecording, needsGrad } from "../engine/autograd.ts";

/** Options of {@linkcode maxPool2d}: a number means the same value for height and width. */
export interface MaxPool2dOptions {
  kernelSize: number | readonly [number, number];
  /** Default: `kernelSize`. */
  stride?: number | readonly [number, number];
  /** Implicit −∞ padding on each side, at most half the kernel (default 0). */
  padding?: number | readonly [number, number];
}

/** Options of {@linkcode globalAvgPool2d}. */
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
const cache = kernelCache<Kernel>();
const ENTRY = `@compute @workgroup_size(${WG}) fn main(@builtin(global_invocation_id) g: vec3u,
    @builtin(num_workgroups) nwg: vec3u)`;
const LINEAR_ID = "let i = g.x + g.y * (nwg.x * WG_X);";

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

// x: (N·C, H, W) → y: (N·C, Ho, Wo) and, with `indices`, idx: (N·C, Ho, Wo) = f32(argmax h·W + w).
// One thread per output. Windows are clipped to the input (−∞ padding); every window holds an input
// value because padding ≤ kernel / 2.
function maxForwardKernel(indices: boolean): Kernel {
  return cache(`max:${indices}`, () =>
    defineKernel({
      name: `maxpool2d${indices ? "_indices" : ""}`,
      bindings: [
        { name: "x", access: "read" },
        { name: "y", access: "read_write" },
        ...(indices ? [{ name: "idx", access: "read_write" } as const] : []),
      ],
      uniforms: { n: "u32", ...GEOMETRY },
      workgroupSize: [WG],
      body: String.raw`
${ENTRY} {
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
  let base = plane * p.h * p.w;
  var arg = hs * p.w + ws;
  var best = x[base + arg];
  for (var hh = hs; hh < h1; hh++) {
    for (var ww = ws; ww < w1; ww++) {
      let j = hh * p.w + ww;
      let v = x[base + j];
      if (v > best || v != v) {
        best = v;
        arg = j;
      }
    }
  }
  y[i] = best;
  ${indices ? "idx[i] = f32(arg);" : ""}
}`,
    }) as unknown as Kernel);
}

// dy, idx: (N·C, Ho, Wo) → dx: (N·C, H, W). One thread per input position (h, w); it visits the windows
// that contain it, oh ∈ [⌈(h + ph − kh + 1) / sh⌉, ⌊(h + ph) / sh⌋] ∩ [0, Ho) (likewise ow), in output
// order, and sums dy where the window's argmax is (h, w).
function maxBackwardKernel(): Kernel {
  return cache("max_bwd", () =>
    defineKernel({
      name: "maxpool2d_backward",
      bindings: [
        { name: "dy", access: "read" },
        { name: "idx", access: "read" },
        { name: "dx", access: "read_write" },
      ],
      uniforms: { n: "u32", ...GEOMETRY },
      workgroupSize: [WG],
      body: String.raw`
fn first_window(pos: u32, pad: u32, k: u32, s: u32) -> u32 {
  let a = i32(pos + pad) - i32(k) + 1;
  return select(0u, (u32(a) + s - 1u) / s, a > 0);
}
${ENTRY} {
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
      let o = (plane * p.ho + oh) * p.wo + ow;
      if (u32(idx[o]) == me) { acc += dy[o]; }
    }
  }
  dx[i] = acc;
}`,
    }) as unknown as Kernel);
}

// x: (R, L) → y: (R) = mean over L, one workgroup of 64 per row: strided compensated sums, then a tree.
function avgForwardKernel(): Kernel {
  return cache("avg", () =>
    defineKernel({
      name: "global_avgpool2d",
      bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
      uniforms: { rows: "u32", len: "u32", scale: "f32" },
      workgroupSize: [64],
      body: String.raw`
var<workgroup> sh: array<f32, 64>;
@compute @workgroup_size(64) fn main(@builtin(workgroup_id) wid: vec3u, @builtin(num_workgroups) nwg: vec3u,
    @builtin(local_invocation_index) t: u32) {
  let row = wid.x + wid.y * nwg.x;
  if (row >= p.rows) { return; }   // uniform per workgroup
  let base = row * p.len;
  var acc = 0.0;
  var comp = 0.0;
  for (var k = t; k < p.len; k += 64u) {
    let yk = x[base + k] - comp;
    let tk = acc + yk;
    comp = (tk - acc) - yk;
    acc = tk;
  }
  sh[t] = acc;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (t < s) { sh[t] += sh[t + s]; }
    workgroupBarrier();
  }
  if (t == 0u) { y[row] = sh[0] * p.scale; }
}`,
    }) as unknown as Kernel);
}

// dy: (R) → dx: (R, L) = dy / L.
function avgBackwardKernel(): Kernel {
  return cache("avg_bwd", () =>
    defineKernel({
      name: "global_avgpool2d_backward",
      bindings: [{ name: "dy", access: "read" }, { name: "dx", access: "read_write" }],
      uniforms: { n: "u32", len: "u32", scale: "f32" },
      workgroupSize: [WG],
      body: String.raw`
${ENTRY} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  dx[i] = dy[i / p.len] * p.scale;
}`,
    }) as unknown as Kernel);
}

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
 * the input plane, h·W + w, as f32) for {@linkcode maxPool2dBackward}.
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
  const [n, c, h, w] = checkInput("maxPool2d", x);
  const geo = maxPool2dGeometry(h, w, options);
  const e = x.engine;
  const shape = [n, c, geo.ho, geo.wo];
  const y = e.empty(shape, "maxpool2d");
  const idx = indices ? e.empty(shape, "maxpool2d indices") : null;
  if (y.size > 0) {
    e.run(maxForwardKernel(indices), {
      bindings: idx ? [x, y, idx] : [x, y],
      uniforms: { n: y.size, h, w, ...geo },
      workgroups: grid(y.size, WG),
      info: `[${x.shape}]→[${shape}] k${geo.kh}x${geo.kw} s${geo.sh}x${geo.sw} p${geo.ph}x${geo.pw}`,
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
  const dx = e.empty(xShape, "maxpool2d dx");
  if (dx.size > 0) {
    e.run(maxBackwardKernel(), {
      bindings: [dy, indices, dx],
      uniforms: { n: dx.size, h, w, ...geo },
      workgroups: grid(dx.size, WG),
      info: `[${dy.shape}]→[${xShape}]`,
    });
  }
  return dx;
}

const maxPoolOp = defineOp<[Tensor], MaxPool2dOptions, Tensor | null>({
  name: "maxPool2d",
  forward: ([x], o) => {
    // Indices are only computed (and kept) when the op will be recorded.
    const { y, indices } = maxPool2dForward(x, o, isRecording() && needsGrad(x));
    return { output: y, saved: indices };
  },
  backward: (gy, indices, [x], o) => [maxPool2dBackward(gy, indices!, x.shape, o)],
});

/**
 * `torch.nn.functional.max_pool2d` (dilation 1, floor mode); differentiable. The saved indices belong to
 * the current scope (the tape keeps its own reference).
 *
 * @example
 * ```ts
 * const y = maxPool2d(x, { kernelSize: 3, stride: 2, padding: 1 }); // [N, 64, 112, 112] → [N, 64, 56, 56]
 * ```
 */
export function maxPool2d(x: Tensor, options: MaxPool2dOptions): Tensor {
  return maxPoolOp([x], options);
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
  const [n, c, h, w] = checkInput("globalAvgPool2d", x);
  const e = x.engine;
  const len = h * w;
  const shape = options.keepDims ? [n, c, 1, 1] : [n, c];
  if (len === 0) return e.tensor(new Float32Array(n * c).fill(NaN), shape);
  const y = e.empty(shape, "avgpool2d");
  if (n * c > 0) {
    e.run(avgForwardKernel(), {
      bindings: [x, y],
      uniforms: { rows: n * c, len, scale: 1 / len },
      workgroups: grid(n * c, 1),
      info: `[${x.shape}]→[${shape}]`,
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
  const dx = e.empty(xShape, "avgpool2d dx");
  if (dx.size > 0) {
    e.run(avgBackwardKernel(), {
      bindings: [dy, dx],
      uniforms: { n: dx.size, len: h * w, scale: 1 / (h * w) },
      workgroups: grid(dx.size, WG),
      info: `[${dy.shape}]→[${xShape}]`,
    });
  }
  return dx;
}

const avgPoolOp = defineOp<[Tensor], GlobalAvgPool2dOptions, void>({
  name: "globalAvgPool2d",
  forward: ([x], o) => ({ output: globalAvgPool2dForward(x, o), saved: undefined }),
  backward: (gy, _s, [x]) => [globalAvgPool2dBackward(gy, x.shape)],
});

/**
 * `torch.nn.AdaptiveAvgPool2d((1, 1))` followed by a flatten: [N, C, H, W] → [N, C] (or [N, C, 1, 1] with
 * `keepDims`); differentiable.
 *
 * @example
 * ```ts
 * const features = globalAvgPool2d(x); // [N, 2048, 7, 7] → [N, 2048]
 * ```
 */
export function globalAvgPool2d(x: Tensor, options: GlobalAvgPool2dOptions = {}): Tensor {
  return avgPoolOp([x], options);
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

/**
 * Global average pool, [N, C, H, W] → [N, C] (PyTorch's `adaptive_avg_pool2d(x, 1)` then flatten);
 * differentiable. An alias of {@linkcode globalAvgPool2d}.
 *
 * @example
 * ```ts
 * const features = globalAvgPool(x); // (N, 2048, 7, 7) → (N, 2048)
 * ```
 */
export const globalAvgPool = (x: Tensor, options: GlobalAvgPool2dOptions = {}): Tensor =>
  globalAvgPool2d(x, options);
