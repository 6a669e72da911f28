/**
 * The "direct" strategy: one output element per invocation, straight from the definition — the fallback
 * that runs every geometry, and a tuning candidate (variant id `direct`, no params). No packing, no
 * copies: each pass reads the NCHW tensors as they are.
 *
 *   forward:  y[n, co, oh, ow] = epi(Σ_(kh, kw, ci) x[n, ci, oh·s − p + kh, ow·s − p + kw] · w[co, ci, kh, kw])
 *   input gradient:  dx[n, ci, ih, iw] = Σ_(kh, kw, co) dy[n, co, oh, ow] · w[co, ci, kh, kw]
 *                    over the taps with ih + p − kh = oh·s and iw + p − kw = ow·s
 *   weight gradient: dw[co, ci, kh, kw] = Σ_(n, oh, ow) dy[n, co, oh, ow] · x[n, ci, ih, iw]
 *                    with ih = oh·s − p + kh, iw = ow·s − p + kw inside the input
 *
 * The weight gradient sums N·OH·OW products per invocation (10⁵ and more at ResNet sizes), so it is
 * compensated (Kahan); the others sum Cin·KH·KW or Cout·KH·KW, as the other strategies do, with FMAs.
 * Where one invocation would loop more than `MAX_LOOP_STEPS` times (llvmpipe cuts longer loops short),
 * the weight gradient splits the rows (n, oh) and sums the partials with `reduce`.
 *
 * @module
 */
import { grid } from "../../engine/engine.ts";
import { single, variants } from "../../engine/kernel.ts";
import type { Tensor } from "../../engine/tensor.ts";
import { kahanAdd, LINEAR_ID, linearEntry, wgsl } from "../_wgsl.ts";
import {
  type Conv2dCall,
  type Conv2dGeometry,
  type Conv2dOptions,
  type Conv2dStrategy,
  type Epilogue,
  epilogueBindings,
  epilogueFn,
  epilogueOf,
  epilogueTensors,
  GEOM,
  geomUniforms,
  ioElements,
  MAX_LOOP_STEPS,
  sumSplits,
  WG,
} from "./common.ts";

// x: (N, Cin, H, W), w: (Cout, Cin, KH, KW) → y: (N, Cout, OH, OW)
// Invocation i = ((n·Cout + co)·OH + oh)·OW + ow; taps outside the input are skipped.
const fwdKernel = variants("conv2d_direct_fwd", (epi: Epilogue) => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "w", access: "read" },
    ...epilogueBindings(epi),
    { name: "y", access: "read_write" },
  ],
  uniforms: { ...GEOM, total: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${epilogueFn(epi)}
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let ow = i % p.wout;
  var t = i / p.wout;
  let oh = t % p.hout;
  t = t / p.hout;
  let co = t % p.cout;
  let n = t / p.cout;
  let ih0 = i32(oh * p.stride) - i32(p.pad);
  let iw0 = i32(ow * p.stride) - i32(p.pad);
  var acc = 0.0;
  for (var kh = 0u; kh < p.kh; kh++) {
    let ih = ih0 + i32(kh);
    if (ih < 0 || ih >= i32(p.hin)) { continue; }
    for (var kw = 0u; kw < p.kw; kw++) {
      let iw = iw0 + i32(kw);
      if (iw < 0 || iw >= i32(p.win)) { continue; }
      var xi = (n * p.cin * p.hin + u32(ih)) * p.win + u32(iw);
      var wi = co * p.cin * p.kh * p.kw + kh * p.kw + kw;
      for (var ci = 0u; ci < p.cin; ci++) {
        acc = fma(x[xi], w[wi], acc);
        xi += p.hin * p.win;
        wi += p.kh * p.kw;
      }
    }
  }
  y[i] = epilogue(acc, co, i);
}`,
}));

// dy: (N, Cout, OH, OW), w: (Cout, Cin, KH, KW) → dx: (N, Cin, H, W)
// Invocation i = ((n·Cin + ci)·H + ih)·W + iw; taps whose output position is not on the stride are skipped.
const dxKernel = single("conv2d_direct_dx", () => ({
  bindings: [
    { name: "dy", access: "read" },
    { name: "w", access: "read" },
    { name: "dx", access: "read_write" },
  ],
  uniforms: { ...GEOM, total: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let iw = i % p.win;
  var t = i / p.win;
  let ih = t % p.hin;
  t = t / p.hin;
  let ci = t % p.cin;
  let n = t / p.cin;
  let s = i32(p.stride);
  var acc = 0.0;
  for (var kh = 0u; kh < p.kh; kh++) {
    let th = i32(ih + p.pad) - i32(kh);
    if (th < 0 || th % s != 0 || th / s >= i32(p.hout)) { continue; }
    let oh = u32(th / s);
    for (var kw = 0u; kw < p.kw; kw++) {
      let tw = i32(iw + p.pad) - i32(kw);
      if (tw < 0 || tw % s != 0 || tw / s >= i32(p.wout)) { continue; }
      let ow = u32(tw / s);
      var di = (n * p.cout * p.hout + oh) * p.wout + ow;
      var wi = ci * p.kh * p.kw + kh * p.kw + kw;
      for (var co = 0u; co < p.cout; co++) {
        acc = fma(dy[di], w[wi], acc);
        di += p.hout * p.wout;
        wi += p.cin * p.kh * p.kw;
      }
    }
  }
  dx[i] = acc;
}`,
}));

