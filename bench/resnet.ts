/**
 * ResNet-50 + HE2Gene heads, inference, seconds per image at batch 1 and 8: he2gene's `predict` and the
 * same network written with tfjs-webgpu ops on the same device (batch norms folded into the convs on both
 * sides: `tf.fused.conv2d` with bias, ReLU and, for the block output, the residual added before the ReLU).
 * The 19 699-gene head's weight (161 MB) exceeds llvmpipe's 128 MiB binding, where tfjs returns zeros;
 * the peer gets it split in two halves so that both compute the right answer.
 *
 * Times are wall clock from the upload of the batch to the readback of all three outputs, median after a
 * warm-up (the first run compiles shaders). Peak GPU memory is our buffer pool's peak for the batch.
 * With a tuning table (`opts.table`), each repetition runs the network twice, with the built-in kernel
 * variants ("ours") and with the table ("tuned"), in alternating order (ABBA), so that a drift in speed
 * over the run (other processes, memory) falls on both alike; the peak memory then covers both.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { type TuningTable, useTuning } from "../kernels/tuning.ts";
import { HE2Gene, RESNET50 } from "../model/mod.ts";
import { layout } from "../model/resnet.ts";
import type { TfjsPeer } from "./peer_tfjs.ts";

/** One row of the table. */
export interface ResNetRow {
  batch: number;
  /** Seconds per image (with a table: the built-in kernel variants). */
  oursSPerImage: number;
  /** Seconds per image with the tuning table, and oursSPerImage ÷ that (> 1: the table is faster). */
  tunedSPerImage?: number;
  tunedRatio?: number;
  tunedChecksum?: number;
  peerSPerImage?: number;
  ratio?: number;
  peakMiB: number;
  checksumOurs: number;
  checksumPeer?: number;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function input(batch: number): Float32Array {
  const x = new Float32Array(batch * 3 * 224 * 224);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.001) * 1.5;
  return x;
}

/**
 * Run the ResNet-50 benchmark. With `opts.table`, also time the network with that tuning table (the engine
 * is left on its built-in defaults afterwards); without, the engine's current setting is used.
 */
export async function benchResNet(
  e: Engine,
  peer: TfjsPeer | null,
  opts: {
    quick: boolean;
    reps: number;
    log: (s: string) => void;
    table?: TuningTable | null;
    /** Batches to time (default 1 and 8; 1 with --quick). */
    batches?: number[];
    /** The peer runs only at batches up to this (default: all). */
    peerMaxBatch?: number;
  },
): Promise<ResNetRow[]> {
  const model = HE2Gene.init(
    e,
    { backbone: RESNET50, variant: "base", targetGenes: 250, auxGenes: 19699 },
    7,
  );
  const sd = await model.stateDict();
  const rows: ResNetRow[] = [];
  const peerNet = peer ? buildPeer(peer, sd) : null;
  for (const batch of opts.batches ?? (opts.quick ? [1] : [1, 8])) {
    opts.log(`… ResNet-50 + heads, batch ${batch}`);
    const x = input(batch);
    // Mode 0: as the engine is (the built-in defaults in bench/main.ts); mode 1: the tuning table.
    const modes = opts.table ? [0, 1] : [0];
    const times: number[][] = modes.map(() => []);
    const checksums: number[] = modes.map(() => NaN);
    e.pool.resetPeak();
    try {
      for (let i = 0; i < 1 + opts.reps; i++) {
        for (const m of i % 2 ? [...modes].reverse() : modes) {
          if (opts.table) useTuning(e, m ? opts.table : null);
          const t0 = performance.now();
          const outs = await e.scope(async () => {
            const p = model.predict(e.tensor(x, [batch, 3, 224, 224]));
            return await Promise.all([p.target.toArray(), p.aux.toArray(), p.tumorProb.toArray()]);
          });
          const t1 = performance.now();
          if (i > 0) times[m].push((t1 - t0) / 1000 / batch);
          checksums[m] = outs[0].reduce((a, b) => a + b, 0);
        }
      }
    } finally {
      if (opts.table) useTuning(e, null);
    }
    const row: ResNetRow = {
      batch,
      oursSPerImage: median(times[0]),
      peakMiB: e.pool.stats().peakInUseBytes / 2 ** 20,
      checksumOurs: checksums[0],
    };
    if (opts.table) {
      row.tunedSPerImage = median(times[1]);
      row.tunedRatio = row.oursSPerImage / row.tunedSPerImage;
      row.tunedChecksum = checksums[1];
    }
    if (peerNet && batch <= (opts.peerMaxBatch ?? Infinity)) {
      const times: number[] = [];
      let checksum = NaN;
      for (let i = 0; i < 1 + Math.min(opts.reps, 2); i++) {
        const t0 = performance.now();
        const target = await peerNet(x, batch);
        const t1 = performance.now();
        if (i > 0) times.push((t1 - t0) / 1000 / batch);
        checksum = target.reduce((a, b) => a + b, 0);
      }
      row.peerSPerImage = median(times);
      row.ratio = row.peerSPerImage / row.oursSPerImage;
      row.checksumPeer = checksum;
    }
    rows.push(row);
  }
  model.dispose();
  return rows;
}

