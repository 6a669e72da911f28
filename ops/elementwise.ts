/**
 * Differentiable elementwise ops: `add`, `sub`, `mul`, `div` with NumPy broadcasting (and a number as the
 * second operand), the unary ops `relu`, `sigmoid`, `exp`, `log`, `sqrt`, `neg`, `abs`, `tanh`, and
 * `maximum` / `minimum` (no gradient). Forward runs the launchers of `kernels/elementwise.ts`; backward
 * composes them, and sums a broadcast operand's gradient down to its shape ({@linkcode unbroadcast}).
 *
 * @module
 */
import { defineOp } from "../engine/autograd.ts";
import type { Tensor } from "../engine/tensor.ts";
import { binary, unary, type UnaryOp } from "../kernels/elementwise.ts";
import { reduce } from "../kernels/reduce.ts";

/**
 * Sum `g` down to `shape` (undo broadcasting): reduce leading and stretched axes.
 *
 * @example
 * ```ts
 * const gBias = unbroadcast(gy, [c]); // gy: [n, c] → [c]
 * ```
 */
export function unbroadcast(g: Tensor, shape: readonly number[]): Tensor {
  // Same shape: a second reference to the same storage (no copy).
  if (g.shape.length === shape.length && g.shape.every((d, i) => d === shape[i])) return g.reshape(shape);
  const lead = g.rank - shape.length;
  const axes: number[] = [];
  for (let i = 0; i < g.rank; i++) {
    if (i < lead || (shape[i - lead] === 1 && g.shape[i] !== 1)) axes.push(i);
  }
  const s = reduce("sum", g, { axes, keepDims: true });
  const r = s.reshape(shape);
  s.dispose();
  return r;
}

// ---------------------------------------------------------------- binary

type BinIn = [Tensor, Tensor | null];
interface BinOpts {
  scalar?: number;
}

function binaryOp(op: "add" | "sub" | "mul" | "div") {
  return defineOp<BinIn, BinOpts, void>({
    name: op,
    forward: ([a, b], o) => ({ output: binary(op, a, b ?? o.scalar!), saved: undefined }),
    // add and sub need only the operands' shapes: the tape need not keep their data.
    backwardReads: op === "add" || op === "sub" ? [false, false] : undefined,
    backward: (gy, _s, [a, b], o) => {
      const e = gy.engine;
      return e.scope(() => {
        const bv: Tensor | number = b ?? o.scalar!;
        let ga: Tensor, gb: Tensor | null = null;
        switch (op) {
          case "add":
            ga = unbroadcast(gy, a.shape);
            if (b) gb = unbroadcast(gy, b.shape);
            break;
          case "sub":
            ga = unbroadcast(gy, a.shape);
            if (b) gb = unbroadcast(unary("neg", gy), b.shape);
            break;
          case "mul":
            ga = unbroadcast(binary("mul", gy, bv), a.shape);
            if (b) gb = unbroadcast(binary("mul", gy, a), b.shape);
            break;
          case "div":
            ga = unbroadcast(binary("div", gy, bv), a.shape);
            // d(a/b)/db = -a / b²
            if (b) {
              gb = unbroadcast(
                unary("neg", binary("div", binary("mul", gy, a), binary("mul", b, b))),
                b.shape,
              );
            }
            break;
        }
        return [ga!, gb];
      });
    },
  });
}

const addOp = binaryOp("add"), subOp = binaryOp("sub"), mulOp = binaryOp("mul"), divOp = binaryOp("div");
const call = (f: ReturnType<typeof binaryOp>, a: Tensor, b: Tensor | number) =>
  typeof b === "number" ? f([a, null], { scalar: b }) : f([a, b], {});

