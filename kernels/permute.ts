/**
 * Axis permutations that attention needs: `swapAxes12` turns [A, B, C, D] into [A, C, B, D] (a ViT's
 * [batch, tokens, heads, head_dim] into [batch, heads, tokens, head_dim] and back), materialised. The
 * differentiable op is `swapAxes12` in `ops/permute.ts`.
 *
 * @module
 */
import { grid } from "../engine/engine.ts";
import { single } from "../engine/kernel.ts";
import type { Tensor } from "../engine/tensor.ts";
import { LINEAR_ID, linearEntry } from "./_wgsl.ts";

const WG = 256;

// y[a, c, b, d] = x[a, b, c, d]   x: [A, B, C, D], y: [A, C, B, D]; one invocation per element of y
const swapKernel = single("swap_axes_12", () => ({
  bindings: [{ name: "x", access: "read" }, { name: "y", access: "read_write" }],
  uniforms: { n: "u32", b: "u32", c: "u32", d: "u32" },
  workgroupSize: [WG],
  body: `
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.n) { return; }
  let dd = i % p.d;
  let r = i / p.d;
  let bb = r % p.b;
  let r2 = r / p.b;
  let cc = r2 % p.c;
  let a = r2 / p.c;
  y[i] = x[((a * p.b + bb) * p.c + cc) * p.d + dd];
}`,
}));

/** [A, B, C, D] → [A, C, B, D] on the GPU (a new tensor). */
export function swapAxes12Forward(x: Tensor): Tensor {
  if (x.rank !== 4) {
    throw new RangeError(`Cannot swap axes 1 and 2 of a tensor of shape [${x.shape}]: rank ≠ 4`);
  }
  const e = x.engine;
  const [A, B, C, D] = x.shape;
  const y = e.empty([A, C, B, D], "swapAxes12");
  if (y.size === 0) return y;
  if (x.bytes > e.maxBinding) {
    throw new RangeError(`Cannot swap axes 1 and 2 of [${x.shape}]: larger than one storage binding`);
  }
  e.run(swapKernel(), {
    bindings: [x, y],
    uniforms: { n: y.size, b: B, c: C, d: D },
    workgroups: grid(y.size, WG),
    info: `[${x.shape}]`,
  });
  return y;
}

/** CPU reference of {@linkcode swapAxes12Forward}. */
export function swapAxes12Cpu(x: Float32Array, shape: readonly number[]): Float32Array {
  const [A, B, C, D] = shape;
  const y = new Float32Array(x.length);
  for (let a = 0; a < A; a++) {
    for (let b = 0; b < B; b++) {
      for (let c = 0; c < C; c++) {
        for (let d = 0; d < D; d++) y[((a * C + c) * B + b) * D + d] = x[((a * B + b) * C + c) * D + d];
      }
    }
  }
  return y;
}
