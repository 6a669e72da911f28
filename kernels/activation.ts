/**
 * Transformer activations, forward and backward, elementwise:
 *
 * - `gelu`: x·Φ(x) = ½x·(1 + erf(x/√2)), the exact form (PyTorch's default `nn.GELU()`, not the tanh
 *   approximation; Hendrycks & Gimpel 2016, https://arxiv.org/abs/1606.08415); dx = dy·(Φ(x) + x·φ(x)).
 * - `silu`: x·σ(x) (`nn.SiLU`); dx = dy·σ(x)·(1 + x·(1 − σ(x))).
 * - `erf` (forward only), exposed to test the WGSL erf against a float64 one.
 *
 * WGSL has no erf: {@linkcode ERF_WGSL} is N. Juffa's float32 minimax erff (two pieces, each under 1 ulp
 * as published on Stack Overflow); against a float64 erf on [−8, 8] its largest relative error here is
 * 1.06e-7 (llvmpipe). For z < 0, 1 + erf(z) comes from the exp of the tail piece rather than 1 − erf(|z|),
 * so gelu's negative tail does not cancel to 0 as the float32 ½x·(1 + erf(x/√2)) does; that piece is fit
 * for erf's accuracy near 1, so the tail's relative error grows (6e-6 at x = −3, 6e-5 at −5, 2e-3 at −7)
 * while its absolute error stays below 1e-8 there (below 4e-7 over [−12, 12], at large |x|).
 * The differentiable `gelu` and `silu` are in ops/transformer.ts.
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { variants } from "../engine/kernel.ts";
import { Tensor } from "../engine/tensor.ts";
import { LINEAR_ID, linearEntry, wgsl } from "./_wgsl.ts";

/** Activations with a kernel here. */
export type ActivationOp = "gelu" | "silu" | "erf";

const WG = 256;

/**
 * WGSL: `erf_tail(t)`, for t = |z| > 0.927734375, the r with 1 − erf(t) = exp(r); `erf_core(z)` for
 * |z| ≤ 0.927734375; `one_plus_erf(z)` = 1 + erf(z) and `erf(z)`, each to about 1 ulp of float32.
 */
export const ERF_WGSL = `
const ERF_SPLIT = 0.927734375;
fn erf_tail(t: f32) -> f32 {
  let s = t * t;
  var r = fma(-1.72853470e-5, t, 3.83197126e-4);
  let u = fma(-3.88396438e-3, t, 2.42546219e-2);
  r = fma(r, s, u);
  r = fma(r, t, -1.06777877e-1);
  r = fma(r, t, -6.34846687e-1);
  r = fma(r, t, -1.28717512e-1);
  return fma(r, t, -t);
}
fn erf_core(z: f32) -> f32 {
  let s = z * z;
  var r = -5.96761703e-4;
  r = fma(r, s, 4.99119423e-3);
  r = fma(r, s, -2.67681349e-2);
  r = fma(r, s, 1.12819925e-1);
  r = fma(r, s, -3.76125336e-1);
  r = fma(r, s, 1.28379166e-1);
  return fma(r, z, z);
}
fn one_plus_erf(z: f32) -> f32 {
  let t = abs(z);
  if (t <= ERF_SPLIT) { return 1.0 + erf_core(z); }
  let e = exp(erf_tail(t));
  return select(e, 2.0 - e, z > 0.0);
}
fn erf(z: f32) -> f32 {
  let t = abs(z);
  if (t <= ERF_SPLIT) { return erf_core(z); }
  return sign(z) * (1.0 - exp(erf_tail(t)));
}`;

