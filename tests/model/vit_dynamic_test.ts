/**
 * timm's `dynamic_img_size`: the position embedding resampled to the input's patch grid as timm's
 * `resample_abs_pos_embed` does (torch's bicubic, align_corners=False, antialias as timm's default; checked
 * against torch 1.13 in tests/fixtures/encoders/pos_embed.json, made by make_pos_embed.py), configs that ask
 * for it read and those that cannot run refused, and `embed --encoder timm` on a ViT made at 64 px and fed
 * 96 px by its config (bicubic, crop_pct 0.875) gives the features of a torch reference in timm's layout
 * (tests/fixtures/encoders/make_vit.py `dynamic_bicubic`, made at test time).
 */
import { join } from "node:path";
import { runCli } from "../bad_inputs/harness.ts";
import {
  assertClose,
  assertEquals,
  assertThrows,
  engine,
  gpuTest,
  rand,
  sharedData,
  smallBindingEngine,
  TOL,
} from "../helpers.ts";
import type { Engine } from "../../engine/engine.ts";
import { backward } from "../../engine/autograd.ts";
import { mul } from "../../ops/elementwise.ts";
import { sum } from "../../ops/reduce.ts";
import { readNpz } from "../../slide/npy.ts";
import { resampleAbsPosEmbed, type ViTConfig, vitConfig, ViTEncoder, vitShapes } from "../../model/vit.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/encoders/make_vit.py", import.meta.url).pathname;
const exps = sharedData("he2gene/exps");
const torchOk = await new Deno.Command(PYTHON, { args: ["-c", "import torch, torchvision, PIL, numpy"] })
  .output().then((r) => r.success, () => false);
if (!torchOk) console.warn(`skipped: the dynamic_img_size parity test needs ${PYTHON} with torch and PIL`);
if (!exps) console.warn("skipped: the dynamic_img_size parity test needs ../shared/data/he2gene/exps");

interface PosCase {
  old: number;
  prefix: number;
  dim: number;
  new: [number, number];
  antialias: boolean;
  /** float32 little-endian, base64. */
  input: string;
  output: string;
}
const fixture: { torch: string; cases: PosCase[] } = JSON.parse(
  await Deno.readTextFile(new URL("../fixtures/encoders/pos_embed.json", import.meta.url)),
);
const f32 = (b64: string) => new Float32Array(Uint8Array.from(atob(b64), (ch) => ch.charCodeAt(0)).buffer);

Deno.test("resampleAbsPosEmbed equals timm's resample_abs_pos_embed (torch bicubic, antialias on and off)", () => {
  assertEquals(fixture.cases.length, 22);
  for (const c of fixture.cases) {
    const what = `${c.old}×${c.old} + ${c.prefix} → ${c.new.join("×")}, antialias ${c.antialias}`;
    const input = f32(c.input), output = f32(c.output);
    const pos = { shape: [1, c.prefix + c.old * c.old, c.dim], data: input };
    const r = resampleAbsPosEmbed(pos, c.new, { prefix: c.prefix, antialias: c.antialias });
    assertEquals(r.shape, [1, c.prefix + c.new[0] * c.new[1], c.dim], what);
    // Prefix tokens are kept bit for bit; the grid within the rounding of torch, which computes its weights
    // and sums in float32 (timm casts to float): ~1e-6 on inputs ~N(0, 1), ours is float64.
    assertEquals(r.data.subarray(0, c.prefix * c.dim), input.subarray(0, c.prefix * c.dim), what);
    assertClose(r.data, output, { rtol: 1e-5, atol: 4e-6 }, what);
  }
  // antialias changes the answer (a = −0.5 and normalised taps against a = −0.75 and clamped taps).
  const aa = f32(fixture.cases.find((c) => c.new[0] === 6 && c.antialias)!.output);
  const plain = f32(fixture.cases.find((p) => p.new[0] === 6 && !p.antialias)!.output);
  const diff = aa.reduce((m, v, i) => Math.max(m, Math.abs(v - plain[i])), 0);
  assertEquals(diff > 1e-2, true);
  assertThrows(
    () => resampleAbsPosEmbed({ shape: [1, 17, 2], data: new Float32Array(34) }, [3, 3], { prefix: 0 }),
    RangeError,
    "Cannot resample pos_embed [1,17,2] (prefix 0)",
  );
});

