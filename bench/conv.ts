/**
 * Convolution GFLOP/s at ResNet-50 layer shapes (batch 2): forward, input gradient (dX) and weight
 * gradient (dW), ours against tfjs-webgpu's `conv2d`, `Conv2DBackpropInput` and `Conv2DBackpropFilter` on
 * the same device.
 *
 * For each layer and pass: the median after one warm-up of
 * - wall: the op plus the readback of its result (what a caller waits for),
 * - gpu: the dispatches alone, from timestamp queries (`engine.timeGpu`; tfjs: `tf.time().kernelMs`);
 * GFLOP/s = 2·N·Cout·OH·OW·Cin·KH·KW / wall, the same for every pass, also as a percentage of the
 * adapter's measured FMA peak (bench/peak.ts). The peer computes the same thing in
 * NHWC / HWIO: the inputs are transposed on the CPU before upload, and the checksums (sums of the
 * results, exact for these inputs) must agree. tfjs's passes slower than 2 s at warm-up are repeated once.
 *
 * Run alone: `deno run -A bench/conv.ts [--quick] [--no-peer] [--reps N]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type Engine } from "../mod.ts";
import {
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dForward,
  type Conv2dGeometry,
  conv2dGeometry,
} from "../kernels/conv2d/mod.ts";
import type { Tensor } from "../engine/tensor.ts";
import { fmtPct, measurePeak, pctOfPeak } from "./peak.ts";
import type { ConvPass, TfjsPeer } from "./peer_tfjs.ts";

/** One layer shape: input Cin×H×H, Cout k×k filters. */
interface Layer {
  name: string;
  cin: number;
  h: number;
  cout: number;
  k: number;
  stride: number;
  pad: number;
  note: string;
}

const BATCH = 2;
const LAYERS: Layer[] = [
  { name: "conv1", cin: 3, h: 224, cout: 64, k: 7, stride: 2, pad: 3, note: "stem 7×7/2, 224² → 112²" },
  { name: "l1 3×3", cin: 64, h: 56, cout: 64, k: 3, stride: 1, pad: 1, note: "layer1.x.conv2, 56²" },
  { name: "l1 1×1", cin: 256, h: 56, cout: 64, k: 1, stride: 1, pad: 0, note: "layer1.x.conv1, 56²" },
  // torchvision (v1.5) puts the stride on the 3×3: layer3.0.conv2 takes layer2's 28² output to 14².
  {
    name: "l3 3×3/2",
    cin: 256,
    h: 28,
    cout: 256,
    k: 3,
    stride: 2,
    pad: 1,
    note: "layer3.0.conv2, 28² → 14²",
  },
  { name: "l4 3×3", cin: 512, h: 7, cout: 512, k: 3, stride: 1, pad: 1, note: "layer4.x.conv2, 7²" },
];
const QUICK = new Set(["l1 3×3", "l3 3×3/2", "l4 3×3"]);
const PASSES: ConvPass[] = ["fwd", "dx", "dw"];

/** One row of the table. */
export interface ConvRow {
  layer: string;
  pass: ConvPass;
  /** x[N,Cin,H,W] * w[Cout,Cin,K,K] sS pP */
  shape: string;
  gflop: number;
  oursWallMs: number;
  oursGpuMs: number;
  oursGflops: number;
  /** GFLOP/s as a percentage of the measured peak (when given). */
  oursPctPeak?: number;
  peerWallMs?: number;
  peerGpuMs?: number;
  peerGflops?: number;
  peerPctPeak?: number;
  /** Repetitions the peer ran (fewer when it is slow). */
  peerReps?: number;
  /** Peer time ÷ ours (> 1: we are faster). */
  ratioWall?: number;
  ratioGpu?: number;
  checksumOurs: number;
  checksumPeer?: number;
  peerErrors?: string[];
}

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

// Multiples of 1/16 in [−0.5, 0.5]: every product and partial sum is exact in float32, so both engines'
// results, and their checksums, must agree exactly.
function fill(n: number, seed: number): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((Math.imul(i + seed, 0x9e3779b1) >>> 0) % 17) - 8) / 16;
  return out;
}

/** (N, C, H, W) → (N, H, W, C). */
function nchwToNhwc(a: Float32Array, n: number, c: number, h: number, w: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let i = 0; i < n; i++) {
    for (let ch = 0; ch < c; ch++) {
      for (let y = 0; y < h * w; y++) out[(i * h * w + y) * c + ch] = a[(i * c + ch) * h * w + y];
    }
  }
  return out;
}

