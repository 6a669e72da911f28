/**
 * Elementwise kernels: unary (relu, sigmoid, exp, log, sqrt, neg, abs, tanh), binary (add, sub, mul, div,
 * maximum, minimum and the backward helpers) with NumPy broadcasting, their scalar forms, and
 * `broadcastTo`; launchers and CPU references. The differentiable ops (`add`, `relu`, …) and their gradient
 * rules are in `ops/elementwise.ts`.
 *
 * Tensors larger than one storage binding are processed in element ranges: the output and every operand
 * of the output's shape are bound range by range; broadcast operands must fit in one binding.
 * All outputs are new tensors (overwrite); nothing accumulates.
 *
 * @module
 */
import { type Engine, grid, type TensorRange } from "../engine/engine.ts";
import { single, variants } from "../engine/kernel.ts";
import { shapeSize, Tensor } from "../engine/tensor.ts";
import { flatTexel, textureReads } from "../engine/flat.ts";
import { LINEAR_ID, linearEntry, wgsl } from "./_wgsl.ts";

/** Unary op names. */
export type UnaryOp = "relu" | "sigmoid" | "exp" | "log" | "sqrt" | "neg" | "abs" | "tanh";
/** Binary op names (`relu_grad`, `sigmoid_grad`, `tanh_grad`, `sign_mul` serve backward passes). */
export type BinaryOp =
  | "add"
  | "sub"
  | "mul"
  | "div"
  | "maximum"
  | "minimum"
  | "relu_grad"
  | "sigmoid_grad"
  | "tanh_grad"
  | "sign_mul";

const UNARY_WGSL: Record<UnaryOp, string> = {
  relu: "max(v, 0.0)",
  sigmoid: "select(exp(v) / (1.0 + exp(v)), 1.0 / (1.0 + exp(-v)), v >= 0.0)",
  exp: "exp(v)",
  log: "log(v)",
  sqrt: "sqrt(v)",
  neg: "-v",
  abs: "abs(v)",
  tanh: "tanh(v)",
};

const BINARY_WGSL: Record<BinaryOp, string> = {
  add: "u + v",
  sub: "u - v",
  mul: "u * v",
  div: "u / v",
  maximum: "max(u, v)",
  minimum: "min(u, v)",
  relu_grad: "select(0.0, u, v > 0.0)", // u = dy, v = x
  sigmoid_grad: "u * v * (1.0 - v)", // u = dy, v = y
  tanh_grad: "u * (1.0 - v * v)", // u = dy, v = y
  sign_mul: "u * sign(v)", // u = dy, v = x
};

const UNARY_CPU: Record<UnaryOp, (v: number) => number> = {
  relu: (v) => Math.max(v, 0),
  sigmoid: (v) => 1 / (1 + Math.exp(-v)),
  exp: Math.exp,
  log: Math.log,
  sqrt: Math.sqrt,
  neg: (v) => -v,
  abs: Math.abs,
  tanh: Math.tanh,
};

const BINARY_CPU: Record<BinaryOp, (u: number, v: number) => number> = {
  add: (u, v) => u + v,
  sub: (u, v) => u - v,
  mul: (u, v) => u * v,
  div: (u, v) => u / v,
  maximum: Math.max,
  minimum: Math.min,
  relu_grad: (u, v) => (v > 0 ? u : 0),
  sigmoid_grad: (u, v) => u * v * (1 - v),
  tanh_grad: (u, v) => u * (1 - v * v),
  sign_mul: (u, v) => u * Math.sign(v),
};

const WG = 128;

/** The vec4 element type of a binding with `vec`, else f32. */
const elem = (vec: boolean) => (vec ? "vec4<f32>" : "f32");

/**
 * WGSL statements that set `y[i]` from the scalar expression `expr` of the operands `u`/`v`: each operand is
 * `[wgsl, perElement]`, a per-element read such as `a[i]` (`true`) or a scalar such as a uniform (`false`).
 * Once, or with `vec` once per component of the vec4 reads (the same scalar arithmetic, so results are
 * bit-identical; on llvmpipe a vec4 load costs about what a scalar load does, so 4 elements per invocation
 * cut the loads 4×).
 */
function perElement(
  vec: boolean,
  expr: string,
  operands: Record<"u" | "v", [string, boolean] | null>,
): string {
  const ops = Object.entries(operands).filter((o): o is [string, [string, boolean]] => o[1] !== null);
  if (!vec) return `${ops.map(([n, [src]]) => `let ${n} = ${src}; `).join("")}y[i] = ${expr};`;
  const lines = ops.map(([n, [src]]) => `let ${n.toUpperCase()} = ${src};`);
  lines.push("var r: vec4f;");
  for (const c of "xyzw") {
    const lets = ops.map(([n, [, per]]) => `let ${n} = ${n.toUpperCase()}${per ? `.${c}` : ""}; `).join("");
    lines.push(`{ ${lets}r.${c} = ${expr}; }`);
  }
  lines.push("y[i] = r;");
  return lines.join("\n  ");
}

