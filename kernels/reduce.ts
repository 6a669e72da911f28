/**
 * Reductions over chosen axes: sum, mean, max.
 *
 * The input is viewed as `[outer, R, inner]` (R = the product of a contiguous run of reduced axes);
 * non-adjacent axes are reduced one run at a time. Each pass splits R into chunks, one workgroup slice
 * per chunk, and writes partials `[outer, P, inner]`; passes repeat until P = 1. Within a thread the sum
 * is compensated (Kahan), across threads it is a tree: 10⁷ elements sum to float32 accuracy.
 * Outputs are new tensors (overwrite).
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { type VariantParams, variants } from "../engine/kernel.ts";
import {
  kahanAdd,
  LINEAR_ID,
  linearEntry,
  NEG_MAX,
  treeReduce,
  wgsl,
  WORKGROUP_ID,
  workgroupEntry,
} from "./_wgsl.ts";
import { shapeSize, Tensor } from "../engine/tensor.ts";
import { defineOp } from "../engine/autograd.ts";
import { binary, broadcastTo } from "./elementwise.ts";

/** Reduction kinds. */
export type ReduceOp = "sum" | "mean" | "max";

/** Options for reductions. */
export interface ReduceOptions {
  /** Axes to reduce (negative counts from the end); default: all. */
  axes?: number | readonly number[];
  /** Keep reduced axes as size 1 (default false). */
  keepDims?: boolean;
}

const WG = 256;
/** Elements of R one workgroup reduces per row when inner = 1. */
const ROW_CHUNK = 8192;
/** Elements of R one thread reduces per column when inner > 1. */
const COL_CHUNK = 512;

/** Parameters of the reduction kernels: the combining operation. */
interface ReduceParams extends VariantParams {
  op: "sum" | "max";
}
const INIT = (p: ReduceParams) => (p.op === "max" ? NEG_MAX : "0.0");

// Rows (inner = 1): workgroup (o, c) reduces x[o, c·chunk .. (c+1)·chunk) into y[o, c].
const rowKernel = variants("reduce_rows", (p: ReduceParams) => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { outer: "u32", r: "u32", chunk: "u32", parts: "u32", scale: "f32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.outer * p.parts) { return; }   // uniform per workgroup
  let o = w / p.parts;
  let c = w % p.parts;
  let start = c * p.chunk;
  let end = min(start + p.chunk, p.r);
  let base = o * p.r;
  var acc = ${INIT(p)};
  var comp = 0.0;
  for (var k = start + t; k < end; k += ${WG}u) {
    let v = x[base + k];
#if ${p.op === "max"}
    acc = max(acc, v);
#else
    ${kahanAdd("acc", "comp", "v")}
#endif
  }
  sh[t] = acc;
  ${treeReduce("sh", WG, (a, b) => (p.op === "max" ? `max(${a}, ${b})` : `${a} + ${b}`))}
  if (t == 0u) { y[w] = sh[0] * p.scale; }
}`,
}));

// Columns (inner > 1): thread (o, c, i) reduces x[o, c·chunk.., i] over its chunk into y[o, c, i].
const colKernel = variants("reduce_cols", (p: ReduceParams) => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { outer: "u32", r: "u32", inner: "u32", chunk: "u32", parts: "u32", scale: "f32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.outer * p.parts * p.inner) { return; }
  let j = i % p.inner;
  let oc = i / p.inner;
  let c = oc % p.parts;
  let o = oc / p.parts;
  let start = c * p.chunk;
  let end = min(start + p.chunk, p.r);
  var acc = ${INIT(p)};
  var comp = 0.0;
  var idx = (o * p.r + start) * p.inner + j;
  for (var k = start; k < end; k++) {
    let v = x[idx];
    idx += p.inner;
#if ${p.op === "max"}
    acc = max(acc, v);
#else
    ${kahanAdd("acc", "comp", "v")}
#endif
  }
  y[i] = acc * p.scale;
}`,
}));

/** Normalise axes to sorted unique non-negative indices; throws a `RangeError` naming the op. */
export function normAxes(op: string, rank: number, axes?: number | readonly number[]): number[] {
  if (axes === undefined) return [...Array(rank).keys()];
  const list = typeof axes === "number" ? [axes] : [...axes];
  const out = new Set<number>();
  for (const a of list) {
    const n = a < 0 ? a + rank : a;
    if (!Number.isInteger(a) || n < 0 || n >= rank) {
      throw new RangeError(`Cannot ${op} over axis ${a}: tensor has rank ${rank}`);
    }
    out.add(n);
  }
  return [...out].sort((x, y) => x - y);
}

// One reduction of [outer, r, inner] → [outer, inner], in passes.
function reduceRun(x: Tensor, outer: number, r: number, inner: number, max: boolean, scale: number): Tensor {
  const e = x.engine;
  let cur = x;
  let curR = r;
  for (;;) {
    const rows = inner === 1;
    const chunk = rows ? ROW_CHUNK : COL_CHUNK;
    const parts = Math.max(1, Math.ceil(curR / chunk));
    const last = parts === 1;
    const out = e.empty([outer * parts * inner], max ? "max" : "sum");
    if (rows) {
      e.run(rowKernel({ op: max ? "max" : "sum" }), {
        bindings: [cur, out],
        uniforms: { outer, r: curR, chunk, parts, scale: last ? scale : 1 },
        workgroups: grid(outer * parts, 1),
        info: `[${outer},${curR}]→[${outer},${parts}]`,
      });
    } else {
      e.run(colKernel({ op: max ? "max" : "sum" }), {
        bindings: [cur, out],
        uniforms: { outer, r: curR, inner, chunk, parts, scale: last ? scale : 1 },
        workgroups: grid(outer * parts * inner, WG),
        info: `[${outer},${curR},${inner}]→[${outer},${parts},${inner}]`,
      });
    }
    if (cur !== x) cur.dispose();
    cur = out;
    curR = parts;
    if (last) return cur;
  }
}