// The same network in tfjs (NHWC), batch norms folded exactly as model/resnet.ts folds them.
function buildPeer(
  peer: TfjsPeer,
  sd: Map<string, { shape: number[]; data: Float32Array }>,
): (x: Float32Array, batch: number) => Promise<Float32Array> {
  const tf = peer.tf;
  const get = (k: string) => sd.get(`base_model.${k}`)!;
  // deno-lint-ignore no-explicit-any
  const folded = new Map<string, { w: any; b: any }>();
  const { stem, blocks } = layout(RESNET50);
  const fold = (cb: { conv: string; bn: string; cin: number; cout: number; k: number }) => {
    const w = get(`${cb.conv}.weight`).data;
    const g = get(`${cb.bn}.weight`).data, b = get(`${cb.bn}.bias`).data;
    const mu = get(`${cb.bn}.running_mean`).data, v = get(`${cb.bn}.running_var`).data;
    // OIHW → HWIO with the BN scale applied.
    const hwio = new Float32Array(w.length);
    const bias = new Float32Array(cb.cout);
    for (let o = 0; o < cb.cout; o++) {
      const s = g[o] / Math.sqrt(v[o] + 1e-5);
      bias[o] = b[o] - mu[o] * s;
      for (let i = 0; i < cb.cin; i++) {
        for (let kh = 0; kh < cb.k; kh++) {
          for (let kw = 0; kw < cb.k; kw++) {
            hwio[((kh * cb.k + kw) * cb.cin + i) * cb.cout + o] =
              w[((o * cb.cin + i) * cb.k + kh) * cb.k + kw] * s;
          }
        }
      }
    }
    folded.set(cb.conv, { w: tf.tensor4d(hwio, [cb.k, cb.k, cb.cin, cb.cout]), b: tf.tensor1d(bias) });
  };
  fold(stem);
  for (const b of blocks) {
    b.convs.forEach(fold);
    if (b.downsample) fold(b.downsample);
  }
  const head = (key: string, n0 = 0, n1?: number) => {
    const w = sd.get(`${key}.weight`)!, b = sd.get(`${key}.bias`)!;
    const [n, f] = w.shape;
    const end = n1 ?? n;
    return {
      w: tf.tensor2d(w.data.subarray(n0 * f, end * f), [end - n0, f]),
      b: tf.tensor1d(b.data.subarray(n0, end)),
    };
  };
  const fc1 = head("fc1"), fc3 = head("fc3");
  const fc2a = head("fc2", 0, 9850), fc2b = head("fc2", 9850);
  // deno-lint-ignore no-explicit-any
  const conv = (x: any, name: string, stride: number, pad: number, relu: boolean, residual?: any) => {
    const { w, b } = folded.get(name)!;
    const padded = pad > 0 ? tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]]) : x;
    const y = tf.fused.conv2d({ x: padded, filter: w, strides: stride, pad: "valid", bias: b });
    if (!residual) return relu ? tf.relu(y) : y;
    return tf.relu(tf.add(y, residual));
  };
  return async (xNchw: Float32Array, batch: number) => {
    const out = tf.tidy(() => {
      const x = tf.transpose(tf.tensor4d(xNchw, [batch, 3, 224, 224]), [0, 2, 3, 1]);
      let y = conv(x, stem.conv, 2, 3, true);
      y = tf.maxPool(tf.pad(y, [[0, 0], [1, 1], [1, 1], [0, 0]], -1e30), 3, 2, "valid");
      for (const b of blocks) {
        const identity = b.downsample ? conv(y, b.downsample.conv, b.downsample.stride, 0, false) : y;
        let z = y;
        b.convs.forEach((cb, i) => {
          const last = i === b.convs.length - 1;
          z = conv(z, cb.conv, cb.stride, cb.pad, true, last ? identity : undefined);
        });
        y = z;
      }
      const f = tf.mean(y, [1, 2]);
      // deno-lint-ignore no-explicit-any
      const lin = (h: any) => tf.add(tf.matMul(f, h.w, false, true), h.b);
      return [lin(fc1), tf.concat([lin(fc2a), lin(fc2b)], 1), tf.sigmoid(lin(fc3))];
    });
    const [t] = await Promise.all(out.map((o: { data(): Promise<Float32Array> }) => o.data()));
    for (const o of out) o.dispose();
    return t as Float32Array;
  };
}

/** Print the ResNet table. */
export function printResNetTable(rows: ResNetRow[], log: (s: string) => void): void {
  const tuned = rows.some((r) => r.tunedSPerImage !== undefined);
  log(
    "batch  ours s/img" + (tuned ? "  tuned s/img  default/tuned" : "") +
      "  tfjs s/img  ours/tfjs  peak GPU MiB (ours)  target checksum ours / tfjs" + (tuned ? " (tuned)" : ""),
  );
  for (const r of rows) {
    const t = tuned
      ? `  ${(r.tunedSPerImage?.toFixed(3) ?? "–").padStart(11)}  ${
        (r.tunedRatio ? r.tunedRatio.toFixed(2) + "×" : "–").padStart(13)
      }`
      : "";
    log(
      `${String(r.batch).padStart(5)}  ${r.oursSPerImage.toFixed(3).padStart(10)}${t}  ` +
        `${(r.peerSPerImage?.toFixed(3) ?? "–").padStart(10)}  ${
          (r.ratio ? r.ratio.toFixed(2) + "×" : "–").padStart(9)
        }  ` +
        `${r.peakMiB.toFixed(0).padStart(19)}  ${r.checksumOurs.toFixed(3)} / ${
          r.checksumPeer?.toFixed(3) ?? "–"
        }${tuned ? ` (${r.tunedChecksum?.toFixed(3) ?? "–"})` : ""}`,
    );
  }
  if (tuned) {
    log("ours: built-in kernel variants; tuned: the tuning table's; default/tuned > 1: the table is faster.");
  }
}