/** Whether `n` elements can go as vec4s (n % 4 == 0; range starts are multiples of the offset alignment). */
const canVec = (n: number) => n % 4 === 0;

// y[i] = f(x[i])   x, y: [n] (vec4s with `vec`; with `tex` x read from flat texture X, engine/flat.ts)
const unaryKernel = variants("unary", (p: { op: UnaryOp; vec: boolean; tex?: boolean }) => ({
  bindings: [
    p.tex
      ? { name: "X", access: "read", texture: "sampled" }
      : { name: "x", access: "read", type: elem(p.vec) },
    { name: "y", access: "read_write", type: elem(p.vec) },
  ] as const,
  uniforms: { n: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  ${perElement(p.vec, UNARY_WGSL[p.op], { u: null, v: [p.tex ? flatTexel("X", "i") : "x[i]", true] })}
}`,
}));

// y[i] = a[i] ∘ s  (or s ∘ a[i] when reversed)   a, y: [n] (vec4s with `vec`; `tex` as unaryKernel's)
const scalarKernel = variants("scalar", (p: { op: BinaryOp; rev: boolean; vec: boolean; tex?: boolean }) => ({
  bindings: [
    p.tex
      ? { name: "A", access: "read", texture: "sampled" }
      : { name: "a", access: "read", type: elem(p.vec) },
    { name: "y", access: "read_write", type: elem(p.vec) },
  ] as const,
  uniforms: { n: "u32", s: "f32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  ${
    perElement(
      p.vec,
      BINARY_WGSL[p.op],
      p.rev
        ? { u: ["p.s", false], v: [p.tex ? flatTexel("A", "i") : "a[i]", true] }
        : { u: [p.tex ? flatTexel("A", "i") : "a[i]", true], v: ["p.s", false] },
    )
  }
}`,
}));

// y[i] = a[ia] ∘ b[ib]; with `bcast`, ia and ib come from the output index through broadcast strides (0 on
// broadcast dims); same-shape operands skip the index arithmetic, and with `vec` (not with `bcast`) go as vec4s. y: [n] (a range starting at element `base`
// of the output); a, b: whole, or ranges starting at elements abase, bbase.
// With `tex` (same shapes, vec4, one binding), a and b are read from flat textures A and B (engine/flat.ts).
const binaryKernel = variants(
  "binary",
  (p: { op: BinaryOp; bcast: boolean; vec: boolean; tex?: boolean }) => ({
    bindings: [
      p.tex
        ? { name: "A", access: "read", texture: "sampled" }
        : { name: "a", access: "read", type: elem(p.vec) },
      p.tex
        ? { name: "B", access: "read", texture: "sampled" }
        : { name: "b", access: "read", type: elem(p.vec) },
      { name: "y", access: "read_write", type: elem(p.vec) },
    ] as const,
    uniforms: {
      shape: "u32x8",
      sa: "u32x8",
      sb: "u32x8",
      n: "u32",
      rank: "u32",
      base: "u32",
      abase: "u32",
      bbase: "u32",
    },
    workgroupSize: [WG],
    body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
#if ${p.bcast}
  var rem = i + p.base;
  var ia = 0u;
  var ib = 0u;
  for (var d = i32(p.rank) - 1; d >= 0; d--) {
    let dim = p_shape(u32(d));
    let c = rem % dim;
    rem = rem / dim;
    ia += c * p_sa(u32(d));
    ib += c * p_sb(u32(d));
  }
  let u = a[ia - p.abase];
  let v = b[ib - p.bbase];
  y[i] = ${BINARY_WGSL[p.op]};
#else
  ${
      perElement(p.vec, BINARY_WGSL[p.op], {
        u: [p.tex ? flatTexel("A", "i") : "a[i]", true],
        v: [p.tex ? flatTexel("B", "i") : "b[i]", true],
      })
    }
#endif
}`,
  }),
);

// y[i] = x[ix]: broadcast x to the output shape (strides 0 on stretched axes).   y: [n]
const expandKernel = single("expand", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { shape: "u32x8", sx: "u32x8", n: "u32", rank: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  var rem = i;
  var ix = 0u;
  for (var d = i32(p.rank) - 1; d >= 0; d--) {
    let dim = p_shape(u32(d));
    ix += (rem % dim) * p_sx(u32(d));
    rem = rem / dim;
  }
  y[i] = x[ix];
}`,
}));

