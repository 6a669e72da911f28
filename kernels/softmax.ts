/**
 * Softmax over the last axis, numerically stable (max-subtracted), forward and backward:
 *
 *   y = exp(x − max x) / Σ exp(x − max x)
 *   dx = y ⊙ (dy − Σ dy·y)                 (sums over the row)
 *
 * One workgroup per row, tree reductions through workgroup memory. Backward reads the saved output y.
 * The differentiable `softmax` is in ops/transformer.ts.
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { NEG_MAX, treeReduce, wgsl, WORKGROUP_ID, workgroupEntry } from "./_wgsl.ts";

const WG = 64;

// Forward: x (R, N) → y (R, N). Backward: y, dy (R, N) → dx (R, N). Workgroup w owns row w.
const softmaxKernel = variants("softmax", (p: { backward: boolean }) => ({
  bindings: p.backward
    ? [{ name: "y", access: "read" }, { name: "dy", access: "read" }, { name: "dx", access: "read_write" }]
    : [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { rows: "u32", n: "u32" },
  workgroupSize: [WG],
  body: wgsl`
var<workgroup> sh: array<f32, ${WG}>;
${workgroupEntry(WG)} {
  ${WORKGROUP_ID}
  if (w >= p.rows) { return; }   // uniform per workgroup
  let base = w * p.n;
#if ${p.backward}
  var s = 0.0;
  for (var k = t; k < p.n; k += ${WG}u) { s += dy[base + k] * y[base + k]; }
  sh[t] = s;
  ${treeReduce("sh", WG, (a, b) => `${a} + ${b}`)}
  let dot = sh[0];
  for (var k = t; k < p.n; k += ${WG}u) { dx[base + k] = y[base + k] * (dy[base + k] - dot); }
#else
  var m = ${NEG_MAX};
  for (var k = t; k < p.n; k += ${WG}u) { m = max(m, x[base + k]); }
  sh[t] = m;
  ${treeReduce("sh", WG, (a, b) => `max(${a}, ${b})`)}
  let mx = sh[0];
  workgroupBarrier();
  var s = 0.0;
  for (var k = t; k < p.n; k += ${WG}u) { s += exp(x[base + k] - mx); }
  sh[t] = s;
  ${treeReduce("sh", WG, (a, b) => `${a} + ${b}`)}
  let inv = 1.0 / sh[0];
  for (var k = t; k < p.n; k += ${WG}u) { y[base + k] = exp(x[base + k] - mx) * inv; }
#endif
}`,
}));

function rowsOf(op: string, x: Tensor): [number, number] {
  if (!(x instanceof Tensor) || x.rank < 1) {
    throw new TypeError(`Cannot ${op}: expected a Tensor of rank ≥ 1, current value is ${x?.shape ?? x}`);
  }
  const n = x.shape[x.rank - 1];
  return [n === 0 ? 0 : x.size / n, n];
}

/**
 * Softmax over the last axis (a new tensor).
 *
 * @example
 * ```ts
 * const p = softmaxForward(scores); // [B, H, N, N]
 * ```
 */
export function softmaxForward(x: Tensor): Tensor {
  const [rows, n] = rowsOf("softmax", x);
  const e = x.engine;
  const y = e.empty(x.shape, "softmax");
  if (rows > 0) {
    e.run(softmaxKernel({ backward: false }), {
      bindings: [x, y],
      uniforms: { rows, n },
      workgroups: grid(rows, 1),
      info: `[${x.shape}]`,
    });
  }
  return y;
}

/**
 * The input gradient of softmax from the saved output y: dx = y ⊙ (dy − Σ dy·y) (a new tensor).
 *
 * @example
 * ```ts
 * const dx = softmaxBackward(dy, y);
 * ```
 */
export function softmaxBackward(dy: Tensor, y: Tensor): Tensor {
  const [rows, n] = rowsOf("softmax backward", y);
  if (!(dy instanceof Tensor) || dy.size !== y.size) {
    throw new RangeError(`Cannot softmax backward: dy has shape [${dy?.shape}], output has [${y.shape}]`);
  }
  const e = y.engine;
  const dx = e.empty(y.shape, "softmax dx");
  if (rows > 0) {
    e.run(softmaxKernel({ backward: true }), {
      bindings: [y, dy, dx],
      uniforms: { rows, n },
      workgroups: grid(rows, 1),
      info: `[${y.shape}]`,
    });
  }
  return dx;
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/** CPU reference of {@linkcode softmaxForward} over rows of `n`, in float64. */
export function softmaxCpu(x: ArrayLike<number>, n: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let r = 0; r * n < x.length; r++) {
    let m = -Infinity, s = 0;
    for (let k = 0; k < n; k++) m = Math.max(m, x[r * n + k]);
    for (let k = 0; k < n; k++) s += y[r * n + k] = Math.exp(x[r * n + k] - m);
    for (let k = 0; k < n; k++) y[r * n + k] /= s;
  }
  return y;
}

/** CPU reference of {@linkcode softmaxBackward} over rows of `n`, in float64 (y recomputed from x). */
export function softmaxBackwardCpu(dy: ArrayLike<number>, x: ArrayLike<number>, n: number): Float64Array {
  const y = softmaxCpu(x, n), dx = new Float64Array(x.length);
  for (let r = 0; r * n < x.length; r++) {
    let dot = 0;
    for (let k = 0; k < n; k++) dot += dy[r * n + k] * y[r * n + k];
    for (let k = 0; k < n; k++) dx[r * n + k] = y[r * n + k] * (dy[r * n + k] - dot);
  }
  return dx;
}
