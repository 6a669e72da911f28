/**
 * Encoders (issue 17): torchvision ResNet state dicts in their ImageNet layout give torchvision's features
 * (PyTorch parity on the demo patches, weights made by tests/fixtures/encoders/make_torchvision.py at test
 * time), their layout problems are listed in one error, an HE2Gene checkpoint's backbone gives the features
 * its heads read, and HE2Gene.init starts from given backbone weights with fresh heads.
 */
import { join } from "node:path";
import { runCli } from "../bad_inputs/harness.ts";
import { assertEquals, assertThrows, gpuTest, sharedData, TINY_GENES, tinyCheckpoint } from "../helpers.ts";
import {
  BACKBONES,
  HE2Gene,
  HE2GENE_NORM,
  type HostTensor,
  parameterShapes,
  ResNetEncoder,
  torchvisionResNet,
} from "../../model/mod.ts";
import { initResNet } from "../../model/resnet.ts";
import { HE2GENE_MEAN, HE2GENE_STD } from "../../slide/mod.ts";
import { readCheckpoint } from "../../cli/checkpoint.ts";
import { predictPatches } from "../../cli/predict_patches.ts";
import { embedPatches } from "../../pipeline/embed.ts";
import { readNpz } from "../../slide/npy.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/encoders/make_torchvision.py", import.meta.url).pathname;
const exps = sharedData("he2gene/exps");
const visionOk = await new Deno.Command(PYTHON, { args: ["-c", "import torch, torchvision, PIL"] })
  .output().then((r) => r.success, () => false);
if (!visionOk) console.warn(`skipped: the torchvision parity test needs ${PYTHON} with torchvision and PIL`);
if (!exps) console.warn("skipped: the torchvision parity test needs ../shared/data/he2gene/exps");

/** A torchvision-layout state dict of `name` (torchvision's keys, fc included) from our init. */
function torchvisionDict(name: keyof typeof BACKBONES, seed = 3): Map<string, HostTensor> {
  const c = BACKBONES[name], shapes = parameterShapes(c);
  const sd = new Map<string, HostTensor>();
  for (const [k, data] of initResNet(c, seed)) sd.set(k, { shape: shapes.get(k)!, data });
  const f = c.block === "bottleneck" ? 8 * c.width * 4 : 8 * c.width;
  sd.set("fc.weight", { shape: [1000, f], data: new Float32Array(1000 * f) });
  sd.set("fc.bias", { shape: [1000], data: new Float32Array(1000) });
  return sd;
}

