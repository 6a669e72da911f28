/**
 * Reductions over chosen axes: sum, mean, max, and the backward of sum and mean.
 *
 * The input is viewed as `[outer, R, inner]` (R = the product of a contiguous run of reduced axes);
 * non-adjacent axes are reduced one run at a time. Each pass splits R into chunks, one workgroup slice
 * per chunk, and writes partials `[outer, P, inner]`; passes repeat until P = 1. Within a thread the sum
 * is compensated (Kahan), across threads it is a tree: 10⁷ elements sum to float32 accuracy.
 * Outputs are new tensors (overwrite).
 *
 * A tensor larger than one storage binding is reduced in contiguous pieces along its first axis (of size
 * > 1) that each fit one binding (kernels/_ranges.ts): pieces of a kept axis are copied into the output,
 * pieces of a reduced axis are stacked and reduced once more; when one slice of a reduced axis is itself
 * too large and nothing else is reduced, the slices are gathered block by block with buffer copies.
 * The differentiable `sum` / `mean` and `max` are in ops/reduce.ts.
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { single, type VariantParams, variants } from "../engine/kernel.ts";
import {
  hasSubgroups,
  kahanAdd,
  LINEAR_ID,
  linearEntry,
  NEG_MAX,
  NO_SUBGROUPS,
  subgroupReduce,
  treeReduce,
  wgsl,
  WORKGROUP_ID,
  workgroupEntry,
  workgroupEntrySubgroups,
} from "./_wgsl.ts";
import { chosenVariant, tuningKey, tuningOf } from "./tuning.ts";
import { shapeSize, Tensor } from "../engine/tensor.ts";
import { flatLoad, textureReads } from "../engine/flat.ts";
import type { Engine } from "../engine/engine.ts";
import { alignElements, bindElements, bindingElements } from "./_ranges.ts";

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

// Rows (inner = 1): workgroup (o, c) reduces x[xoff + o·r + c·chunk ..] (≤ chunk values) into y[o, c].
// With `sg`, across the workgroup through subgroup operations (subgroupReduce) instead of the tree.
const rowKernel = variants("reduce_rows", (p: ReduceParams & { sg?: boolean }) => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { outer: "u32", r: "u32", chunk: "u32", parts: "u32", scale: "f32", xoff: "u32" },
  workgroupSize: [WG],
  subgroups: p.sg,
  body: wgsl`
var<workgroup> sh: array<f32, ${WG}>;
${p.sg ? workgroupEntrySubgroups(WG) : workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.outer * p.parts) { return; }   // uniform per workgroup
  let o = w / p.parts;
  let c = w % p.parts;
  let start = c * p.chunk;
  let end = min(start + p.chunk, p.r);
  let base = p.xoff + o * p.r;
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
#if ${p.sg}
  var v = acc;
  ${subgroupReduce("sh", WG, (x) => `subgroup${p.op === "max" ? "Max" : "Add"}(${x})`, INIT(p))}
#else
  sh[t] = acc;
  ${treeReduce("sh", WG, (a, b) => (p.op === "max" ? `max(${a}, ${b})` : `${a} + ${b}`))}
#endif
  if (t == 0u) { y[w] = sh[0] * p.scale; }
}`,
}));

// Columns (inner > 1): thread (o, c, i) reduces x[xoff + (o·r + c·chunk ..)·inner + i] over its chunk into
// y[o, c, i].
// With `tex`, x is read from a flat texture of the whole tensor (engine/flat.ts; xoff then counts from its
// first element).
const colKernel = variants("reduce_cols", (p: ReduceParams & { tex?: boolean }) => ({
  bindings: [
    p.tex ? { name: "X", access: "read", texture: "sampled" } : { name: "x", access: "read" },
    { name: "y", access: "read_write" },
  ] as const,
  uniforms: { outer: "u32", r: "u32", inner: "u32", chunk: "u32", parts: "u32", scale: "f32", xoff: "u32" },
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
  var idx = p.xoff + (o * p.r + start) * p.inner + j;
  for (var k = start; k < end; k++) {
    let v = ${p.tex ? flatLoad("X", "idx") : "x[idx]"};
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

// Backward of sum / mean: dx[xoff + i] = dy[yoff + Σ_d idx_d(i)·sy_d]·scale, where idx(i) is the multi-index
// of i in `shape` and sy the strides of dy with 0 on the reduced axes (a broadcast back).
const backwardKernel = single("reduce_backward", () => ({
  bindings: [{ name: "dy", access: "read" }, { name: "dx", access: "read_write" }],
  uniforms: {
    shape: "u32x8",
    sy: "u32x8",
    rank: "u32",
    n: "u32",
    scale: "f32",
    xoff: "u32",
    yoff: "u32",
  },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  var rem = i;
  var o = 0u;
  for (var d = i32(p.rank) - 1; d >= 0; d--) {
    let dim = p_shape(u32(d));
    o += (rem % dim) * p_sy(u32(d));
    rem = rem / dim;
  }
  dx[p.xoff + i] = dy[p.yoff + o] * p.scale;
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

/** A contiguous run of a tensor's elements from `offset`, seen with `shape` (a piece of a larger tensor). */
interface View {
  tensor: Tensor;
  offset: number;
  shape: readonly number[];
}

