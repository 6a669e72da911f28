/**
 * `deno task bench`: matmul GFLOP/s on this adapter, ours against tfjs-webgpu 4.22 on the same device.
 *
 * For each shape (M×K×N): the median after warm-up of
 * - wall: one matmul plus the readback of C (what a caller waits for),
 * - gpu: the kernel alone, from timestamp queries (when the adapter has `timestamp-query`);
 * the same for the peer, and the ratio ours / peer (> 1: we are faster).
 *
 * Then conv2d forward, dX and dW on ResNet-50 layer shapes against tfjs's conv2d /
 * Conv2DBackpropInput / Conv2DBackpropFilter (see bench/conv.ts).
 *
 * Options: `--json` (machine-readable), `--quick` (fewer shapes and reps), `--shapes a,b` (matmul names),
 * `--suite matmul,conv,resnet,slide,train,slide-predict` (default all; slide-predict takes ~2 min, 32 spots
 *   with `--quick`),
 * `--no-peer`, `--reps N`, `--data DIR` (the shared data folder; default `../shared/data` beside the project).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { createEngine, type Engine } from "../mod.ts";
import { chooseMatmulKernel, matmulForward } from "../kernels/matmul.ts";
import { benchConv, type ConvRow, printConvTable } from "./conv.ts";
import type { TfjsPeer } from "./peer_tfjs.ts";
import { benchResNet, printResNetTable, type ResNetRow } from "./resnet.ts";
import { benchSlide, printSlideTable, type SlideRow } from "./slide.ts";
import { benchTrain, printTrainTable, type TrainRow } from "./train.ts";
import { benchPredictSlide, type PredictSlideRow, printPredictSlideTable } from "./predict_slide.ts";

interface Shape {
  name: string;
  m: number;
  k: number;
  n: number;
  transposeB?: boolean;
  note?: string;
}

const SHAPES: Shape[] = [
  { name: "256³", m: 256, k: 256, n: 256 },
  { name: "512³", m: 512, k: 512, n: 512 },
  { name: "1024³", m: 1024, k: 1024, n: 1024 },
  { name: "2048³", m: 2048, k: 2048, n: 2048 },
  { name: "layer1 3×3", m: 12544, k: 576, n: 64, note: "ResNet-50 layer1 conv as GEMM, batch 4" },
  { name: "layer2 3×3", m: 3136, k: 1152, n: 128, note: "layer2" },
  { name: "layer3 3×3", m: 784, k: 2304, n: 256, note: "layer3" },
  { name: "layer4 3×3", m: 196, k: 4608, n: 512, note: "layer4" },
  {
    name: "aux head",
    m: 32,
    k: 2048,
    n: 19699,
    transposeB: true,
    note: "32×2048 · (19699×2048)ᵀ, 161 MB weight",
  },
];
const SUITES = ["matmul", "conv", "resnet", "slide", "train", "slide-predict"];
const QUICK = new Set(["256³", "512³", "1024³", "layer1 3×3", "aux head"]);

function median(xs: number[]): number {
  const s = [...xs].filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function fill(n: number, seed: number): Float32Array {
  // Small multiples of 1/16: sums are exact in float32, so both engines' checksums must agree exactly.
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = (((Math.imul(i + seed, 0x9e3779b1) >>> 0) % 17) - 8) / 16;
  return out;
}

interface Row {
  shape: string;
  m: number;
  k: number;
  n: number;
  transposeB: boolean;
  kernel: string;
  oursWallMs: number;
  oursGpuMs: number;
  oursGflops: number;
  peerWallMs?: number;
  peerGpuMs?: number;
  peerGflops?: number;
  ratioWall?: number;
  ratioGpu?: number;
  checksumOurs: number;
  checksumPeer?: number;
  peerErrors?: string[];
}

async function timeOurs(e: Engine, a: Float32Array, b: Float32Array, s: Shape, warmup: number, reps: number) {
  const ta = e.tensor(a, [s.m, s.k]);
  const tb = e.tensor(b, s.transposeB ? [s.n, s.k] : [s.k, s.n]);
  const wall: number[] = [];
  const gpu: number[] = [];
  let checksum = NaN;
  for (let i = 0; i < warmup + reps; i++) {
    const t0 = performance.now();
    const c = matmulForward(ta, tb, { transposeB: s.transposeB });
    const data = await c.toArray();
    const t1 = performance.now();
    c.dispose();
    if (i >= warmup) wall.push(t1 - t0);
    if (i === warmup) checksum = data.reduce((acc, v) => acc + v, 0);
  }
  for (let i = 0; i < Math.min(reps, 3); i++) {
    let c = null as ReturnType<typeof matmulForward> | null;
    const ms = await e.timeGpu(() => {
      c = matmulForward(ta, tb, { transposeB: s.transposeB });
    });
    c!.dispose();
    if (ms !== null) gpu.push(ms);
  }
  ta.dispose();
  tb.dispose();
  return { wallMs: median(wall), gpuMs: median(gpu), checksum };
}

const HOST_OPS = 2000;

// Host-side cost of recording one small op (the per-op JavaScript work that dominates small layers).
async function hostCost(
  e: Engine,
  peer: { tf?: unknown } | null,
): Promise<{ oursUs: number; peerUs?: number }> {
  const { add } = await import("../ops/elementwise.ts");
  const x = e.tensor(new Float32Array(256), [256]);
  const once = () =>
    e.scope(() => {
      let y = x;
      for (let i = 0; i < HOST_OPS; i++) {
        const z = add(y, 1);
        if (y !== x) y.dispose();
        y = z;
      }
    });
  once();
  await e.sync();
  const samples: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    once();
    samples.push(((performance.now() - t0) * 1000) / HOST_OPS);
    await e.sync();
  }
  x.dispose();
  // deno-lint-ignore no-explicit-any
  const tf = (peer as any)?.tf;
  let peerUs: number | undefined;
  if (tf) {
    const px = tf.zeros([256]);
    const run = () =>
      tf.tidy(() => {
        let y = px;
        for (let i = 0; i < HOST_OPS; i++) y = tf.add(y, 1);
        return y;
      });
    const warm = run();
    await warm.data();
    warm.dispose();
    const ps: number[] = [];
    for (let r = 0; r < 3; r++) {
      const t0 = performance.now();
      const y = run();
      ps.push(((performance.now() - t0) * 1000) / HOST_OPS);
      await y.data();
      y.dispose();
    }
    px.dispose();
    peerUs = median(ps);
  }
  return { oursUs: median(samples), peerUs };
}

const gf = (s: Shape, ms: number) => (2 * s.m * s.n * s.k) / (ms * 1e6);
const f1 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));
const f2 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(2));

/** Run the benchmark with CLI-style arguments. */
export async function main(args: string[]): Promise<void> {
  const { values } = parseArgs({
    args,
    options: {
      json: { type: "boolean", default: false },
      quick: { type: "boolean", default: false },
      shapes: { type: "string" },
      "no-peer": { type: "boolean", default: false },
      reps: { type: "string" },
      suite: { type: "string", default: SUITES.join(",") },
      data: { type: "string" },
    },
    strict: true,
  });
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const e = await createEngine();
  const info = e.adapterInfo;
  const wanted = values.shapes?.split(",").map((x) => x.trim());
  const shapes = SHAPES.filter((
    s,
  ) => (wanted ? wanted.includes(s.name) : !values.quick || QUICK.has(s.name)));
  if (shapes.length === 0) {
    throw new Error(
      `no shape matches --shapes ${values.shapes}; names: ${SHAPES.map((s) => s.name).join(", ")}`,
    );
  }
  const reps = values.reps ? Number(values.reps) : values.quick ? 3 : 5;
  log(`adapter: ${info.name}${info.software ? " (software)" : ""}, backend: ${info.backend}`);
  log(
    `timestamps: ${e.device.features.has("timestamp-query") ? "yes" : "no"}; median of ${reps} after warm-up`,
  );
  let peer: TfjsPeer | null = null;
  if (!values["no-peer"]) {
    const { createTfjsPeer } = await import("./peer_tfjs.ts");
    // tfjs 4.22 reads only vendor and architecture (for Intel tuning).
    peer = await createTfjsPeer(e.device, { vendor: info.vendor, architecture: "" } as GPUAdapterInfo);
    log(`peer: ${peer.name} on the same device`);
  }
  const suites = new Set((values.suite ?? "").split(",").map((x) => x.trim()));
  for (const name of suites) {
    if (!SUITES.includes(name)) throw new Error(`unknown suite "${name}" (${SUITES.join(", ")})`);
  }
  const rows: Row[] = [];
  for (const s of suites.has("matmul") ? shapes : []) {
    const a = fill(s.m * s.k, 1), b = fill(s.k * s.n, 2);
    const big = 2 * s.m * s.n * s.k > 2 ** 33;
    const r = big ? Math.max(1, Math.min(reps, 2)) : reps;
    const cfg = chooseMatmulKernel(e, s.m, s.n, s.k);
    const kernel = cfg.kind === "reg"
      ? `reg ${cfg.tm}×${cfg.tn} ${cfg.lanes}`
      : `tiled ${cfg.wy * cfg.tm}×${cfg.wx * cfg.tn}`;
    log(`… ${s.name} (${s.m}×${s.k}×${s.n}${s.transposeB ? ", Bᵀ" : ""}) with ${kernel}`);
    const ours = await timeOurs(e, a, b, s, 1, r);
    const row: Row = {
      shape: s.name,
      m: s.m,
      k: s.k,
      n: s.n,
      transposeB: !!s.transposeB,
      kernel,
      oursWallMs: ours.wallMs,
      oursGpuMs: ours.gpuMs,
      oursGflops: gf(s, ours.wallMs),
      checksumOurs: ours.checksum,
    };
    if (peer) {
      const p = await peer.timeMatmul(a, b, s.m, s.k, s.n, {
        transposeB: !!s.transposeB,
        warmup: 1,
        reps: r,
      });
      row.peerWallMs = p.wallMs;
      row.peerGpuMs = p.gpuMs;
      row.peerGflops = gf(s, p.wallMs);
      // A peer that raised a GPU error computed nothing useful (tfjs returns zeros): no ratio.
      row.ratioWall = p.errors.length ? undefined : p.wallMs / ours.wallMs;
      row.ratioGpu = p.errors.length ? undefined : p.gpuMs / ours.gpuMs;
      row.checksumPeer = p.checksum;
      if (p.errors.length) row.peerErrors = p.errors.map((x: string) => x.split("\n")[0]);
    }
    rows.push(row);
  }
  const host = await hostCost(e, peer);
  let convRows: ConvRow[] = [];
  if (suites.has("conv")) {
    log("\nconv2d (ResNet-50 layer shapes, batch 2) …");
    convRows = await benchConv(e, peer, { quick: values.quick ?? false, reps: Math.min(reps, 3), log });
  }
  let resnetRows: ResNetRow[] = [];
  if (suites.has("resnet")) {
    log("\nResNet-50 + HE2Gene heads, inference …");
    resnetRows = await benchResNet(e, peer, { quick: values.quick ?? false, reps: Math.min(reps, 3), log });
  }
  let trainRows: TrainRow[] = [];
  if (suites.has("train")) {
    log("\nHE2Gene training step …");
    trainRows = await benchTrain(e, peer, { quick: values.quick ?? false, reps: Math.min(reps, 3), log });
  }
  let slideRows: SlideRow[] = [];
  if (suites.has("slide")) {
    log("\nslide I/O and Macenko, ours against openslide / PIL / numpy …");
    slideRows = await benchSlide(e, {
      quick: values.quick ?? false,
      reps: Math.min(reps, 3),
      log,
      dataDir: values.data,
    });
  }
  let predictSlideRows: PredictSlideRow[] = [];
  if (suites.has("slide-predict")) {
    log("\npredict-slide on her2st C2 (ResNet-50 HE2Gene-Base, --tta single), by stage …");
    predictSlideRows = await benchPredictSlide(e, {
      quick: values.quick ?? false,
      log,
      dataDir: values.data,
    });
  }
  peer?.dispose();
  if (values.json) {
    console.log(
      JSON.stringify(
        {
          adapter: info,
          date: new Date().toISOString(),
          rows,
          hostCost: host,
          conv: convRows,
          resnet: resnetRows,
          slide: slideRows,
          train: trainRows,
          predictSlide: predictSlideRows,
        },
        null,
        2,
      ),
    );
  } else {
    const head = [
      "shape",
      "M×K×N",
      "kernel",
      "ours ms",
      "GFLOP/s",
      "gpu ms",
      "peer ms",
      "GFLOP/s",
      "gpu ms",
      "ours/peer",
      "gpu ratio",
      "check",
    ];
    const lines = rows.map((r) => [
      r.shape,
      `${r.m}×${r.k}×${r.n}${r.transposeB ? "ᵀ" : ""}`,
      r.kernel,
      f1(r.oursWallMs),
      f2(r.oursGflops),
      f1(r.oursGpuMs),
      f1(r.peerWallMs),
      f2(r.peerGflops),
      f1(r.peerGpuMs),
      r.ratioWall === undefined ? "–" : `${r.ratioWall.toFixed(2)}×`,
      r.ratioGpu === undefined || !Number.isFinite(r.ratioGpu) ? "–" : `${r.ratioGpu.toFixed(2)}×`,
      r.checksumPeer === undefined
        ? "–"
        : r.peerErrors
        ? "peer failed (GPU error)"
        : r.checksumPeer === r.checksumOurs
        ? "same"
        : "DIFFERENT",
    ]);
    const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
    const fmt = (l: string[]) =>
      l.map((c, i) => (i < 3 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
    console.log("\n" + fmt(head));
    console.log(widths.map((w) => "-".repeat(w)).join("  "));
    for (const l of lines) console.log(fmt(l));
    console.log(
      "\nours/peer = peer wall time ÷ ours (matmul + readback; > 1 means he2gene is faster); gpu = kernel time from timestamps.",
    );
    console.log(
      `\nhost cost per op (recording ${HOST_OPS} small adds, no GPU wait): ours ${
        host.oursUs.toFixed(1)
      } µs` +
        (host.peerUs === undefined ? "" : `, ${peer ? "peer" : ""} ${host.peerUs.toFixed(1)} µs`),
    );
    for (const r of rows) {
      if (r.peerErrors) {
        console.log(`peer on ${r.shape}: ${r.peerErrors[0]} (tfjs returns zeros here; no ratio)`);
      }
    }
    if (convRows.length) {
      console.log("\nconv2d, batch 2:");
      printConvTable(convRows, console.log);
    }
    if (resnetRows.length) {
      console.log("\nResNet-50 + heads (250 target, 19 699 aux, tumour), inference, seconds per image:");
      printResNetTable(resnetRows, console.log);
    }
    if (trainRows.length) {
      console.log("\nHE2Gene training step (forward, backward, clip 1.0, Adam + L2 1e-4), seconds per step:");
      printTrainTable(trainRows, console.log);
    }
    if (slideRows.length) {
      console.log("\nslide I/O and stain normalisation (throughput, wall time):");
      printSlideTable(slideRows, console.log);
    }
    if (predictSlideRows.length) {
      console.log("\npredict-slide, her2st C2, spots per second by stage:");
      printPredictSlideTable(predictSlideRows, console.log);
    }
  }
  e.destroy();
}

if (import.meta.main) await main(Deno.args);