/** `a + b` with broadcasting (b may be a number); differentiable. @example `const y = add(x, bias);` */
export const add = (a: Tensor, b: Tensor | number): Tensor => call(addOp, a, b);
/** `a - b` with broadcasting; differentiable. @example `const d = sub(x, 1);` */
export const sub = (a: Tensor, b: Tensor | number): Tensor => call(subOp, a, b);
/** `a * b` with broadcasting; differentiable. @example `const y = mul(x, 0.5);` */
export const mul = (a: Tensor, b: Tensor | number): Tensor => call(mulOp, a, b);
/** `a / b` with broadcasting; differentiable. @example `const y = div(x, std);` */
export const div = (a: Tensor, b: Tensor | number): Tensor => call(divOp, a, b);
/** Elementwise maximum (no gradient). @example `const y = maximum(x, 0);` */
export const maximum = (a: Tensor, b: Tensor | number): Tensor => binary("maximum", a, b);
/** Elementwise minimum (no gradient). @example `const y = minimum(x, 1);` */
export const minimum = (a: Tensor, b: Tensor | number): Tensor => binary("minimum", a, b);

// ---------------------------------------------------------------- unary

// Unary backward: which binary op of (dy, saved) gives dx, and whether the saved value is x or y.
const UNARY_GRAD: Record<UnaryOp, { save: "x" | "y"; grad: (gy: Tensor, v: Tensor) => Tensor }> = {
  // y > 0 exactly where x > 0: the mask from the output, so a ReLU's input (e.g. a batch norm's output) need
  // not be kept for backward.
  relu: { save: "y", grad: (gy, y) => binary("relu_grad", gy, y) },
  sigmoid: { save: "y", grad: (gy, y) => binary("sigmoid_grad", gy, y) },
  exp: { save: "y", grad: (gy, y) => binary("mul", gy, y) },
  log: { save: "x", grad: (gy, x) => binary("div", gy, x) },
  sqrt: { save: "y", grad: (gy, y) => binary("mul", binary("div", gy, y), 0.5) },
  neg: { save: "x", grad: (gy) => unary("neg", gy) },
  abs: { save: "x", grad: (gy, x) => binary("sign_mul", gy, x) },
  tanh: { save: "y", grad: (gy, y) => binary("tanh_grad", gy, y) },
};

function unaryOp(op: UnaryOp) {
  return defineOp<[Tensor], void, Tensor>({
    name: op,
    forward: ([x]) => {
      const y = unary(op, x);
      return { output: y, saved: UNARY_GRAD[op].save === "x" ? x : y };
    },
    backward: (gy, v) => [gy.engine.scope(() => UNARY_GRAD[op].grad(gy, v))],
    backwardReads: [false], // what backward reads is `saved`
  });
}

const UNARY_OPS = Object.fromEntries(
  (Object.keys(UNARY_GRAD) as UnaryOp[]).map((op) => [op, unaryOp(op)]),
) as Record<UnaryOp, (inputs: [Tensor], options: void) => Tensor>;

/** max(x, 0); differentiable. @example `const y = relu(x);` */
export const relu = (x: Tensor): Tensor => UNARY_OPS.relu([x]);
/** 1 / (1 + e^-x), computed without overflow; differentiable. @example `const p = sigmoid(logits);` */
export const sigmoid = (x: Tensor): Tensor => UNARY_OPS.sigmoid([x]);
/** e^x; differentiable. @example `const y = exp(x);` */
export const exp = (x: Tensor): Tensor => UNARY_OPS.exp([x]);
/** Natural log; differentiable. @example `const y = log(x);` */
export const log = (x: Tensor): Tensor => UNARY_OPS.log([x]);
/** Square root; differentiable. @example `const y = sqrt(x);` */
export const sqrt = (x: Tensor): Tensor => UNARY_OPS.sqrt([x]);
/** -x; differentiable. @example `const y = neg(x);` */
export const neg = (x: Tensor): Tensor => UNARY_OPS.neg([x]);
/** |x|; differentiable. @example `const y = abs(x);` */
export const abs = (x: Tensor): Tensor => UNARY_OPS.abs([x]);
/** tanh(x); differentiable. @example `const y = tanh(x);` */
export const tanh = (x: Tensor): Tensor => UNARY_OPS.tanh([x]);