/**
 * Broadcast `x` to `shape` (NumPy rules), materialised.
 *
 * @example
 * ```ts
 * const y = broadcastTo(bias, [n, c]);
 * ```
 */
export function broadcastTo(x: Tensor, shape: readonly number[]): Tensor {
  const out = broadcastShapes("broadcastTo", x.shape, shape);
  if (out.length !== shape.length || out.some((d, i) => d !== shape[i])) {
    throw new RangeError(`Cannot broadcast a tensor of shape [${x.shape}] to [${shape}]`);
  }
  const e = x.engine;
  const y = e.empty(shape, "expand");
  if (y.bytes > e.maxBinding) {
    throw new RangeError(`Cannot broadcastTo [${shape}]: larger than one storage binding`);
  }
  if (y.size > 0) {
    e.run(expandKernel(), {
      bindings: [x, y],
      uniforms: { shape, sx: broadcastStrides(x.shape, shape), n: y.size, rank: shape.length },
      workgroups: grid(y.size, WG),
      info: `[${x.shape}]→[${shape}]`,
    });
  }
  return y;
}

/** Element ranges `[start, count]` such that each fits one binding and starts at an aligned offset. */
export function chunks(engine: Engine, n: number): [number, number][] {
  const align = engine.offsetAlign / 4;
  const per = Math.floor(engine.maxBinding / 4 / align) * align;
  if (n <= per) return [[0, n]];
  const out: [number, number][] = [];
  for (let s = 0; s < n; s += per) out.push([s, Math.min(per, n - s)]);
  return out;
}

function range(t: Tensor, start: number, count: number, whole: boolean): Tensor | TensorRange {
  return whole ? t : { tensor: t, offset: start, size: count };
}

/**
 * Apply a unary op elementwise.
 *
 * @example
 * ```ts
 * const y = unary("sigmoid", x);
 * ```
 */