/** Whether `v` fits one storage binding (from the aligned element at or before its first). */
function fits(e: Engine, v: View): boolean {
  const n = shapeSize(v.shape);
  if (v.offset === 0 && n === v.tensor.size && v.tensor.bytes <= e.maxBinding) return true;
  return (v.offset % alignElements(e)) + n <= bindingElements(e);
}

/** The tuning-table op of the row pass (inner = 1: a whole tensor, or the last axes). */
export const REDUCE_ROWS = "reduce.rows";

/**
 * The shape class of a row pass in the tuning table: the values one workgroup reduces (R up to the chunk),
 * rounded up to a power of two, e.g. `r8192`.
 *
 * @example
 * ```ts
 * reduceRowsShapeClass(2 * 19699); // "r8192"
 * ```
 */
export function reduceRowsShapeClass(r: number): string {
  return `r${2 ** Math.ceil(Math.log2(Math.max(1, Math.min(r, ROW_CHUNK))))}`;
}

/**
 * The variants of the row pass on `e`: `tree` (workgroup memory and barriers, the default everywhere) and,
 * where the device has subgroups (Chrome), `subgroup` (subgroupAdd / subgroupMax, kernels/_wgsl.ts's
 * `subgroupReduce`).
 */
export function reduceRowsCandidates(e: Engine): string[] {
  return hasSubgroups(e) ? ["tree", "subgroup"] : ["tree"];
}

/**
 * The variant the row pass runs for rows of `r` values on `e`: a forced one, else the tuning table's, else
 * `tree`. A forced id that is not a variant on `e` throws a RangeError naming it; a table's gives way.
 */
export function rowVariant(e: Engine, r: number): string {
  const shapeClass = reduceRowsShapeClass(r);
  const id = chosenVariant(e, REDUCE_ROWS, shapeClass);
  if (id === undefined) return "tree";
  const ok = reduceRowsCandidates(e);
  if (ok.includes(id)) return id;
  if (tuningOf(e)?.entries[tuningKey(REDUCE_ROWS, shapeClass)] === id) return "tree";
  const why = id === "subgroup" ? NO_SUBGROUPS : "the variants are tree and subgroup";
  throw new RangeError(`Cannot reduce rows of ${r} values with variant "${id}": ${why}`);
}

/** Elements a piece may hold so that it fits one binding wherever it starts. */
const room = (e: Engine) => bindingElements(e) - (alignElements(e) - 1);

const withDim = (shape: readonly number[], a: number, d: number) => shape.map((s, i) => (i === a ? d : s));

// One reduction of [outer, r, inner] → [outer, inner], in passes; the first pass reads the view `x`.
function reduceRun(x: View, outer: number, r: number, inner: number, max: boolean, scale: number): Tensor {
  const e = x.tensor.engine;
  let cur: Tensor | null = null;
  let curR = r;
  for (;;) {
    const rows = inner === 1;
    const chunk = rows ? ROW_CHUNK : COL_CHUNK;
    const parts = Math.max(1, Math.ceil(curR / chunk));
    const last = parts === 1;
    const out = e.empty([outer * parts * inner], max ? "max" : "sum");
    const { binding, off } = cur
      ? { binding: cur, off: 0 }
      : bindElements(x.tensor, x.offset, outer * r * inner);
    if (rows) {
      const sg = rowVariant(e, curR) === "subgroup";
      e.run(rowKernel({ op: max ? "max" : "sum", ...(sg ? { sg } : {}) }), {
        bindings: [binding, out],
        uniforms: { outer, r: curR, chunk, parts, scale: last ? scale : 1, xoff: off },
        workgroups: grid(outer * parts, 1),
        info: `[${outer},${curR}]→[${outer},${parts}]`,
      });
    } else {
      // On software adapters from 2¹⁶ elements, the whole tensor through a flat texture.
      const X = textureReads(e, "reduce", [cur ?? x.tensor], true)?.[0];
      e.run(colKernel({ op: max ? "max" : "sum", ...(X ? { tex: true } : {}) }), {
        bindings: [X ?? binding, out],
        uniforms: {
          outer,
          r: curR,
          inner,
          chunk,
          parts,
          scale: last ? scale : 1,
          xoff: X ? (cur ? 0 : x.offset) : off,
        },
        workgroups: grid(outer * parts * inner, WG),
        info: `[${outer},${curR},${inner}]→[${outer},${parts},${inner}]`,
      });
    }
    cur?.dispose();
    cur = out;
    curR = parts;
    if (last) return cur;
  }
}

