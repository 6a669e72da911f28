/**
 * Encoders (issue 17): images per second of a forward pass at batch 8 (224 px) for ResNet-50 (torchvision
 * layout, `embed --encoder resnet50`) and timm ViT-S/16, ViT-B/16 and ViT-L/16 (class token, GELU MLP,
 * class-token pooling; ViT-L left out with --quick), random weights; the attention kernel alone at ViT-S/16's
 * shape; and PyTorch on this machine's CPU for the same networks (bench/peer_encoders.py, plain torch in
 * timm's arithmetic, same batch) in the same run. tfjs-webgpu has no ViT to run; ONNX Runtime Web is not a
 * dependency.
 *
 * Times: wall clock from the upload of the batch to the features on the host, median after a warm-up.
 * ViT-L/16 is timed once after its warm-up: one forward at batch 8 takes ~100 s on llvmpipe (2 shared
 * cores), so the usual 3 runs would add 5 minutes; the row says how many runs it took.
 *
 * @module
 */
import type { Engine } from "../engine/engine.ts";
import { mulberry32 } from "../engine/random.ts";
import { attention } from "../ops/transformer.ts";
import {
  type Encoder,
  type HostTensor,
  parameterShapes,
  RESNET50,
  ResNetEncoder,
  torchvisionResNet,
} from "../model/mod.ts";
import { initResNet } from "../model/resnet.ts";
import { ViTEncoder } from "../model/vit.ts";

/** One row of the table. */
export interface EncoderRow {
  model: string;
  batch: number;
  /** GFLOP of one image's forward pass (multiply-adds × 2). */
  gflopPerImage: number;
  /** Timed runs after the warm-up (the median is `oursS`). */
  runs: number;
  oursS: number;
  peerS?: number;
}

const VITS: Record<string, { d: number; depth: number; heads: number; label: string; maxRuns?: number }> = {
  vit_s16: { d: 384, depth: 12, heads: 6, label: "ViT-S/16" },
  vit_b16: { d: 768, depth: 12, heads: 12, label: "ViT-B/16" },
  // ~100 s per forward at batch 8 on llvmpipe: one timed run after the warm-up.
  vit_l16: { d: 1024, depth: 24, heads: 16, label: "ViT-L/16", maxRuns: 1 },
};

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

function randomHost(shape: number[], rng: () => number, scale: number): HostTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = new Float32Array(n);
  for (let i = 0; i < n; i++) data[i] = (rng() * 2 - 1) * scale;
  return { shape, data };
}

/** A ViT-{S,B,L}/16 at 224 px with random weights, in timm's layout. */
function vit(e: Engine, name: keyof typeof VITS): Encoder {
  const { d, depth, heads } = VITS[name], rng = mulberry32(11), t = new Map<string, HostTensor>();
  const ones = (n: number) => ({ shape: [n], data: new Float32Array(n).fill(1) });
  t.set("patch_embed.proj.weight", randomHost([d, 3, 16, 16], rng, 0.02));
  t.set("patch_embed.proj.bias", randomHost([d], rng, 0.02));
  t.set("cls_token", randomHost([1, 1, d], rng, 0.02));
  t.set("pos_embed", randomHost([1, 197, d], rng, 0.02));
  for (let b = 0; b < depth; b++) {
    const k = `blocks.${b}`;
    for (const n of ["norm1", "norm2"]) {
      t.set(`${k}.${n}.weight`, ones(d));
      t.set(`${k}.${n}.bias`, randomHost([d], rng, 0.02));
    }
    t.set(`${k}.attn.qkv.weight`, randomHost([3 * d, d], rng, 0.02));
    t.set(`${k}.attn.qkv.bias`, randomHost([3 * d], rng, 0.02));
    t.set(`${k}.attn.proj.weight`, randomHost([d, d], rng, 0.02));
    t.set(`${k}.attn.proj.bias`, randomHost([d], rng, 0.02));
    t.set(`${k}.mlp.fc1.weight`, randomHost([4 * d, d], rng, 0.02));
    t.set(`${k}.mlp.fc1.bias`, randomHost([4 * d], rng, 0.02));
    t.set(`${k}.mlp.fc2.weight`, randomHost([d, 4 * d], rng, 0.02));
    t.set(`${k}.mlp.fc2.bias`, randomHost([d], rng, 0.02));
  }
  t.set("norm.weight", ones(d));
  t.set("norm.bias", randomHost([d], rng, 0.02));
  const config = {
    architecture: `vit_${name === "vit_s16" ? "small" : name === "vit_b16" ? "base" : "large"}_patch16_224`,
    model_args: { img_size: 224, num_heads: heads, global_pool: "token" },
    pretrained_cfg: { input_size: [3, 224, 224], interpolation: "bilinear", crop_pct: 1 },
  };
  return ViTEncoder.fromTimm(e, config, t, name);
}

/** GFLOP of one 224 px image through ViT-(d, depth) /16: 197 tokens. */
function vitGflop(d: number, depth: number): number {
  const T = 197;
  const block = 2 * T * d * 3 * d + 4 * T * T * d + 2 * T * d * d + 2 * 2 * T * d * 4 * d;
  return (2 * 196 * d * 3 * 256 + depth * block) / 1e9;
}

