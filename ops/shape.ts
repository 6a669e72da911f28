/**
 * Differentiable views and slices: `reshape` (`Tensor.reshape` on the tape: same storage, the gradient
 * reshaped back), `narrow` (`torch.narrow`: a contiguous range along one axis, copied; its gradient is
 * zeros with `dy` copied into that range) and `concat` (`torch.cat`; each gradient is a narrow of dy). No kernels: buffer copies, one per slice of the axes before
 * `axis` — cheap where those are few (a weight's rows; one token per image), slow for a narrow axis deep
 * inside a large tensor.
 *
 * @module
 */
import { defineOp } from "../engine/autograd.ts";
import { shapeSize, type Tensor } from "../engine/tensor.ts";

const reshapeOp = defineOp<[Tensor], { shape: readonly number[] }, void>({
  name: "reshape",
  forward: ([x], o) => ({ output: x.reshape(o.shape), saved: undefined }),
  backward: (gy, _s, [x]) => [gy.reshape(x.shape)],
  backwardReads: [false], // x's shape only
});

/**
 * `x.reshape(shape)` recorded on the tape (the method itself is not: a tensor reshaped with it does not
 * carry its source's gradient). Shares x's storage; one `-1` is inferred.
 *
 * @example
 * ```ts
 * const heads = reshape(h, [n, t, numHeads, d]); // (N·T, D) → (N, T, H, d), differentiable
 * ```
 */
export function reshape(x: Tensor, shape: readonly number[]): Tensor {
  return reshapeOp([x], { shape });
}

interface NarrowOptions {
  axis: number;
  start: number;
  length: number;
}

// x: (…outer, A, …inner) → y: (…outer, length, …inner) = x[…, start:start+length, …], one copy per outer index.
function narrowForward(x: Tensor, o: NarrowOptions): Tensor {
  const e = x.engine, a = x.shape[o.axis];
  const outer = shapeSize(x.shape.slice(0, o.axis)), inner = shapeSize(x.shape.slice(o.axis + 1));
  const y = e.empty(x.shape.map((d, i) => (i === o.axis ? o.length : d)), "narrow");
  for (let i = 0; i < outer; i++) {
    e.copy(x, y, {
      srcOffset: (i * a + o.start) * inner,
      dstOffset: i * o.length * inner,
      size: o.length * inner,
    });
  }
  return y;
}

// dy: (…outer, length, …inner) → dx: (…outer, A, …inner), zero outside the range.
function narrowBackward(gy: Tensor, shape: readonly number[], o: NarrowOptions): Tensor {
  const e = gy.engine, a = shape[o.axis];
  const outer = shapeSize(shape.slice(0, o.axis)), inner = shapeSize(shape.slice(o.axis + 1));
  const dx = e.zeros(shape, "narrow grad");
  for (let i = 0; i < outer; i++) {
    e.copy(gy, dx, {
      srcOffset: i * o.length * inner,
      dstOffset: (i * a + o.start) * inner,
      size: o.length * inner,
    });
  }
  return dx;
}

const narrowOp = defineOp<[Tensor], NarrowOptions, void>({
  name: "narrow",
  forward: ([x], o) => ({ output: narrowForward(x, o), saved: undefined }),
  backward: (gy, _s, [x], o) => [narrowBackward(gy, x.shape, o)],
  backwardReads: [false], // x's shape only
});

/**
 * `torch.narrow(x, axis, start, length)`, copied into a new tensor; differentiable. A `RangeError` when the
 * range leaves the axis.
 *
 * @example
 * ```ts
 * const cls = narrow(tokens, 1, 0, 1);        // (N, T, D) → (N, 1, D): the class token
 * const wq = narrow(qkvWeight, 0, 0, dim);    // (3D, D) → (D, D): the query rows of a packed weight
 * ```
 */
export function narrow(x: Tensor, axis: number, start: number, length: number): Tensor {
  const a = x.shape[axis];
  if (
    !Number.isInteger(axis) || axis < 0 || axis >= x.rank || !Number.isInteger(start) ||
    !Number.isInteger(length) || start < 0 || length < 0 || start + length > a
  ) {
    throw new RangeError(
      `Cannot narrow [${x.shape}] along axis ${axis} to ${start}…${start + length}: out of range`,
    );
  }
  return narrowOp([x], { axis, start, length });
}

// xs: each (…outer, Aᵢ, …inner) → y: (…outer, ΣAᵢ, …inner), one copy per (input, outer index).
function concatForward(xs: readonly Tensor[], axis: number): Tensor {
  const e = xs[0].engine, shape = xs[0].shape;
  const total = xs.reduce((s, x) => s + x.shape[axis], 0);
  const outer = shapeSize(shape.slice(0, axis)), inner = shapeSize(shape.slice(axis + 1));
  const y = e.empty(shape.map((d, i) => (i === axis ? total : d)), "concat");
  let at = 0;
  for (const x of xs) {
    const a = x.shape[axis];
    for (let i = 0; i < outer; i++) {
      e.copy(x, y, { srcOffset: i * a * inner, dstOffset: (i * total + at) * inner, size: a * inner });
    }
    at += a;
  }
  return y;
}

const concatOp = defineOp<Tensor[], { axis: number }, void>({
  name: "concat",
  forward: (xs, o) => ({ output: concatForward(xs, o.axis), saved: undefined }),
  backward: (gy, _s, xs, o) => {
    let at = 0;
    return xs.map((x) => {
      const g = narrowForward(gy, { axis: o.axis, start: at, length: x.shape[o.axis] });
      at += x.shape[o.axis];
      return g;
    });
  },
});

/**
 * `torch.cat(xs, axis)`: the tensors side by side along `axis` (every other axis equal), copied into a new
 * tensor; differentiable (each input's gradient is its range of dy). A `RangeError` naming the shapes when
 * they do not fit.
 *
 * @example
 * ```ts
 * const f = concat([cls, patchMean], 1); // (N, D) and (N, D) → (N, 2D): Virchow's embedding
 * ```
 */
export function concat(xs: readonly Tensor[], axis: number): Tensor {
  const r = xs[0]?.rank ?? 0;
  const fits = xs.length > 0 && Number.isInteger(axis) && axis >= 0 && axis < r &&
    xs.every((x) => x.rank === r && x.shape.every((d, i) => i === axis || d === xs[0].shape[i]));
  if (!fits) {
    throw new RangeError(
      `Cannot concatenate ${xs.map((x) => `[${x.shape}]`).join(", ") || "nothing"} along axis ${axis}: ` +
        "every other axis must agree",
    );
  }
  return concatOp([...xs], { axis });
}