/**
 * Reduce the view `v` over `axes` (sorted) with `op`, the result multiplied by `extra`; returns a new
 * tensor of `v`'s shape with the reduced axes kept as 1.
 */
function reduceView(e: Engine, v: View, axes: readonly number[], op: ReduceOp, extra: number): Tensor {
  const outShape = v.shape.map((d, i) => (axes.includes(i) ? 1 : d));
  if (fits(e, v)) {
    // Group the reduced axes into contiguous runs, reduce from the last run to the first.
    const runs: [number, number][] = [];
    for (const a of axes) {
      const last = runs[runs.length - 1];
      if (last && last[1] === a) last[1] = a + 1;
      else runs.push([a, a + 1]);
    }
    if (runs.length === 0) {
      const copy = e.empty(outShape, "reduce");
      e.copy(v.tensor, copy, { srcOffset: v.offset, size: copy.size });
      return copy;
    }
    let cur: View = v;
    const shape = [...v.shape];
    for (let ri = runs.length - 1; ri >= 0; ri--) {
      const [s, t] = runs[ri];
      const outer = shapeSize(shape.slice(0, s));
      const r = shapeSize(shape.slice(s, t));
      const inner = shapeSize(shape.slice(t));
      const scale = (op === "mean" ? 1 / r : 1) * (ri === 0 ? extra : 1);
      const next = reduceRun(cur, outer, r, inner, op === "max", scale);
      if (cur !== v) cur.tensor.dispose();
      for (let i = s; i < t; i++) shape[i] = 1;
      cur = { tensor: next, offset: 0, shape: [...shape] };
    }
    const result = cur.tensor.reshape(outShape);
    cur.tensor.dispose();
    return result;
  }
  // Too large for one binding: pieces along the first axis a of size > 1 (the axes before it are 1, so a
  // piece is contiguous).
  const a = v.shape.findIndex((d) => d > 1);
  const d = v.shape[a];
  const slice = shapeSize(v.shape.slice(a + 1));
  const k = Math.max(1, Math.floor(room(e) / slice));
  const pieces: View[] = [];
  for (let i0 = 0; i0 < d; i0 += k) {
    const ki = Math.min(k, d - i0);
    pieces.push({ tensor: v.tensor, offset: v.offset + i0 * slice, shape: withDim(v.shape, a, ki) });
  }
  if (!axes.includes(a)) {
    // A kept axis: each piece's result is a slice of the output.
    const out = e.empty(outShape, "reduce");
    const outSlice = shapeSize(outShape.slice(a + 1));
    let at = 0;
    for (const piece of pieces) {
      const part = reduceView(e, piece, axes, op, extra);
      e.copy(part, out, { dstOffset: at * outSlice });
      at += piece.shape[a];
      part.dispose();
    }
    return out;
  }
  const partial: "sum" | "max" = op === "max" ? "max" : "sum";
  const total = axes.reduce((p, i) => p * v.shape[i], 1);
  const scale = op === "mean" ? extra / total : extra;
  const restReduced = axes.some((i) => i > a && v.shape[i] > 1);
  if (k > 1 || restReduced) {
    // A reduced axis: stack the pieces' results along a and reduce that (it shrinks every time).
    const pieceSize = shapeSize(outShape);
    const stack = e.empty(withDim(outShape, a, pieces.length), "reduce partials");
    pieces.forEach((piece, i) => {
      const part = reduceView(e, piece, axes, partial, 1);
      e.copy(part, stack, { dstOffset: i * pieceSize });
      part.dispose();
    });
    const out = reduceView(e, { tensor: stack, offset: 0, shape: stack.shape }, [a], partial, scale);
    stack.dispose();
    return out;
  }
  // Only a is reduced and one slice of it exceeds a binding: gather blocks of all d slices with buffer
  // copies, [d, block], and reduce each over its first axis.
  const out = e.empty(outShape, "reduce");
  const block = Math.max(1, Math.floor(room(e) / d));
  for (let j0 = 0; j0 < slice; j0 += block) {
    const jn = Math.min(block, slice - j0);
    const tmp = e.empty([d, jn], "reduce gather");
    for (let i = 0; i < d; i++) {
      e.copy(v.tensor, tmp, { srcOffset: v.offset + i * slice + j0, dstOffset: i * jn, size: jn });
    }
    const part = reduceView(e, { tensor: tmp, offset: 0, shape: tmp.shape }, [0], partial, scale);
    e.copy(part, out, { dstOffset: j0 });
    tmp.dispose();
    part.dispose();
  }
  return out;
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
  const finalShape = options.keepDims
    ? x.shape.map((d, i) => (axes.includes(i) ? 1 : d))
    : x.shape.filter((_, i) => !axes.includes(i));
  const rTotal = axes.reduce((p, a) => p * x.shape[a], 1);
  if (x.size === 0 || rTotal === 0) {
    // Reducing nothing: sum → 0, mean → NaN, max → -Infinity (as NumPy/PyTorch would error or give these).
    const n = shapeSize(finalShape);
    const fill = op === "sum" ? 0 : op === "mean" ? NaN : -Infinity;
    return e.tensor(new Float32Array(n).fill(fill), finalShape);
  }
  const out = reduceView(e, { tensor: x, offset: 0, shape: x.shape }, axes, op, 1);
  const result = out.reshape(finalShape);
  out.dispose();
  return result;
}