Deno.test({
  name: "embed --encoder resnet50 gives torchvision's ResNet-50 features (fc = Identity) on the demo patches",
  ignore: !visionOk || !exps,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-encoder-" });
    try {
      const patches = [...Deno.readDirSync(exps!)].map((e) => e.name).filter((n) => n.endsWith(".tif"))
        .sort();
      const py = await new Deno.Command(PYTHON, {
        args: [SCRIPT, dir, "resnet50", ...patches.map((p) => join(exps!, p))],
        stdout: "piped",
        stderr: "piped",
      }).output();
      if (!py.success) throw new Error(`make_torchvision.py failed:\n${new TextDecoder().decode(py.stderr)}`);
      const meta = JSON.parse(await Deno.readTextFile(join(dir, "features.json")));
      const bin = await Deno.readFile(join(dir, "features.bin"));
      const want = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);
      const out = join(dir, "out");
      const r = await runCli([
        "embed",
        exps!,
        "--encoder",
        "resnet50",
        "--weights",
        join(dir, "resnet50.pth"),
        "--out",
        out,
        "--batch-size",
        "3", // two batches: 3 + 1
        "--quiet",
      ]);
      assertEquals(r.code, 0, r.stderr);
      const npz = await readNpz(join(out, "features.npz"));
      assertEquals(npz.names.data, meta.names);
      assertEquals(npz.features.shape, [patches.length, 2048]);
      const got = npz.features.data as Float32Array;
      // Within 1e-4 of the feature scale (the largest |feature|), against PyTorch in float64.
      let scale = 0, worst = 0;
      for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
      for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
      if (!(worst <= 1e-4 * scale)) throw new Error(`max error ${worst} > 1e-4 × ${scale}`);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("a torchvision state dict's layout problems are listed in one error naming the file", () => {
  const sd = torchvisionDict("resnet18");
  const { config, tensors } = torchvisionResNet(sd, "r18.pth");
  assertEquals(config.name, "resnet18");
  assertEquals(tensors.has("fc.weight"), false);
  assertEquals(tensors.size, parameterShapes(config).size);
  // DataParallel's "module." prefix is removed; num_batches_tracked may be absent (older weights).
  const dp = new Map(
    [...sd].filter(([k]) => !k.endsWith("num_batches_tracked")).map(([k, v]) => [`module.${k}`, v]),
  );
  assertEquals(torchvisionResNet(dp, "dp.pth").tensors.get("bn1.num_batches_tracked")!.data[0], 0);

  const bad = new Map(sd);
  bad.delete("layer2.0.bn1.running_var");
  bad.set("layer1.0.conv1.weight", { shape: [64, 64, 1, 1], data: new Float32Array(64 * 64) });
  bad.set("extra.weight", { shape: [2], data: new Float32Array(2) });
  const err = assertThrows(
    () => torchvisionResNet(bad, "bad.pth"),
    RangeError,
    "Cannot load bad.pth as a torchvision resnet18: 3 problem(s)",
  );
  for (
    const s of [
      "missing layer2.0.bn1.running_var (expected [128])",
      "layer1.0.conv1.weight: expected [64,64,3,3], found [64,64,1,1]",
      "unexpected extra.weight [2]",
    ]
  ) {
    assertEquals(err.message.includes(s), true, `${s} in: ${err.message}`);
  }
  const he = new Map([...sd].map(([k, v]) => [`base_model.${k}`, v]));
  assertThrows(
    () => torchvisionResNet(he, "model_base.pt"),
    RangeError,
    "it is an HE2Gene checkpoint: use --encoder he2gene",
  );
  assertEquals([...HE2GENE_NORM.mean, ...HE2GENE_NORM.std], [...HE2GENE_MEAN, ...HE2GENE_STD]);
});

gpuTest(
  "HE2Gene.init with backbone weights keeps them (running statistics too) and makes fresh heads",
  async (e) => {
    const { config, tensors } = torchvisionResNet(torchvisionDict("resnet18", 5), "r18.pth");
    const he = { backbone: config, variant: "base" as const, targetGenes: 3, auxGenes: 4 };
    const m = HE2Gene.init(e, he, 0, tensors), fresh = HE2Gene.init(e, he, 0);
    try {
      const sd = await m.stateDict(), sf = await fresh.stateDict();
      for (const k of ["conv1.weight", "layer3.1.bn2.running_var", "layer4.0.downsample.0.weight"]) {
        assertEquals(sd.get(`base_model.${k}`)!.data, tensors.get(k)!.data, k);
      }
      // Heads as a fresh model's with the same seed (the backbone does not consume the heads' random stream).
      for (const k of ["fc1.weight", "fc2.bias", "fc3.weight"]) {
        assertEquals(
          sd.get(k)!.data,
          sf.get(k)!.data,
          k,
        );
      }
      const wrong = { ...he, backbone: BACKBONES.resnet50 };
      assertThrows(
        () => HE2Gene.init(e, wrong, 0, tensors),
        RangeError,
        "Cannot initialise the resnet50 backbone: layer1.0.conv1.weight is [64,64,3,3], expected [64,64,1,1]",
      );
    } finally {
      m.dispose();
      fresh.dispose();
    }
  },
);

gpuTest("embed --encoder he2gene gives the features the checkpoint's heads read", async (e) => {
  if (!exps) return console.warn("skipped: needs ../shared/data/he2gene/exps");
  const dir = await Deno.makeTempDir({ prefix: "he2gene-embed-he-" });
  try {
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const { tensors } = await readCheckpoint(weights);
    const enc = ResNetEncoder.fromHE2Gene(e, tensors, weights);
    const names = [...Deno.readDirSync(exps)].map((x) => x.name).filter((n) => n.endsWith(".tif")).sort();
    const f = await embedPatches(
      e,
      enc,
      names.map((n) => ({ name: n.split(".")[0], bytes: Deno.readFileSync(join(exps, n)) })),
      { batchSize: 4 },
    );
    enc.dispose();
    const p = await predictPatches(exps, {
      weights,
      out: join(dir, "out"),
      batchSize: 4,
      tta: "single",
      quiet: true,
      engine: e,
    });
    // target = features · fc1ᵀ + b, on the host in float64, equals predict-patches' target.
    const w = tensors.get("fc1.weight")!.data, b = tensors.get("fc1.bias")!.data;
    const G = TINY_GENES.target.length, D = f.dim;
    assertEquals([f.names, D], [p.names, tensors.get("fc1.weight")!.shape[1]]);
    let worst = 0;
    for (let i = 0; i < f.names.length; i++) {
      for (let g = 0; g < G; g++) {
        let s = b[g];
        for (let d = 0; d < D; d++) s += f.features[i * D + d] * w[g * D + d];
        worst = Math.max(worst, Math.abs(s - p.target[i * G + g]));
      }
    }
    if (!(worst <= 1e-4)) throw new Error(`head(features) differs from predict-patches by ${worst}`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("embed's options are checked before anything is read (exit 2, naming the option)", async () => {
  for (
    const [args, msg] of [
      [["embed", "x", "--weights", "w.pth"], "--encoder is required (resnet50, he2gene or timm)"],
      [
        ["embed", "x", "--encoder", "vit", "--weights", "w.pth"],
        "--encoder must be resnet50, he2gene or timm, current value is vit",
      ],
      [["embed", "x", "--encoder", "resnet50"], "--weights is required"],
      [
        ["embed", "x", "--encoder", "resnet50", "--weights", "w", "--batch-size", "0"],
        "--batch-size must be an integer ≥ 1, current value is 0",
      ],
    ] as const
  ) {
    const r = await runCli([...args]);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertEquals(r.stderr.includes(msg), true, r.stderr);
  }
});
