/**
 * PIL's BICUBIC resize (a = −0.5, support scaled when downsampling) and timm's eval transform
 * (torchvision's `Resize(floor(S / crop_pct), BICUBIC)` + `CenterCrop(S)`), on the CPU and the GPU, against
 * PIL 9.4 / torchvision 0.14 outputs stored by tests/fixtures/slide/make_bicubic.py (sha256 of the uint8
 * images), on the synthetic pattern and on real exps patches from ../shared/data; and `embed`'s input for a
 * timm ViT is that transform.
 */
import { decodeImage, resizeNormalize, uploadImages } from "../../slide/mod.ts";
import { cropCpu, evalTransformGeometry, pilCoeffs, resizeCpu } from "../../slide/resample.ts";
import { normalizeCpu } from "../../slide/resize.ts";
import { encoderInput } from "../../pipeline/embed.ts";
import { ViTEncoder, vitShapes } from "../../model/vit.ts";
import { assertClose, assertEquals, gpuTest, sharedData } from "../helpers.ts";
import { FIXTURE, pattern, sha256 } from "./fixture.ts";

type Input = { pattern?: [number, number]; shared?: string };
interface Fixture {
  resize: { input: Input; size: [number, number]; sha256: string }[];
  eval: { input: Input; inputSize: number; cropPct: number; cropMode: "center" | "squash"; sha256: string }[];
}
const fixture: Fixture = JSON.parse(await Deno.readTextFile(new URL("bicubic.json", FIXTURE)));
type Img = { width: number; height: number; data: Uint8Array };

const exps = sharedData("he2gene/exps");
if (!exps) console.warn("skipped: the real-patch bicubic cases need ../shared/data/he2gene/exps");

async function input(i: Input): Promise<Img | null> {
  if (i.pattern) return pattern(...i.pattern);
  const path = sharedData(i.shared!);
  return path ? decodeImage(await Deno.readFile(path), path) : null;
}

const name = (i: Input) => i.pattern ? `pattern ${i.pattern.join("×")}` : i.shared!;

/** timm's eval transform on the CPU: PIL bicubic resize, then the centre window (0 outside). */
function evalCpu(img: Img, c: Fixture["eval"][number]): Img {
  const g = evalTransformGeometry(img.width, img.height, c);
  return cropCpu(resizeCpu(img, g.size, { filter: "bicubic" }), g.window);
}

/** Normalised [3, H, W] values back to uint8 levels (rounding). */
function toLevels(x: Float32Array, c0: number, w: number, h: number, mean: number[], std: number[]) {
  const out = new Uint8Array(3 * w * h);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < w * h; i++) {
      out[3 * i + c] = Math.round((x[c0 + c * w * h + i] * std[c] + mean[c]) * 255);
    }
  }
  return out;
}

Deno.test("pilCoeffs bicubic: PIL's cubic weights (a = −0.5) sum to 2^22 and widen when downsampling", () => {
  const up = pilCoeffs(150, 224, "bicubic"), down = pilCoeffs(300, 224, "bicubic");
  assertEquals([up.ksize, down.ksize], [5, 7]);
  for (const c of [up, down]) {
    for (let i = 0; i < c.outSize; i++) {
      let s = 0;
      for (let k = 0; k < c.ksize; k++) s += c.weights[i * c.ksize + k];
      if (Math.abs(s - (1 << 22)) > c.ksize) throw new Error(`output ${i}: weights sum to ${s}`);
    }
  }
  // Negative lobes exist (a cubic, not a triangle).
  assertEquals(up.weights.some((w) => w < 0), true);
});

Deno.test("resizeCpu bicubic equals PIL's Image.BICUBIC resize byte for byte", async () => {
  let ran = 0;
  for (const c of fixture.resize) {
    const img = await input(c.input);
    if (!img) continue;
    const out = resizeCpu(img, c.size, { filter: "bicubic" });
    assertEquals([out.width, out.height], c.size);
    assertEquals(await sha256(out.data), c.sha256, `${name(c.input)} → ${c.size.join("×")}`);
    ran++;
  }
  assertEquals(ran >= 7, true);
});

Deno.test("evalTransformGeometry places torchvision's Resize(shorter side) + CenterCrop", () => {
  assertEquals(evalTransformGeometry(150, 150, { inputSize: 224, cropPct: 0.875 }), {
    size: [256, 256],
    window: [16, 16, 240, 240],
  });
  // 224 / 0.9 = 248.9 → 248; round(12.0) = 12.
  assertEquals(evalTransformGeometry(150, 150, { inputSize: 224, cropPct: 0.9 }).window, [12, 12, 236, 236]);
  // Non-square: the shorter side to 73, the longer to int(73 · 97 / 61) = 116.
  assertEquals(evalTransformGeometry(97, 61, { inputSize: 64, cropPct: 0.875 }), {
    size: [116, 73],
    window: [26, 4, 90, 68], // round(26.0), round(4.5) = 4 (half to even)
  });
  assertEquals(evalTransformGeometry(97, 61, { inputSize: 64, cropPct: 0.875, cropMode: "squash" }).size, [
    73,
    73,
  ]);
  // crop_pct > 1: 224 / 1.2 → 186; torchvision pads (224 − 186) // 2 = 19 before: the window starts at −19.
  assertEquals(evalTransformGeometry(150, 150, { inputSize: 224, cropPct: 1.2 }).window, [
    -19,
    -19,
    205,
    205,
  ]);
});