/** Run the encoders benchmark; `peer` null skips PyTorch. */
export async function benchEncoders(
  e: Engine,
  opts: { quick: boolean; reps: number; log: (s: string) => void; peer: boolean },
): Promise<{ rows: EncoderRow[]; attention: { shape: number[]; ms: number; gflops: number } }> {
  const batch = 8;
  const names = opts.quick
    ? ["resnet50", "vit_s16", "vit_b16"]
    : ["resnet50", "vit_s16", "vit_b16", "vit_l16"];
  const x = new Float32Array(batch * 3 * 224 * 224);
  for (let i = 0; i < x.length; i++) x[i] = Math.sin(i * 0.001) * 1.5;
  const rows: EncoderRow[] = [];
  for (const name of names) {
    const runs = Math.max(1, Math.min(opts.reps, VITS[name]?.maxRuns ?? Infinity));
    const label = name === "resnet50" ? "ResNet-50" : VITS[name].label;
    opts.log(`… ${label}, batch ${batch}, a warm-up and ${runs} timed run${runs > 1 ? "s" : ""}`);
    let enc: Encoder;
    let gflop: number;
    if (name === "resnet50") {
      const shapes = parameterShapes(RESNET50), sd = new Map<string, HostTensor>();
      for (const [k, data] of initResNet(RESNET50, 7)) sd.set(k, { shape: shapes.get(k)!, data });
      enc = ResNetEncoder.fromTorchvision(e, torchvisionResNet(sd, "resnet50 (random)"));
      gflop = 8.18; // 4.09 GMAC (torchvision's figure for ResNet-50 at 224 px)
    } else {
      enc = vit(e, name);
      gflop = vitGflop(VITS[name].d, VITS[name].depth);
    }
    const times: number[] = [];
    try {
      for (let i = 0; i < 1 + runs; i++) {
        const t0 = performance.now();
        await e.scope(async () => await enc.features(e.tensor(x, [batch, 3, 224, 224])).toArray());
        if (i > 0) times.push((performance.now() - t0) / 1000);
      }
    } finally {
      enc.dispose();
    }
    rows.push({ model: name, batch, gflopPerImage: gflop, runs, oursS: median(times) });
  }
  // The attention kernel alone at ViT-S/16's shape.
  const shape = [batch, 6, 197, 64], rng = mulberry32(5);
  const qkv = [0, 1, 2].map(() => e.tensor(randomHost(shape, rng, 1).data, shape).keep());
  const at: number[] = [];
  for (let i = 0; i < 1 + opts.reps; i++) {
    const t0 = performance.now();
    await e.scope(async () => await attention(qkv[0], qkv[1], qkv[2], 0.125).toArray());
    if (i > 0) at.push(performance.now() - t0);
  }
  for (const t of qkv) t.dispose();
  const ms = median(at), flops = 4 * batch * 6 * 197 * 197 * 64;
  if (opts.peer) {
    opts.log("… PyTorch (CPU) on the same networks");
    const script = new URL("./peer_encoders.py", import.meta.url).pathname;
    try {
      const r = await new Deno.Command("/usr/bin/python3", {
        args: [
          script,
          String(batch),
          String(Math.min(opts.reps, 3)),
          String(navigator.hardwareConcurrency),
          ...rows.map((r) => `${r.model}:${r.batch}`),
        ],
        stdout: "piped",
        stderr: "piped",
      }).output();
      const text = new TextDecoder().decode(r.stdout);
      for (const line of text.split("\n").filter((l) => l.startsWith("{"))) {
        const j = JSON.parse(line) as { model: string; seconds: number };
        const row = rows.find((x) => x.model === j.model);
        if (row) row.peerS = j.seconds;
      }
      if (!r.success) {
        opts.log(`  PyTorch peer failed: ${new TextDecoder().decode(r.stderr).trim().split("\n").at(-1)}`);
      }
    } catch (err) {
      opts.log(`  PyTorch peer not run: ${(err as Error).message}`);
    }
  }
  return { rows, attention: { shape, ms, gflops: flops / ms / 1e6 } };
}

/** Print the table. */
export function printEncodersTable(
  r: Awaited<ReturnType<typeof benchEncoders>>,
  log: (s: string) => void,
): void {
  const label = (m: string) => (m === "resnet50" ? "ResNet-50" : VITS[m].label);
  log(
    `${"encoder".padEnd(10)} ${"batch".padStart(5)} ${"runs".padStart(4)} ${"GFLOP/img".padStart(9)} ${
      "ours img/s".padStart(10)
    } ` +
      `${"GFLOP/s".padStart(8)} ${"torch img/s".padStart(11)} ${"ours/torch".padStart(10)}`,
  );
  for (const row of r.rows) {
    const ours = row.batch / row.oursS, peer = row.peerS ? row.batch / row.peerS : undefined;
    log(
      `${label(row.model).padEnd(10)} ${String(row.batch).padStart(5)} ${String(row.runs).padStart(4)} ${
        row.gflopPerImage.toFixed(2).padStart(9)
      } ` +
        `${ours.toFixed(2).padStart(10)} ${(ours * row.gflopPerImage).toFixed(1).padStart(8)} ` +
        `${(peer?.toFixed(2) ?? "–").padStart(11)} ${
          (peer ? (ours / peer).toFixed(2) + "×" : "–").padStart(10)
        }`,
    );
  }
  const a = r.attention;
  log(
    `attention [${a.shape}] (softmax(QKᵀ/8)·V, ViT-S/16 at batch 8): ${a.ms.toFixed(1)} ms, ` +
      `${a.gflops.toFixed(1)} GFLOP/s`,
  );
  log(
    "img/s: images per second of a forward pass at the batch shown to features on the host (median of the " +
      "timed runs after a warm-up); torch: PyTorch on this machine's CPU (float32, all cores), same networks, " +
      "batches and random weights.",
  );
}
