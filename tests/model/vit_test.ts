/**
 * timm Vision Transformers as encoders (issue 17): `embed --encoder timm` on a Hugging Face folder gives the
 * features of timm's arithmetic (PyTorch parity on the demo patches: a plain-torch ViT in timm's layout made
 * by tests/fixtures/encoders/make_vit.py at test time — class token + GELU MLP + token pooling, and register
 * tokens + SwiGLUPacked + LayerScale + mean pooling with fc_norm, and Virchow2's cat(class token, patch mean)
 * through `--pool token+avg`), and a config or weights it cannot run are
 * refused, naming what.
 */
import { join } from "node:path";
import { runCli } from "../bad_inputs/harness.ts";
import { existsSync } from "node:fs";
import { assertEquals, assertThrows, sharedData } from "../helpers.ts";
import { readNpz } from "../../slide/npy.ts";
import { vitConfig, vitShapes } from "../../model/vit.ts";
import { swapAxes12Cpu } from "../../kernels/permute.ts";
import { swapAxes12 } from "../../ops/permute.ts";
import { assertGradients, gpuTest, rand } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/encoders/make_vit.py", import.meta.url).pathname;
const exps = sharedData("he2gene/exps");
const torchOk = await new Deno.Command(PYTHON, { args: ["-c", "import torch, PIL, numpy"] })
  .output().then((r) => r.success, () => false);
if (!torchOk) console.warn(`skipped: the timm ViT parity tests need ${PYTHON} with torch and PIL`);
if (!exps) console.warn("skipped: the timm ViT parity tests need ../shared/data/he2gene/exps");