/** (Cout, Cin, KH, KW) → (KH, KW, Cin, Cout). */
function oihwToHwio(a: Float32Array, co: number, ci: number, kk: number): Float32Array {
  const out = new Float32Array(a.length);
  for (let o = 0; o < co; o++) {
    for (let i = 0; i < ci; i++) {
      for (let t = 0; t < kk; t++) out[(t * ci + i) * co + o] = a[(o * ci + i) * kk + t];
    }
  }
  return out;
}

async function timeOurs(e: Engine, op: () => Tensor, warmup: number, reps: number) {
  const wall: number[] = [];
  let checksum = NaN;
  for (let i = 0; i < warmup + reps; i++) {
    const t0 = performance.now();
    const y = op();
    const data = await y.toArray();
    const t1 = performance.now();
    y.dispose();
    if (i >= warmup) wall.push(t1 - t0);
    if (i === warmup) checksum = data.reduce((s, v) => s + v, 0);
  }
  const gpu: number[] = [];
  for (let i = 0; i < Math.min(reps, 3); i++) {
    let y: Tensor | null = null;
    const ms = await e.timeGpu(() => {
      y = op();
    });
    (y as Tensor | null)?.dispose();
    if (ms !== null) gpu.push(ms);
  }
  return { wallMs: median(wall), gpuMs: median(gpu), checksum };
}

const f1 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const f2 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(2));
const ratio = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : `${x.toFixed(2)}×`);

/**
 * Time conv2d forward, dX and dW at ResNet-50 shapes (batch 2), ours and (if given) tfjs-webgpu's, and
 * print a table through `opts.log`. About 1–2 minutes on llvmpipe once Mesa has cached the shaders (the
 * first run also compiles the 32×32 kernels, ~15 s each), most of it in tfjs's weight gradient.
 *
 * @example
 * ```ts
 * const rows = await benchConv(engine, peer, { quick: false, reps: 3, log: console.log, peakGflops: 48 });
 * ```
 */
export async function benchConv(
  engine: Engine,
  peer: TfjsPeer | null,
  opts: { quick: boolean; reps: number; log: (s: string) => void; peakGflops?: number },
): Promise<ConvRow[]> {
  const pct = (gflops: number) => opts.peakGflops ? pctOfPeak(gflops, opts.peakGflops) : undefined;
  const { log } = opts;
  const rows: ConvRow[] = [];
  for (const l of LAYERS.filter((l) => !opts.quick || QUICK.has(l.name))) {
    const xShape = [BATCH, l.cin, l.h, l.h], wShape = [l.cout, l.cin, l.k, l.k];
    const g: Conv2dGeometry = conv2dGeometry(xShape, wShape, { stride: l.stride, padding: l.pad });
    const yShape = [BATCH, l.cout, g.oh, g.ow];
    const o = { stride: l.stride, padding: l.pad };
    const flops = 2 * BATCH * l.cout * g.oh * g.ow * l.cin * l.k * l.k;
    const shape = `x[${xShape}]*w[${wShape}] s${l.stride} p${l.pad}`;
    const xs = fill(xShape.reduce((a, b) => a * b), 1);
    const ws = fill(wShape.reduce((a, b) => a * b), 2);
    const dys = fill(yShape.reduce((a, b) => a * b), 3);
    const x = engine.tensor(xs, xShape), w = engine.tensor(ws, wShape), dy = engine.tensor(dys, yShape);
    // The same data for the peer, in its layouts.
    const px = peer ? nchwToNhwc(xs, BATCH, l.cin, l.h, l.h) : null;
    const pw = peer ? oihwToHwio(ws, l.cout, l.cin, l.k * l.k) : null;
    const pdy = peer ? nchwToNhwc(dys, BATCH, l.cout, g.oh, g.ow) : null;
    for (const pass of PASSES) {
      log(`… ${l.name} ${pass} (${l.note})`);
      const op = pass === "fwd"
        ? () => conv2dForward(x, w, o)
        : pass === "dx"
        ? () => conv2dBackwardInput(dy, w, xShape, o)
        : () => conv2dBackwardWeight(x, dy, wShape, o);
      const ours = await timeOurs(engine, op, 1, opts.reps);
      const row: ConvRow = {
        layer: l.name,
        pass,
        shape,
        gflop: flops / 1e9,
        oursWallMs: ours.wallMs,
        oursGpuMs: ours.gpuMs,
        oursGflops: flops / (ours.wallMs * 1e6),
        oursPctPeak: pct(flops / (ours.wallMs * 1e6)),
        checksumOurs: ours.checksum,
      };
      if (peer) {
        const [a, b] = pass === "fwd" ? [px!, pw!] : pass === "dx" ? [pdy!, pw!] : [px!, pdy!];
        const p = await peer.timeConv(pass, { ...g, k: l.k }, a, b, { warmup: 1, reps: opts.reps });
        row.peerWallMs = p.wallMs;
        row.peerGpuMs = p.gpuMs;
        row.peerGflops = flops / (p.wallMs * 1e6);
        row.peerPctPeak = p.errors.length ? undefined : pct(row.peerGflops);
        row.peerReps = p.reps;
        row.ratioWall = p.errors.length ? undefined : p.wallMs / ours.wallMs;
        row.ratioGpu = p.errors.length ? undefined : p.gpuMs / ours.gpuMs;
        row.checksumPeer = p.checksum;
        if (p.errors.length) row.peerErrors = p.errors.map((m) => m.split("\n")[0]);
      }
      rows.push(row);
    }
    x.dispose(), w.dispose(), dy.dispose();
  }
  printConvTable(rows, log);
  return rows;
}