export function unary(op: UnaryOp, x: Tensor): Tensor {
  if (!(x instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: expected a Tensor, current value is ${typeof x}`);
  }
  const e = x.engine;
  const y = e.empty(x.shape, op);
  const parts = chunks(e, x.size);
  const vec = canVec(x.size);
  const tex = textureReads(e, "unary", [x], vec && parts.length === 1);
  if (tex) {
    e.run(unaryKernel({ op, vec: true, tex: true }), {
      bindings: [tex[0], y],
      uniforms: { n: x.size / 4 },
      workgroups: grid(x.size / 4, WG),
      info: `[${x.shape}] textures`,
    });
    return y;
  }
  const k = unaryKernel({ op, vec });
  for (const [s, c] of parts) {
    if (c === 0) continue;
    const whole = parts.length === 1;
    const n = vec ? c / 4 : c;
    e.run(k, {
      bindings: [range(x, s, c, whole), range(y, s, c, whole)],
      uniforms: { n },
      workgroups: grid(n, WG),
      info: `[${x.shape}]`,
    });
  }
  return y;
}

/** Broadcast two shapes (NumPy rules); throws a `RangeError` naming the op and both shapes. */
export function broadcastShapes(op: string, a: readonly number[], b: readonly number[]): number[] {
  const r = Math.max(a.length, b.length);
  const out: number[] = [];
  for (let i = 0; i < r; i++) {
    const da = a[a.length - r + i] ?? 1;
    const db = b[b.length - r + i] ?? 1;
    if (da !== db && da !== 1 && db !== 1) {
      throw new RangeError(
        `Cannot ${op} tensors of shapes [${a}] and [${b}]: dimension ${i} differs (${da} vs ${db})`,
      );
    }
    out.push(da === 1 ? db : da);
  }
  return out;
}

/** Contiguous strides of `shape` aligned to rank `r`, with 0 on broadcast (size-1) dimensions. */
function broadcastStrides(shape: readonly number[], out: readonly number[]): number[] {
  const r = out.length;
  const st = new Array(r).fill(0);
  let s = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    const oi = r - shape.length + i;
    st[oi] = shape[i] === 1 && out[oi] !== 1 ? 0 : s;
    s *= shape[i];
  }
  return st;
}

/**
 * Apply a binary op with broadcasting; `b` may be a number (scalar form). `reversed` computes `b ∘ a`.
 *
 * @example
 * ```ts
 * const y = binary("add", x, bias); // x: [N, C], bias: [C]
 * const z = binary("mul", x, 0.5);
 * ```
 */
export function binary(op: BinaryOp, a: Tensor, b: Tensor | number, reversed = false): Tensor {
  if (!(a instanceof Tensor)) throw new TypeError(`Cannot ${op}: first operand must be a Tensor`);
  const e = a.engine;
  if (typeof b === "number") {
    const y = e.empty(a.shape, op);
    const parts = chunks(e, a.size);
    const vec = canVec(a.size);
    const tex = textureReads(e, "scalar", [a], vec && parts.length === 1);
    if (tex) {
      e.run(scalarKernel({ op, rev: reversed, vec: true, tex: true }), {
        bindings: [tex[0], y],
        uniforms: { n: a.size / 4, s: b },
        workgroups: grid(a.size / 4, WG),
        info: `[${a.shape}] ${op} ${b} textures`,
      });
      return y;
    }
    const k = scalarKernel({ op, rev: reversed, vec });
    for (const [s, c] of parts) {
      if (c === 0) continue;
      const whole = parts.length === 1;
      const n = vec ? c / 4 : c;
      e.run(k, {
        bindings: [range(a, s, c, whole), range(y, s, c, whole)],
        uniforms: { n, s: b },
        workgroups: grid(n, WG),
        info: `[${a.shape}] ${op} ${b}`,
      });
    }
    return y;
  }
  if (!(b instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: second operand must be a Tensor or a number`);
  }
  if (b.engine !== a.engine) throw new TypeError(`Cannot ${op}: the tensors belong to different engines`);
  if (reversed) [a, b] = [b, a];
  const shape = broadcastShapes(op, a.shape, b.shape);
  if (shape.length > 8) throw new RangeError(`Cannot ${op}: rank ${shape.length} > 8`);
  const y = e.empty(shape, op);
  const n = y.size;
  const parts = chunks(e, n);
  const sameA = shapeSize(a.shape) === n && a.shape.length <= shape.length &&
    a.shape.every((d, i) => d === shape[shape.length - a.shape.length + i]);
  const sameB = shapeSize(b.shape) === n && b.shape.length <= shape.length &&
    b.shape.every((d, i) => d === shape[shape.length - b.shape.length + i]);
  const general = !(sameA && sameB);
  const vec = !general && canVec(n);
  const sa = broadcastStrides(a.shape, shape);
  const sb = broadcastStrides(b.shape, shape);
  const whole = parts.length === 1;
  const tex = textureReads(e, "binary", [a, b], vec && whole);
  if (tex) {
    e.run(binaryKernel({ op, bcast: false, vec: true, tex: true }), {
      bindings: [...tex, y],
      uniforms: { shape, sa, sb, n: n / 4, rank: shape.length, base: 0, abase: 0, bbase: 0 },
      workgroups: grid(n / 4, WG),
      info: `[${a.shape}] ${op} [${b.shape}] textures`,
    });
    return y;
  }
  const k = binaryKernel({ op, bcast: general, vec });
  for (const [s, c] of parts) {
    if (c === 0) continue;
    for (const [t, same, name] of [[a, sameA, "first"], [b, sameB, "second"]] as const) {
      if (!whole && !same && t.bytes > e.maxBinding) {
        throw new RangeError(
          `Cannot ${op} tensors of shapes [${a.shape}] and [${b.shape}]: the ${name} operand is broadcast and ` +
            `larger than one storage binding; use a smaller batch size`,
        );
      }
    }
    e.run(k, {
      bindings: [
        range(a, s, c, whole || !sameA),
        range(b, s, c, whole || !sameB),
        range(y, s, c, whole),
      ],
      uniforms: {
        shape,
        sa,
        sb,
        n: vec ? c / 4 : c,
        rank: shape.length,
        base: s,
        abase: whole || !sameA ? 0 : s,
        bbase: whole || !sameB ? 0 : s,
      },
      workgroups: grid(vec ? c / 4 : c, WG),
      info: `[${a.shape}] ${op} [${b.shape}]`,
    });
  }
  return y;
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/** CPU reference of {@linkcode unary}. */
export function unaryCpu(op: UnaryOp, x: Float32Array): Float32Array {
  const f = UNARY_CPU[op];
  return Float32Array.from(x, (v) => f(v));
}

/** CPU reference of {@linkcode binary} (tensor ∘ tensor with broadcasting). */
export function binaryCpu(
  op: BinaryOp,
  a: Float32Array,
  aShape: readonly number[],
  b: Float32Array,
  bShape: readonly number[],
): { data: Float32Array; shape: number[] } {
  const shape = broadcastShapes(op, aShape, bShape);
  const sa = broadcastStrides(aShape, shape);
  const sb = broadcastStrides(bShape, shape);
  const n = shapeSize(shape);
  const out = new Float32Array(n);
  const f = BINARY_CPU[op];
  for (let i = 0; i < n; i++) {
    let rem = i, ia = 0, ib = 0;
    for (let d = shape.length - 1; d >= 0; d--) {
      const c = rem % shape[d];
      rem = Math.floor(rem / shape[d]);
      ia += c * sa[d];
      ib += c * sb[d];
    }
    out[i] = f(a[ia], b[ib]);
  }
  return { data: out, shape };
}