/** A small timm ViT's config (D 64, patch 16, made at 64 px: a 4 × 4 grid, class token). */
function small(o: Partial<ViTConfig> = {}): ViTConfig {
  return {
    name: "vit_small_patch16_224",
    patchSize: 16,
    imgSize: 64,
    embedDim: 64,
    depth: 1,
    numHeads: 4,
    mlp: "gelu",
    mlpHidden: 256,
    classToken: true,
    regTokens: 0,
    noEmbedClass: false,
    globalPool: "token",
    fcNorm: false,
    layerScale: false,
    qkvBias: true,
    eps: 1e-6,
    preprocess: { inputSize: 64, interpolation: "bicubic", cropPct: 1, mean: [0, 0, 0], std: [1, 1, 1] },
    ...o,
  };
}

Deno.test("dynamic_img_size lets input_size differ from img_size; without it, or padded, refused", () => {
  const shapes = vitShapes(small());
  const cfg = (args: Record<string, unknown>, input = 96) => ({
    architecture: "vit_small_patch16_224",
    model_args: { img_size: 64, num_heads: 4, ...args },
    pretrained_cfg: { input_size: [3, input, input] },
  });
  const c = vitConfig(cfg({ dynamic_img_size: true }), shapes, "c.json");
  assertEquals([c.dynamicImgSize, c.imgSize, c.preprocess.inputSize], [true, 64, 96]);
  // timm's PretrainedCfg defaults when the config says nothing.
  assertEquals([c.preprocess.interpolation, c.preprocess.cropPct, c.preprocess.cropMode], [
    "bicubic",
    0.875,
    "center",
  ]);
  assertEquals(vitConfig(cfg({}, 64), shapes, "c.json").dynamicImgSize, false);
  assertThrows(
    () => vitConfig(cfg({}), shapes, "c.json"),
    RangeError,
    "input_size 96 differs from img_size 64 without dynamic_img_size",
  );
  assertThrows(
    () => vitConfig(cfg({ dynamic_img_size: true }, 100), shapes, "c.json"),
    RangeError,
    "input_size 100 is not a multiple of the patch size 16",
  );
  assertThrows(
    () => vitConfig(cfg({ dynamic_img_size: true, dynamic_img_pad: true }), shapes, "c.json"),
    RangeError,
    "dynamic_img_pad is not supported",
  );
});

gpuTest(
  "a dynamic_img_size ViT runs other grids (non-square too) with the resampled pos_embed",
  async (e) => {
    const shapes = vitShapes(small());
    let seed = 3;
    const tensors = new Map(
      [...shapes].map(([k, s]) => {
        const n = s.reduce((a, b) => a * b, 1);
        return [k, { shape: s, data: rand(n, seed++, -0.2, 0.2) }];
      }),
    );
    const args = { img_size: 64, num_heads: 4 };
    const fixed = ViTEncoder.fromTimm(
      e,
      { architecture: "vit_small_patch16_224", model_args: args },
      tensors,
    );
    const dyn = ViTEncoder.fromTimm(e, {
      architecture: "vit_small_patch16_224",
      model_args: { ...args, dynamic_img_size: true },
    }, tensors);
    try {
      const x64 = e.tensor(rand(2 * 3 * 64 * 64, 7), [2, 3, 64, 64]);
      // On the weights' own grid both give the same features.
      assertEquals(await dyn.features(x64).toArray(), await fixed.features(x64).toArray());
      const x = e.tensor(rand(2 * 3 * 48 * 80, 8), [2, 3, 48, 80]);
      assertThrows(() => fixed.features(x), RangeError, "it takes [N, 3, 64, 64]");
      const f = await dyn.features(x).toArray();
      assertEquals(f.length, 2 * 64);
      assertEquals(f.every(Number.isFinite), true);
      // Each image alone gives the same features (the pos_embed for the 3 × 5 grid is made once, then reused).
      const one = await dyn.features(
        e.tensor(rand(2 * 3 * 48 * 80, 8).subarray(0, 3 * 48 * 80), [1, 3, 48, 80]),
      )
        .toArray();
      assertClose(one, f.subarray(0, 64), { rtol: 1e-5, atol: 1e-6 });
      assertThrows(
        () => dyn.features(e.tensor(new Float32Array(3 * 50 * 64), [1, 3, 50, 64])),
        RangeError,
        "multiples of 16",
      );
    } finally {
      fixed.dispose();
      dyn.dispose();
    }
  },
);

