/**
 * Reductions as ops: `sum` and `mean` (differentiable: the gradient is dy broadcast back over the reduced
 * axes, ÷ R for the mean) and `max` (no gradient), over the launchers of kernels/reduce.ts.
 *
 * @module
 */
import { defineOp } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { reduce, reduceBackward, type ReduceOptions } from "../kernels/reduce.ts";

function reduceOp(op: "sum" | "mean") {
  return defineOp<[Tensor], ReduceOptions, void>({
    name: op,
    forward: ([x], o) => ({ output: reduce(op, x, o), saved: undefined }),
    backward: (gy, _s, [x], o) => [reduceBackward(op, gy, x.shape, o)],
  });
}
const sumOp = reduceOp("sum"), meanOp = reduceOp("mean");

/** Sum over axes (all by default); differentiable. @example `const total = sum(x); const rows = sum(x, { axes: 1 });` */
export const sum = (x: Tensor, options: ReduceOptions = {}): Tensor => sumOp([x], options);
/** Mean over axes; differentiable. @example `const m = mean(x, { axes: [0, 2, 3] });` */
export const mean = (x: Tensor, options: ReduceOptions = {}): Tensor => meanOp([x], options);
/** Maximum over axes (no gradient). @example `const m = max(x, { axes: -1 });` */
export const max = (x: Tensor, options?: ReduceOptions): Tensor => reduce("max", x, options);