const KINDS: Record<string, string> = {
  gelu_token: "class token, GELU MLP, token pooling",
  swiglu_reg_avg: "registers, SwiGLU, LayerScale, avg + fc_norm",
  virchow_cat: 'Virchow2\'s global_pool "" with --pool token+avg: class token and patch mean, 2D',
};
for (const kind of Object.keys(KINDS)) {
  Deno.test({
    name: `embed --encoder timm gives timm's features: ${KINDS[kind]}`,
    ignore: !torchOk || !exps,
    sanitizeOps: false,
    sanitizeResources: false,
    async fn() {
      const dir = await Deno.makeTempDir({ prefix: `he2gene-vit-${kind}-` });
      try {
        const patches = [...Deno.readDirSync(exps!)].map((e) => e.name).filter((n) => n.endsWith(".tif"))
          .sort();
        const py = await new Deno.Command(PYTHON, {
          args: [SCRIPT, dir, kind, ...patches.map((p) => join(exps!, p))],
          stdout: "piped",
          stderr: "piped",
        }).output();
        if (!py.success) throw new Error(`make_vit.py failed:\n${new TextDecoder().decode(py.stderr)}`);
        const model = join(dir, kind);
        const meta = JSON.parse(await Deno.readTextFile(join(model, "features.json")));
        const bin = await Deno.readFile(join(model, "features.bin"));
        const want = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);
        const out = join(dir, "out");
        const pool = kind === "virchow_cat" ? ["--pool", "token+avg"] : [];
        if (pool.length) {
          // Without --pool, a config saying global_pool "" is refused, naming the option.
          const bare = await runCli(["embed", exps!, "--encoder", "timm", "--weights", model, "--out", out]);
          assertEquals(bare.code, 1, bare.stderr);
          for (
            const msg of [
              'global_pool "" (timm returns every token, unpooled)',
              "--pool token, avg, or token+avg",
            ]
          ) {
            assertEquals(bare.stderr.includes(msg), true, bare.stderr);
          }
          assertEquals(existsSync(out), false);
        }
        const r = await runCli([
          "embed",
          exps!,
          "--encoder",
          "timm",
          "--weights",
          model,
          "--out",
          out,
          "--batch-size",
          "3",
          "--quiet",
          ...pool,
        ]);
        assertEquals(r.code, 0, r.stderr);
        const npz = await readNpz(join(out, "features.npz"));
        assertEquals(npz.names.data, meta.names);
        assertEquals(npz.features.shape, [patches.length, meta.dim]);
        const got = npz.features.data as Float32Array;
        let scale = 0, worst = 0;
        for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
        for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
        if (!(worst <= 1e-4 * scale)) throw new Error(`max error ${worst} > 1e-4 × ${scale}`);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

/** Shapes of a small timm ViT's weights (D 64, depth 2, patch 16, 4 × 4 patches, class token). */
function shapesOf(o: { reg?: number; swiglu?: boolean } = {}): Map<string, number[]> {
  const base = {
    name: "vit_small_patch16_224",
    patchSize: 16,
    imgSize: 64,
    embedDim: 64,
    depth: 2,
    numHeads: 4,
    mlp: o.swiglu ? "swiglu" as const : "gelu" as const,
    mlpHidden: o.swiglu ? 192 : 256,
    classToken: true,
    regTokens: o.reg ?? 0,
    noEmbedClass: false,
    globalPool: "token" as const,
    fcNorm: false,
    layerScale: false,
    qkvBias: true,
    eps: 1e-6,
    preprocess: {
      inputSize: 64,
      interpolation: "bilinear",
      cropPct: 1,
      mean: [0, 0, 0] as [number, number, number],
      std: [1, 1, 1] as [number, number, number],
    },
  };
  return vitShapes(base);
}

Deno.test("a timm config is read with the weights' shapes; what cannot run is refused, naming it", () => {
  const args = { img_size: 64, num_heads: 4 };
  const cfg = vitConfig(
    { architecture: "vit_small_patch16_224", model_args: args },
    shapesOf(),
    "m/config.json",
  );
  assertEquals([cfg.embedDim, cfg.depth, cfg.numHeads, cfg.patchSize, cfg.mlp, cfg.globalPool], [
    64,
    2,
    4,
    16,
    "gelu",
    "token",
  ]);
  assertEquals(cfg.noEmbedClass, false);
  // Heads from the name when model_args has none (vit_small: 6 does not divide 64 → refused).
  assertThrows(
    () =>
      vitConfig(
        { architecture: "vit_small_patch16_224", model_args: { img_size: 64 } },
        shapesOf(),
        "m/config.json",
      ),
    RangeError,
    "Cannot use m/config.json (vit_small_patch16_224) as a timm ViT: the number of heads",
  );
  assertThrows(
    () => vitConfig({ architecture: "resnet50" }, shapesOf(), "c.json"),
    RangeError,
    "the architecture must be a timm vit_* model",
  );
  assertThrows(
    () =>
      vitConfig(
        { architecture: "vit_base_patch16_224", model_args: { ...args, global_pool: "map" } },
        shapesOf(),
        "c.json",
      ),
    RangeError,
    "global_pool map is not supported (token, avg, token+avg)",
  );
  assertThrows(
    () =>
      vitConfig(
        {
          architecture: "vit_base_patch16_224",
          model_args: { ...args, mlp_layer: "SwiGLU", act_layer: "gelu" },
        },
        shapesOf(),
        "c.json",
      ),
    RangeError,
    "SwiGLU with act_layer gelu is not supported",
  );
  const reg = vitConfig(
    {
      architecture: "vit_small_patch16_224",
      model_args: { ...args, reg_tokens: 4, mlp_layer: "SwiGLUPacked", act_layer: "silu" },
    },
    shapesOf({ reg: 4, swiglu: true }),
    "c.json",
  );
  assertEquals([reg.regTokens, reg.mlp, reg.mlpHidden], [4, "swiglu", 192]);
  // A named architecture that carries SwiGLU in its name (…_reg4_dinov2): read from the shapes.
  const named = vitConfig(
    { architecture: "vit_small_patch16_224", model_args: args },
    shapesOf({ swiglu: true }),
    "c.json",
  );
  assertEquals(named.mlp, "swiglu");
});

Deno.test("embed --config is for timm only, and timm needs its config (named)", async () => {
  const r = await runCli(["embed", "x", "--encoder", "resnet50", "--weights", "w.pth", "--config", "c.json"]);
  assertEquals([r.code, r.stderr.includes("--config is for --encoder timm")], [2, true], r.stderr);
  if (!exps) return;
  const dir = await Deno.makeTempDir({ prefix: "he2gene-vit-noconfig-" });
  try {
    await Deno.writeFile(join(dir, "pytorch_model.bin"), new Uint8Array(8));
    const r2 = await runCli([
      "embed",
      exps,
      "--encoder",
      "timm",
      "--weights",
      dir,
      "--out",
      join(dir, "o"),
      "--quiet",
    ]);
    assertEquals(r2.code, 1, r2.stderr);
    assertEquals(
      r2.stderr.includes(`Cannot read timm's config ${join(dir, "config.json")} (give it with --config)`),
      true,
      r2.stderr,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("swapAxes12 turns [A, B, C, D] into [A, C, B, D], and its gradient is the same swap", async (e) => {
  const shape = [2, 3, 5, 7], x = rand(2 * 3 * 5 * 7, 4);
  const y = swapAxes12(e.tensor(x, shape));
  assertEquals(y.shape, [2, 5, 3, 7]);
  assertEquals(await y.toArray(), swapAxes12Cpu(x, shape));
  assertEquals(swapAxes12Cpu(swapAxes12Cpu(x, shape), [2, 5, 3, 7]), x);
  await assertGradients(e, ([t]) => swapAxes12(t), [{ data: rand(2 * 3 * 2 * 2, 5), shape: [2, 3, 2, 2] }], {
    what: "swapAxes12",
  });
});