Deno.test({
  name: "embed --encoder timm with dynamic_img_size, bicubic and crop_pct 0.875 gives timm's features",
  ignore: !torchOk || !exps,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-vit-dynamic-" });
    try {
      const patches = [...Deno.readDirSync(exps!)].map((e) => e.name).filter((n) => n.endsWith(".tif"))
        .sort();
      const py = await new Deno.Command(PYTHON, {
        args: [SCRIPT, dir, "dynamic_bicubic", ...patches.map((p) => join(exps!, p))],
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (!py.success) throw new Error(`make_vit.py failed:\n${new TextDecoder().decode(py.stderr)}`);
      const model = join(dir, "dynamic_bicubic");
      const meta = JSON.parse(await Deno.readTextFile(join(model, "features.json")));
      const bin = await Deno.readFile(join(model, "features.bin"));
      const want = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);
      const out = join(dir, "out");
      const r = await runCli([
        "embed",
        exps!,
        "--encoder",
        "timm",
        "--weights",
        model,
        "--out",
        out,
        "--quiet",
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stderr.includes("warning"), false, r.stderr);
      const npz = await readNpz(join(out, "features.npz"));
      assertEquals(npz.names.data, meta.names);
      assertEquals(npz.features.shape, [patches.length, meta.dim]);
      const got = npz.features.data as Float32Array;
      let scale = 0, worst = 0;
      for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      console.log(`dynamic_bicubic: max error ${worst.toExponential(2)} of scale ${scale.toFixed(3)}`);
      if (!(worst <= 1e-4 * scale)) throw new Error(`max error ${worst} > 1e-4 × ${scale}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "a batch wider than one storage binding runs in chunks of images, features and gradients as whole",
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const shapes = vitShapes(small({ depth: 2, patchSize: 4 }));
    let seed = 41;
    const tensors = new Map(
      [...shapes].map((
        [k, s],
      ) => [k, { shape: s, data: rand(s.reduce((a, b) => a * b, 1), seed++, -0.2, 0.2) }]),
    );
    const config = {
      architecture: "vit_small_patch16_224",
      model_args: { img_size: 64, patch_size: 4, num_heads: 4 },
    };
    const x = rand(5 * 3 * 64 * 64, 5);
    // 600 KiB bindings: one image's widest activation is its MLP layer (257 tokens × 256, 257 KiB), so 5
    // images run as 2 + 2 + 1.
    const run = async (e: Engine) => {
      const enc = ViTEncoder.fromTimm(e, config, tensors);
      const f = await enc.features(e.tensor(x, [5, 3, 64, 64])).toArray();
      const t = enc.trainable(1);
      const out = t.forward(e.tensor(x, [5, 3, 64, 64]));
      await backward(sum(mul(out, e.tensor(rand(out.size, 6), out.shape))));
      const grads = await Promise.all([...t.params.values()].map((p) => p.grad!.toArray()));
      t.dispose();
      enc.dispose();
      return { f, grads };
    };
    const whole = await run(await engine());
    const narrowEngine = await smallBindingEngine(600 << 10);
    try {
      const chunked = await run(narrowEngine);
      narrowEngine.checkError();
      assertClose(chunked.f, whole.f, TOL.model, "features in chunks");
      chunked.grads.forEach((g, i) => assertClose(g, whole.grads[i], TOL.model, `gradient ${i} in chunks`));
    } finally {
      narrowEngine.destroy();
    }
  },
});
