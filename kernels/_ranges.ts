/**
 * Tensors larger than one storage binding (`maxStorageBufferBindingSize`, 128 MiB on llvmpipe): a kernel
 * that works row by row (a sample, a plane) runs once per run of whole rows that fits one binding. A run's
 * binding starts at the aligned element at or before its first row (`minStorageBufferOffsetAlignment`) and
 * the kernel adds the rest, `off` (a uniform, < one alignment unit), to its indices. A tensor that fits is
 * bound whole with `off = 0`, in one run: small tensors keep their single dispatch.
 *
 * @example
 * ```ts
 * const s = c * h * w; // one sample
 * for (const run of rowRuns(e, "batchNorm2d", n, [s])) {
 *   const { binding, off } = bindElements(x, run.start * s, run.count * s);
 *   // e.run(kernel, { bindings: [binding, …], uniforms: { off, n: run.count * s, … }, … });
 * }
 * ```
 * @module
 */
import type { Engine, TensorRange } from "../engine/engine.ts";
import { BYTES, type Tensor } from "../engine/tensor.ts";

/** Elements (f32) one binding may hold: the engine rounds a range up to 16 bytes. */
export function bindingElements(e: Engine): number {
  return Math.floor(e.maxBinding / 16) * 4;
}

/** Elements (f32) per binding-offset alignment unit. */
export function alignElements(e: Engine): number {
  return Math.max(1, e.offsetAlign / BYTES.f32);
}

/** Rows `[start, start + count)`. */
export interface RowRun {
  start: number;
  count: number;
}

/**
 * Split `rows` rows into runs of equal length (the last one shorter) such that, for each tensor whose row
 * holds `rowElems[k]` elements, a run fits one binding even when its binding starts one alignment unit
 * early. One run when every tensor fits whole. A `RangeError` naming `op` and what a row is (`unit`:
 * sample, plane) when one row cannot fit.
 */
export function rowRuns(
  e: Engine,
  op: string,
  rows: number,
  rowElems: readonly number[],
  unit = "row",
): RowRun[] {
  const cap = bindingElements(e);
  if (rowElems.every((r) => rows * r <= cap)) return [{ start: 0, count: rows }];
  const room = cap - (alignElements(e) - 1);
  const per = Math.min(...rowElems.map((r) => (r === 0 ? rows : Math.floor(room / r))));
  if (per < 1) {
    throw new RangeError(
      `Cannot ${op}: one ${unit} of ${Math.max(...rowElems)} values exceeds one storage binding ` +
        `(${e.maxBinding} bytes)`,
    );
  }
  const runs: RowRun[] = [];
  for (let s = 0; s < rows; s += per) runs.push({ start: s, count: Math.min(per, rows - s) });
  return runs;
}

/**
 * Bind elements `[start, start + count)` of `t`: the tensor itself when that is all of it and it fits one
 * binding, else a range from the aligned element at or before `start`; `off` is `start` minus that.
 */
export function bindElements(
  t: Tensor,
  start: number,
  count: number,
): { binding: Tensor | TensorRange; off: number } {
  const e = t.engine;
  if (start === 0 && count === t.size && t.bytes <= e.maxBinding) return { binding: t, off: 0 };
  const align = alignElements(e);
  const first = Math.floor(start / align) * align;
  const off = start - first;
  return { binding: { tensor: t, offset: first, size: off + count }, off };
}