// x: (N, Cin, H, W), dy: (N, Cout, OH, OW) → part: (S, Cout, Cin, KH, KW)
// Invocation i = s·Cout·Cin·KH·KW + ((co·Cin + ci)·KH + kh)·KW + kw, Kahan-summed over the rows (n, oh) of
// split s (all of them when S = 1) and their ow.
const dwKernel = single("conv2d_direct_dw", () => ({
  bindings: [
    { name: "x", access: "read" },
    { name: "dy", access: "read" },
    { name: "part", access: "read_write" },
  ],
  uniforms: { ...GEOM, chunk: "u32", total: "u32" },
  workgroupSize: [WG],
  body: wgsl`
${linearEntry(WG)} {
  ${LINEAR_ID}
  if (i >= p.total) { return; }
  let kw = i % p.kw;
  var t = i / p.kw;
  let kh = t % p.kh;
  t = t / p.kh;
  let ci = t % p.cin;
  t = t / p.cin;
  let co = t % p.cout;
  let split = t / p.cout;
  var acc = 0.0;
  var comp = 0.0;
  let r1 = min(p.batch * p.hout, (split + 1u) * p.chunk);
  for (var r = split * p.chunk; r < r1; r++) {
    let n = r / p.hout;
    let oh = r % p.hout;
    let ih = i32(oh * p.stride + kh) - i32(p.pad);
    if (ih < 0 || ih >= i32(p.hin)) { continue; }
    let xrow = ((n * p.cin + ci) * p.hin + u32(ih)) * p.win;
    let dyrow = ((n * p.cout + co) * p.hout + oh) * p.wout;
    for (var ow = 0u; ow < p.wout; ow++) {
      let iw = i32(ow * p.stride + kw) - i32(p.pad);
      if (iw < 0 || iw >= i32(p.win)) { continue; }
      ${kahanAdd("acc", "comp", "dy[dyrow + ow] * x[xrow + u32(iw)]")}
    }
  }
  part[i] = acc;
}`,
}));

/**
 * Splits of the weight gradient's rows (n, oh): one unless an invocation would loop more than
 * MAX_LOOP_STEPS times over rows and columns; rows per split.
 */
function dwSplits(g: Conv2dGeometry): { splits: number; chunk: number } {
  const rows = g.n * g.oh;
  const chunk = Math.ceil(rows / Math.ceil(rows / Math.max(1, Math.floor(MAX_LOOP_STEPS / (g.ow + 1)))));
  return { splits: Math.ceil(rows / chunk), chunk };
}

function forward(
  x: Tensor,
  w: Tensor,
  g: Conv2dGeometry,
  o: Conv2dOptions,
  _c: null,
  call: Conv2dCall,
): Tensor {
  const e = x.engine;
  const y = e.empty([g.n, g.cout, g.oh, g.ow], "conv2d");
  e.run(fwdKernel(epilogueOf(o)), {
    bindings: [x, w, ...epilogueTensors(o), y],
    uniforms: { ...geomUniforms(g), total: y.size },
    workgroups: grid(y.size, WG),
    info: `${call.info} ${call.variant}`,
  });
  return y;
}

function backwardInput(dy: Tensor, w: Tensor, g: Conv2dGeometry, _c: null, call: Conv2dCall): Tensor {
  const e = dy.engine;
  const dx = e.empty([g.n, g.cin, g.h, g.w], "conv2d dx");
  e.run(dxKernel(), {
    bindings: [dy, w, dx],
    uniforms: { ...geomUniforms(g), total: dx.size },
    workgroups: grid(dx.size, WG),
    info: `${call.info} ${call.variant}`,
  });
  return dx;
}

function backwardWeight(x: Tensor, dy: Tensor, g: Conv2dGeometry, _c: null, call: Conv2dCall): Tensor {
  const e = x.engine;
  const wShape = [g.cout, g.cin, g.kh, g.kw];
  const { splits, chunk } = dwSplits(g);
  const part = e.empty([splits, ...wShape], "conv2d dw");
  e.run(dwKernel(), {
    bindings: [x, dy, part],
    uniforms: { ...geomUniforms(g), chunk, total: part.size },
    workgroups: grid(part.size, WG),
    info: `${call.info} ${call.variant}${splits > 1 ? ` splits ${splits}` : ""}`,
  });
  return sumSplits(part, wShape);
}

/**
 * The `direct` strategy (see the module comment); it takes no params.
 *
 * @example
 * ```ts
 * const y = withVariant("conv2d.fwd", "direct", () => conv2dForward(x, w, { padding: 1 }));
 * ```
 */
export const direct: Conv2dStrategy<null> = {
  config(params) {
    if (params.length) throw new RangeError(`unknown parameter "${params[0]}" (direct takes none)`);
    return null;
  },
  unsupported: () => null,
  // Each pass binds x (or dx), y (or dy, the residual) and w (or dw), the weight gradient its partials
  // (one per split of a long sum); `grid` dispatches.
  footprint: (_e, pass, g) => ({
    elements: Math.max(ioElements(g), pass === "dw" ? dwSplits(g).splits * g.cout * g.cin * g.kh * g.kw : 0),
    groups: 0,
  }),
  forward,
  backwardInput,
  backwardWeight,
};