Deno.test("timm's eval transform on the CPU equals torchvision's Resize(BICUBIC) + CenterCrop on PIL", async () => {
  let ran = 0;
  for (const c of fixture.eval) {
    const img = await input(c.input);
    if (!img) continue;
    const out = evalCpu(img, c);
    assertEquals([out.width, out.height], [c.inputSize, c.inputSize]);
    assertEquals(
      await sha256(out.data),
      c.sha256,
      `${name(c.input)}: input ${c.inputSize}, crop_pct ${c.cropPct}, ${c.cropMode}`,
    );
    ran++;
  }
  assertEquals(ran >= 5, true);
});

gpuTest("resizeNormalize bicubic with a window equals PIL / torchvision on every fixture case", async (e) => {
  const mean = [0.485, 0.456, 0.406] as [number, number, number];
  const std = [0.229, 0.224, 0.225] as [number, number, number];
  const cases = [
    ...fixture.resize.map((c) => ({ c, eval: null })),
    ...fixture.eval.map((c) => ({ c, eval: c })),
  ];
  for (const { c, eval: ev } of cases) {
    const img = await input(c.input);
    if (!img) continue;
    let size: [number, number], window: [number, number, number, number] | undefined, want: Img;
    if (ev) {
      const g = evalTransformGeometry(img.width, img.height, ev);
      size = g.size;
      window = [...g.window];
      want = evalCpu(img, ev);
    } else {
      size = (c as Fixture["resize"][number]).size;
      want = resizeCpu(img, size, { filter: "bicubic" });
    }
    const x = await e.scope(() =>
      resizeNormalize(uploadImages(e, [img]), {
        size: [size[1], size[0]],
        window,
        filter: "bicubic",
        mean,
        std,
      })
    ).toArray();
    const w = want.width, h = want.height, what = `${name(c.input)} ${ev ? `eval ${ev.inputSize}` : size}`;
    assertEquals(x.length, 3 * w * h, what);
    assertClose(x, normalizeCpu(want.data, w, h, mean, std), { rtol: 0, atol: 1e-6 }, what);
    assertEquals(await sha256(toLevels(x, 0, w, h, mean, std)), c.sha256, `${what}: GPU levels differ`);
  }
});

gpuTest(
  "embed's input for a timm ViT is timm's eval transform of its config (real exps patches)",
  async (e) => {
    if (!exps) return;
    const cases = fixture.eval.filter((c) => c.input.shared && c.inputSize === 64);
    const imgs =
      (await Promise.all(["D2_6_22", "D2_6_23"].map((s) => input({ shared: `he2gene/exps/${s}.tif` }))))
        .filter((i): i is Img => !!i);
    assertEquals([cases.length, imgs.length], [2, 2]);
    const mean = [0.7, 0.6, 0.5], std = [0.2, 0.25, 0.15];
    // A small ViT (64 px input, patch 16) with its preprocessing: bicubic, crop_pct 0.875.
    const config = {
      architecture: "vit_small_patch16_224",
      model_args: { img_size: 64, num_heads: 4 },
      pretrained_cfg: { input_size: [3, 64, 64], interpolation: "bicubic", crop_pct: 0.875, mean, std },
    };
    const shapes = vitShapes(
      {
        name: config.architecture,
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
        preprocess: {
          inputSize: 64,
          interpolation: "bicubic",
          cropPct: 0.875,
          cropMode: "center",
          mean: [0, 0, 0],
          std: [1, 1, 1],
        },
      } as Parameters<typeof vitShapes>[0],
    );
    const tensors = new Map(
      [...shapes].map(([k, s]) => [k, { shape: s, data: new Float32Array(s.reduce((a, b) => a * b, 1)) }]),
    );
    const enc = ViTEncoder.fromTimm(e, config, tensors, "tiny");
    try {
      const x = await e.scope(() => encoderInput(enc, uploadImages(e, imgs))).toArray();
      const n = 3 * 64 * 64;
      assertEquals(x.length, 2 * n);
      for (let i = 0; i < 2; i++) {
        const levels = toLevels(x, i * n, 64, 64, mean, std);
        assertEquals(
          await sha256(levels),
          cases[i].sha256,
          `${cases[i].input.shared}: not timm's eval transform`,
        );
        assertClose(x.subarray(i * n, (i + 1) * n), normalizeCpu(levels, 64, 64, mean, std), {
          rtol: 0,
          atol: 1e-6,
        });
      }
    } finally {
      enc.dispose();
    }
  },
);