// Forward: x → y (n). Backward: x, dy → dx (n).
const activationKernel = variants("activation", (p: { op: ActivationOp; backward: boolean }) => ({
  bindings: p.backward
    ? [{ name: "x", access: "read" }, { name: "dy", access: "read" }, { name: "dx", access: "read_write" }]
    : [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { n: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${ERF_WGSL}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let v = x[i];
#if ${p.op === "gelu"}
  let cdf = 0.5 * one_plus_erf(v * 0.70710678118654752);
#if ${p.backward}
  let pdf = 0.39894228040143268 * exp(-0.5 * v * v);
  dx[i] = dy[i] * (cdf + v * pdf);
#else
  y[i] = v * cdf;
#endif
#elif ${p.op === "silu"}
  let s = 1.0 / (1.0 + exp(-v));
#if ${p.backward}
  dx[i] = dy[i] * s * (1.0 + v * (1.0 - s));
#else
  y[i] = v * s;
#endif
#else
  y[i] = erf(v);
#endif
}`,
}));

function checkTensor(op: string, x: Tensor): void {
  if (!(x instanceof Tensor)) {
    throw new TypeError(`Cannot ${op}: expected a Tensor, current value is ${typeof x}`);
  }
}

/**
 * An activation applied elementwise (one binding: the tensor must fit one storage binding).
 *
 * @example
 * ```ts
 * const y = activationForward("gelu", x);
 * ```
 */
export function activationForward(op: ActivationOp, x: Tensor): Tensor {
  checkTensor(op, x);
  const e = x.engine;
  const y = e.empty(x.shape, op);
  if (x.size > 0) {
    e.run(activationKernel({ op, backward: false }), {
      bindings: [x, y],
      uniforms: { n: x.size },
      workgroups: grid(x.size, WG),
      info: `[${x.shape}]`,
    });
  }
  return y;
}

/**
 * The input gradient of `gelu` or `silu`: dx = dy·f′(x) (a new tensor).
 *
 * @example
 * ```ts
 * const dx = activationBackward("gelu", dy, x);
 * ```
 */
export function activationBackward(op: "gelu" | "silu", dy: Tensor, x: Tensor): Tensor {
  checkTensor(`${op} backward`, x);
  if (!(dy instanceof Tensor) || dy.size !== x.size) {
    throw new RangeError(`Cannot ${op} backward: dy has shape [${dy?.shape}], input has [${x.shape}]`);
  }
  const e = x.engine;
  const dx = e.empty(x.shape, `${op} dx`);
  if (x.size > 0) {
    e.run(activationKernel({ op, backward: true }), {
      bindings: [x, dy, dx],
      uniforms: { n: x.size },
      workgroups: grid(x.size, WG),
      info: `[${x.shape}]`,
    });
  }
  return dx;
}

// ---------------------------------------------------------------- CPU references (float64 arithmetic)

/**
 * erf in float64: the Maclaurin series for |z| < 2.5 (terms up to e^6.25: no digit lost that matters),
 * else 1 − erfc from its continued fraction (Abramowitz & Stegun 7.1.14), evaluated bottom-up.
 */
export function erfCpu(z: number): number {
  return onePlusErfCpu(z) - 1;
}

/** 1 + erf(z) in float64, without cancellation for z ≪ 0 (then erfc(−z) from the continued fraction). */
export function onePlusErfCpu(z: number): number {
  const t = Math.abs(z);
  if (t < 2.5) {
    let term = z, s = z;
    for (let n = 1; n < 200; n++) {
      term *= -z * z / n;
      const add = term / (2 * n + 1);
      s += add;
      if (Math.abs(add) < 1e-18 * Math.abs(s)) break;
    }
    return 1 + (2 / Math.sqrt(Math.PI)) * s;
  }
  // erfc(t) = exp(−t²)/√π · 1/(t + (1/2)/(t + 1/(t + (3/2)/(t + …))))
  let f = t;
  for (let k = 120; k >= 1; k--) f = t + (k / 2) / f;
  const erfc = Math.exp(-t * t) / Math.sqrt(Math.PI) / f;
  return z > 0 ? 2 - erfc : erfc;
}

/** CPU reference of {@linkcode activationForward}, in float64. */
export function activationCpu(op: ActivationOp, x: ArrayLike<number>): Float64Array {
  return Float64Array.from(x, (v) => {
    if (op === "gelu") return 0.5 * v * onePlusErfCpu(v / Math.SQRT2);
    if (op === "silu") return v / (1 + Math.exp(-v));
    return erfCpu(v);
  });
}

/** CPU reference of {@linkcode activationBackward}, in float64. */
export function activationBackwardCpu(
  op: "gelu" | "silu",
  dy: ArrayLike<number>,
  x: ArrayLike<number>,
): Float64Array {
  return Float64Array.from(x, (v, i) => {
    if (op === "gelu") {
      return dy[i] *
        (0.5 * onePlusErfCpu(v / Math.SQRT2) + v * Math.exp(-0.5 * v * v) / Math.sqrt(2 * Math.PI));
    }
    const s = 1 / (1 + Math.exp(-v));
    return dy[i] * s * (1 + v * (1 - s));
  });
}