/** Print rows as a table like bench/main.ts's matmul table. */
export function printConvTable(rows: ConvRow[], log: (s: string) => void): void {
  const pct = rows.some((r) => r.oursPctPeak !== undefined);
  const head = [
    "layer",
    "pass",
    "shape",
    "GFLOP",
    "ours ms",
    "GFLOP/s",
    ...(pct ? ["% peak"] : []),
    "gpu ms",
    "peer ms",
    "GFLOP/s",
    ...(pct ? ["% peak"] : []),
    "gpu ms",
    "reps",
    "ours/peer",
    "gpu ratio",
    "check",
  ];
  const lines = rows.map((r) => [
    r.layer,
    r.pass,
    r.shape,
    f2(r.gflop),
    f1(r.oursWallMs),
    f2(r.oursGflops),
    ...(pct ? [fmtPct(r.oursPctPeak)] : []),
    f1(r.oursGpuMs),
    f1(r.peerWallMs),
    f2(r.peerGflops),
    ...(pct ? [fmtPct(r.peerPctPeak)] : []),
    f1(r.peerGpuMs),
    r.peerReps === undefined ? "–" : String(r.peerReps),
    ratio(r.ratioWall),
    ratio(r.ratioGpu),
    r.checksumPeer === undefined
      ? "–"
      : r.peerErrors
      ? "peer failed (GPU error)"
      : r.checksumPeer === r.checksumOurs
      ? "same"
      : `DIFFERENT (${r.checksumOurs} vs ${r.checksumPeer})`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const fmt = (l: string[]) =>
    l.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  log("\n" + fmt(head));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) log(fmt(l));
  log(
    "\nours/peer = peer wall time ÷ ours (op + readback; > 1 means he2gene is faster); gpu = dispatch time from " +
      "timestamps. Peer: tf.conv2d, Conv2DBackpropInput, Conv2DBackpropFilter in NHWC.",
  );
  for (const r of rows) {
    if (r.peerErrors) log(`peer on ${r.layer} ${r.pass}: ${r.peerErrors[0]} (no ratio)`);
  }
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      "no-peer": { type: "boolean", default: false },
      reps: { type: "string" },
    },
    strict: true,
  });
  const e = await createEngine();
  let peer: TfjsPeer | null = null;
  if (!values["no-peer"]) {
    const { createTfjsPeer } = await import("./peer_tfjs.ts");
    // deno-lint-ignore no-explicit-any
    peer = await createTfjsPeer(e.device, (e.device as any).adapterInfo ?? { vendor: "", architecture: "" });
  }
  const peak = await measurePeak(e);
  console.log(
    `adapter: ${e.adapterInfo.name}${e.adapterInfo.software ? " (software)" : ""}; batch ${BATCH}; ` +
      `peak ${peak.gflops.toFixed(1)} GFLOP/s (FMA kernel)`,
  );
  await benchConv(e, peer, {
    quick: values.quick,
    reps: values.reps ? Number(values.reps) : values.quick ? 2 : 3,
    log: console.log,
    peakGflops: peak.gflops,
  });
  peer?.dispose();
  e.destroy();
}