/**
 * Reduce `x` over `axes` with `op`.
 *
 * @example
 * ```ts
 * const colSums = reduce("sum", x, { axes: [0] });
 * ```
 */
export function reduce(op: ReduceOp, x: Tensor, options: ReduceOptions = {}): Tensor {
  if (!(x instanceof Tensor)) throw new TypeError(`Cannot ${op}: expected a Tensor`);
  const e = x.engine;
  const axes = normAxes(op, x.rank, options.axes);
  const outShape = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const finalShape = options.keepDims ? outShape : x.shape.filter((_, i) => !axes.includes(i));
  const rTotal = axes.reduce((p, a) => p * x.shape[a], 1);
  if (x.size === 0 || rTotal === 0) {
    // Reducing nothing: sum → 0, mean → NaN, max → -Infinity (as NumPy/PyTorch would error or give these).
    const n = shapeSize(finalShape);
    const fill = op === "sum" ? 0 : op === "mean" ? NaN : -Infinity;
    return e.tensor(new Float32Array(n).fill(fill), finalShape);
  }
  if (x.bytes > e.maxBinding) {
    throw new RangeError(
      `Cannot ${op} a tensor of shape [${x.shape}]: ${x.bytes} bytes exceed one storage binding ` +
        `(${e.maxBinding}); reduce a smaller batch`,
    );
  }
  const max = op === "max";
  // Group the reduced axes into contiguous runs, reduce from the last run to the first.
  const runs: [number, number][] = [];
  for (const a of axes) {
    const last = runs[runs.length - 1];
    if (last && last[1] === a) last[1] = a + 1;
    else runs.push([a, a + 1]);
  }
  let cur = x;
  const shape = [...x.shape];
  for (let ri = runs.length - 1; ri >= 0; ri--) {
    const [s, t] = runs[ri];
    const outer = shapeSize(shape.slice(0, s));
    const r = shapeSize(shape.slice(s, t));
    const inner = shapeSize(shape.slice(t));
    const scale = op === "mean" ? 1 / r : 1;
    const next = reduceRun(cur, outer, r, inner, max, scale);
    if (cur !== x) cur.dispose();
    cur = next;
    for (let i = s; i < t; i++) shape[i] = 1;
  }
  const result = cur.reshape(finalShape);
  cur.dispose();
  return result;
}

// sum / mean backward: dx = broadcast(dy with the reduced axes kept) (÷ R for mean).
function reduceOp(op: "sum" | "mean") {
  return defineOp<[Tensor], ReduceOptions, void>({
    name: op,
    forward: ([x], o) => ({ output: reduce(op, x, o), saved: undefined }),
    backward: (gy, _s, [x], o) => {
      const axes = normAxes(op, x.rank, o.axes);
      const kept = x.shape.map((d, i) => (axes.includes(i) ? 1 : d));
      return [x.engine.scope(() => {
        const g = broadcastTo(gy.reshape(kept), x.shape);
        if (op === "sum") return g;
        const r = axes.reduce((p, a) => p * x.shape[a], 1);
        return binary("mul", g, 1 / r);
      })];
    },
  });
}
const sumOp = reduceOp("sum"), meanOp = reduceOp("mean");

/** Sum over axes (all by default); differentiable. @example `const total = sum(x); const rows = sum(x, { axes: 1 });` */
export const sum = (x: Tensor, options: ReduceOptions = {}): Tensor => sumOp([x], options);
/** Mean over axes; differentiable. @example `const m = mean(x, { axes: [0, 2, 3] });` */
export const mean = (x: Tensor, options: ReduceOptions = {}): Tensor => meanOp([x], options);
/** Maximum over axes (no gradient). @example `const m = max(x, { axes: -1 });` */
export const max = (x: Tensor, options?: ReduceOptions): Tensor => reduce("max", x, options);

/** CPU reference of {@linkcode reduce}, in float64. */
export function reduceCpu(
  op: ReduceOp,
  x: Float32Array,
  shape: readonly number[],
  options: ReduceOptions = {},
): { data: Float32Array; shape: number[] } {
  const axes = normAxes(op, shape.length, options.axes);
  const outShape = shape.map((d, i) => (axes.includes(i) ? 1 : d));
  const finalShape = options.keepDims ? outShape : shape.filter((_, i) => !axes.includes(i));
  const n = shapeSize(outShape);
  const acc = new Float64Array(n).fill(op === "max" ? -Infinity : 0);
  const count = axes.reduce((p, a) => p * shape[a], 1);
  const strides = outShape.map((_, i) => shapeSize(outShape.slice(i + 1)));
  for (let i = 0; i < x.length; i++) {
    let rem = i, o = 0;
    for (let d = shape.length - 1; d >= 0; d--) {
      const c = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      if (!axes.includes(d)) o += c * strides[d];
    }
    acc[o] = op === "max" ? Math.max(acc[o], x[i]) : acc[o] + x[i];
  }
  const data = Float32Array.from(acc, (v) => (op === "mean" ? v / count : v));
  return { data, shape: finalShape };
}