/**
 * Backward of `reduce("sum" | "mean", x, options)`: dx = dy broadcast back over the reduced axes (÷ R for
 * the mean), a new tensor of shape `xShape`. `dy` has the reduced shape (with or without the kept axes).
 *
 * @example
 * ```ts
 * const dx = reduceBackward("mean", dy, x.shape, { axes: [0, 2, 3] });
 * ```
 */
export function reduceBackward(
  op: "sum" | "mean",
  dy: Tensor,
  xShape: readonly number[],
  options: ReduceOptions = {},
): Tensor {
  const axes = normAxes(op, xShape.length, options.axes);
  const kept = xShape.map((d, i) => (axes.includes(i) ? 1 : d));
  if (dy.size !== shapeSize(kept)) {
    throw new RangeError(
      `Cannot ${op} backward: dy has shape [${dy.shape}], expected [${kept}] for input [${xShape}]`,
    );
  }
  if (xShape.length > 8) throw new RangeError(`Cannot ${op} backward: rank ${xShape.length} > 8`);
  const e = dy.engine;
  const dx = e.empty(xShape, `${op} backward`);
  if (dx.size === 0) return dx;
  const r = axes.reduce((p, a) => p * xShape[a], 1);
  const scale = op === "mean" ? 1 / r : 1;
  backwardView(
    e,
    { tensor: dx, offset: 0, shape: xShape },
    { tensor: dy, offset: 0, shape: kept },
    axes,
    scale,
  );
  return dx;
}

// dx view ← dy view broadcast over `axes`; split along the first axis of size > 1 until both fit a binding.
function backwardView(e: Engine, dx: View, dy: View, axes: readonly number[], scale: number): void {
  if (fits(e, dx) && fits(e, dy)) {
    const n = shapeSize(dx.shape);
    const strides: number[] = [];
    let s = 1;
    for (let i = dy.shape.length - 1; i >= 0; i--) {
      strides[i] = axes.includes(i) ? 0 : s;
      s *= dy.shape[i];
    }
    const bx = bindElements(dx.tensor, dx.offset, n);
    const by = bindElements(dy.tensor, dy.offset, shapeSize(dy.shape));
    e.run(backwardKernel(), {
      bindings: [by.binding, bx.binding],
      uniforms: { shape: dx.shape, sy: strides, rank: dx.shape.length, n, scale, xoff: bx.off, yoff: by.off },
      workgroups: grid(n, WG),
      info: `[${dy.shape}]→[${dx.shape}]`,
    });
    return;
  }
  const a = dx.shape.findIndex((d) => d > 1);
  const d = dx.shape[a];
  const reduced = axes.includes(a);
  const sliceX = shapeSize(dx.shape.slice(a + 1));
  const sliceY = shapeSize(dy.shape.slice(a + 1));
  // A reduced axis leaves dy whole: while dy does not fit, go one slice at a time to reach a kept axis.
  const k = reduced && !fits(e, dy)
    ? 1
    : Math.max(1, Math.min(d - 1, Math.floor(room(e) / Math.max(sliceX, reduced ? 1 : sliceY))));
  for (let i0 = 0; i0 < d; i0 += k) {
    const ki = Math.min(k, d - i0);
    const dxPiece = { tensor: dx.tensor, offset: dx.offset + i0 * sliceX, shape: withDim(dx.shape, a, ki) };
    const dyPiece = reduced
      ? dy
      : { tensor: dy.tensor, offset: dy.offset + i0 * sliceY, shape: withDim(dy.shape, a, ki) };
    backwardView(e, dxPiece, dyPiece, axes, scale);
  }
}

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
