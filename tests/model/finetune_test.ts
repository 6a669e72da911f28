/**
 * An encoder's last K blocks fine-tuned under HE2Gene's heads (`FineTunedEncoder`, model/finetune.ts,
 * issue 17 item 4's `--unfreeze-last K`), trained by `Trainer` against PyTorch:
 * tests/fixtures/encoders/make_finetune.py (run at test time) takes make_unfreeze.py's tiny torchvision
 * ResNet and timm-layout ViTs with nn.Linear heads, and computes in float64 one step of HE2Gene's loss
 * (MSE + 20·MSE + BCE over the labelled spots), clipping at 1.0 and Adam (lr 1e-3, L2 1e-4), then the
 * eval-mode predictions. Here, through `Trainer.step`:
 * (a) the losses, Adam's moments (the clipped, L2-decayed gradients) and every changed tensor against
 *     PyTorch's;
 * (b) what trains and changes is the last K blocks (+ a ViT's final norm) and the heads, the encoder's own
 *     frozen features stay bit for bit;
 * (c) `predict` after the step gives PyTorch's eval-mode predictions, and so does the model rebuilt from its
 *     state dict and the original weights (`fromStateDict`: on the folded path, or bit for bit with the
 *     blocks trainable again).
 *
 * Parity bar: issue 17's, max error ≤ 1e-4 of the quantity's scale — `TOL.model` (atol 1e-4) on each
 * tensor divided by its largest |value| in PyTorch's result (as tests/model/unfreeze_test.ts).
 */
import { join } from "node:path";
import type { Engine } from "../../engine/engine.ts";
import { type Encoder, ResNetEncoder, torchvisionResNet } from "../../model/encoder.ts";
import { ViTEncoder } from "../../model/vit.ts";
import { type HostTensor, initHeads } from "../../model/he2gene.ts";
import { FineTunedEncoder } from "../../model/finetune.ts";
import { DEFAULT_TRAIN, Trainer } from "../../model/train.ts";
import { compareClose } from "../../kernels/tolerance.ts";
import { assertClose, assertEquals, assertThrows, gpuTest, TOL } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/encoders/make_finetune.py", import.meta.url).pathname;
const torchOk = await new Deno.Command(PYTHON, { args: ["-c", "import torch, torchvision, numpy"] })
  .output().then((r) => r.success, () => false);
if (!torchOk) console.warn(`skipped: the fine-tuning parity tests need ${PYTHON} with torch and torchvision`);

// Every case made by one run of the script, on first use; the folder goes when the process ends.
let fixtures: Promise<string> | null = null;
function fixtureDir(): Promise<string> {
  return fixtures ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-finetune-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const py = await new Deno.Command(PYTHON, { args: [SCRIPT, dir], stdout: "piped", stderr: "piped" })
      .output();
    if (!py.success) throw new Error(`make_finetune.py failed:\n${new TextDecoder().decode(py.stderr)}`);
    return dir;
  })();
}

interface Fixture {
  k: number;
  lr: number;
  weightDecay: number;
  clipNorm: number;
  auxWeight: number;
  config: unknown;
  trainable: string[];
  changed: string[];
  losses: { total: number; target: number; aux: number; tumor: number };
  get(name: string): HostTensor;
  /** Arrays `<prefix><key>` as a state dict keyed by `<key>`. */
  prefixed(prefix: string): Map<string, HostTensor>;
}

async function load(name: string): Promise<Fixture> {
  const dir = await fixtureDir();
  const m = JSON.parse(await Deno.readTextFile(join(dir, `${name}.json`)));
  const bin = await Deno.readFile(join(dir, `${name}.bin`));
  const floats = new Float32Array(bin.buffer, bin.byteOffset, bin.byteLength / 4);
  const get = (a: string): HostTensor => {
    const e = m.arrays[a];
    if (!e) throw new RangeError(`${name}: no array ${a}`);
    const n = e.shape.reduce((x: number, y: number) => x * y, 1);
    return { shape: e.shape, data: floats.subarray(e.offset, e.offset + n) };
  };
  const prefixed = (p: string) =>
    new Map(
      Object.keys(m.arrays).filter((a) => a.startsWith(p)).map((a) => [a.slice(p.length), get(a)]),
    );
  return { ...m, get, prefixed };
}

/** `got ≈ want` within `TOL.model` once both are divided by max |want| (issue 17's 1e-4 of the scale). */
function assertParity(got: ArrayLike<number>, want: ArrayLike<number>, what: string): void {
  let scale = 0;
  for (let i = 0; i < want.length; i++) scale = Math.max(scale, Math.abs(want[i]));
  if (scale === 0) scale = 1;
  const s = (a: ArrayLike<number>) => Float64Array.from(a, (v) => v / scale);
  assertClose(s(got), s(want), TOL.model, `${what} (scale ${scale})`);
}

/**
 * A parameter after Adam's first step, θ₁ = θ₀ − lr·g′/(|g′| + ε) with g′ = clip·g + wd·θ₀ (m̂ = g′,
 * √v̂ = |g′|), checked in three parts:
 * - g′, as Adam's first moment m = (1 − β1)·g′, against PyTorch's at the parity bar, every element (the
 *   caller: `exp_avg`);
 * - every θ₁ against Adam's update computed in float64 from θ₀ and our own m and v (`TOL.adam.theta`, the
 *   optimizer's own entry): the arithmetic of the step;
 * - θ₁ against PyTorch's at the parity bar wherever the step is well conditioned. The update's derivative
 *   in g′ is lr·ε/(|g′| + ε)², so with our g′ within δ of PyTorch's (δ: the largest difference measured
 *   above) θ₁ is within the bar 1e-4·max|θ₁| where (|g′| − δ + ε)² ≥ lr·ε·δ / (1e-4·max|θ₁|). Below, g′ ≈ 0
 *   (clip·g and wd·θ₀ cancel; a q/k bias's gradient is 0 by softmax's shift invariance) and the step is a
 *   coin toss between ±lr: those elements are left out, counted, and must stay a few percent (measured: at
 *   most 6.7%, ResNet layer4.1.conv1.weight; 2 of 3 072 in a ViT qkv.weight).
 */
function assertAdamStep(
  k: string,
  before: Float32Array,
  after: Float32Array,
  moments: Map<string, { data: Float32Array }>,
  opt: { lr: number; eps: number; betas: readonly [number, number] },
  fx: Fixture,
): void {
  const [b1, b2] = opt.betas;
  const m = moments.get(`${k}.exp_avg`)!.data, v = moments.get(`${k}.exp_avg_sq`)!.data;
  const ref = Float64Array.from(
    before,
    (t, i) => t - (opt.lr / (1 - b1)) * m[i] / (Math.sqrt(v[i] / (1 - b2)) + opt.eps),
  );
  assertClose(after, ref, TOL.adam.theta, `${k}: Adam's step from our moments`);
  const want = fx.get(`after.${k}`).data, g = fx.get(`exp_avg.${k}`).data.map((x) => x / (1 - b1));
  const max = (a: Float32Array) => a.reduce((s, x) => Math.max(s, Math.abs(x)), 0);
  const scale = max(want) || 1, delta = max(m.map((x, i) => x / (1 - b1) - g[i]));
  const floor = Math.sqrt((opt.lr * opt.eps * delta) / (TOL.model.atol * scale));
  const keep = [...want.keys()].filter((i) => Math.abs(g[i]) - delta + opt.eps >= floor);
  const out = `${want.length - keep.length} ill-conditioned of ${want.length} left out`;
  assertEquals(keep.length >= 0.9 * want.length, true, `${k}: ${out}`);
  assertParity(
    keep.map((i) => after[i]),
    keep.map((i) => want[i]),
    `${k} after the step (${out})`,
  );
  // The step shows at this bar: the values before it would fail (Adam's first step moves each weight by
  // ≈ lr = 1e-3, ten times the bar on weights of scale ≤ 1).
  const c = compareClose(keep.map((i) => before[i] / scale), keep.map((i) => want[i] / scale), TOL.model);
  assertEquals(c.ok, false, `${k}: the step is within the bar of the initial values`);
}

/**
 * One `Trainer.step` of `FineTunedEncoder.create(enc, { k, heads })` against PyTorch's, then the checks
 * (a)–(c) of the module doc; `build` makes the encoder from a (merged) state dict.
 */
async function fineTuneStep(
  e: Engine,
  fx: Fixture,
  build: (sd: Map<string, HostTensor>) => Encoder,
): Promise<void> {
  const weights = fx.prefixed("sd.");
  const enc = build(weights);
  const up = (a: string) => e.tensor(fx.get(a).data, fx.get(a).shape);
  const x = up("x"), target = up("target"), aux = up("aux");
  const model = FineTunedEncoder.create(e, enc, { k: fx.k, heads: fx.prefixed("heads.") });
  const trainer = new Trainer(e, model, {
    ...DEFAULT_TRAIN,
    lr: fx.lr,
    weightDecay: fx.weightDecay,
    clipNorm: fx.clipNorm,
    auxWeight: fx.auxWeight,
  });
  const rebuilt: FineTunedEncoder[] = [];
  try {
    // (b) What trains: the last K blocks and the heads, under `encoder.` + the weights' keys.
    assertEquals([...model.params.keys()], fx.trainable);
    const frozenBefore = enc.features(x);
    const initial = new Map(
      await Promise.all([...model.params].map(async ([k, t]) => [k, await t.toArray()] as const)),
    );

    // (a) The step: losses, Adam's first moments (the clipped, weight-decayed gradients), the new values.
    const tumor = Int8Array.from(fx.get("tumor").data);
    const losses = await trainer.step({ x, b: x.shape[0], target, aux, tumor });
    for (const k of ["total", "target", "aux", "tumor"] as const) {
      assertParity([losses[k]], [fx.losses[k]], `${k} loss`);
    }
    const moments = await trainer.opt.stateDict();
    for (const k of fx.trainable) {
      assertParity(moments.get(`${k}.exp_avg`)!.data, fx.get(`exp_avg.${k}`).data, `Adam's exp_avg of ${k}`);
    }
    const sd = await model.stateDict();
    assertEquals([...sd.keys()].sort(), [...fx.changed].sort());
    for (const [k, v] of sd) {
      const before = initial.get(k);
      if (before) assertAdamStep(k, before, v.data, moments, trainer.opt, fx);
      else assertParity(v.data, fx.get(`after.${k}`).data, `${k} after the step`); // BN running statistics
    }
    // The frozen path is untouched: the encoder's own features are bit for bit what they were.
    const frozenAfter = enc.features(x);
    assertClose(await frozenAfter.toArray(), await frozenBefore.toArray(), TOL.exact, "frozen features");
    frozenBefore.dispose();
    frozenAfter.dispose();

    // (c) Eval-mode predictions after the step: PyTorch's; the state dict applied to the original weights
    // (the rebuilt encoder's folded path) gives the same; rebuilt with the blocks trainable, bit for bit.
    const predict = async (m: FineTunedEncoder) => {
      const out = m.predict(x);
      const r = {
        target: await out.target.toArray(),
        aux: await out.aux.toArray(),
        tumor: await out.tumorProb.toArray(),
      };
      for (const t of Object.values(out)) t.dispose();
      return r;
    };
    const got = await predict(model);
    for (const k of ["target", "aux", "tumor"] as const) {
      assertParity(got[k], fx.get(`pred.${k}`).data, `eval prediction (${k})`);
    }
    const again = FineTunedEncoder.fromStateDict(e, sd, { weights, build, file: "trained" });
    rebuilt.push(again);
    const fromSd = await predict(again);
    for (const k of ["target", "aux", "tumor"] as const) {
      assertParity(fromSd[k], got[k], `prediction of the rebuilt model (${k})`);
    }
    const resumed = FineTunedEncoder.fromStateDict(e, sd, { weights, build, k: fx.k, file: "trained" });
    rebuilt.push(resumed);
    const fromResumed = await predict(resumed);
    for (const k of ["target", "aux", "tumor"] as const) {
      assertClose(fromResumed[k], got[k], TOL.exact, `prediction of the rebuilt trainable model (${k})`);
    }
    // Both give back the state dict they were built from.
    for (const m of [again, resumed]) {
      const back = await m.stateDict();
      assertEquals([...back.keys()], [...sd.keys()]);
      for (const [k, v] of back) assertClose(v.data, sd.get(k)!.data, TOL.exact, `${k} given back`);
    }
  } finally {
    trainer.dispose();
    model.dispose();
    for (const m of rebuilt) m.dispose();
    enc.dispose();
    for (const t of [x, target, aux]) t.dispose();
  }
}

gpuTest(
  "a torchvision ResNet's last block + HE2Gene's heads take one Trainer step as PyTorch's (train-mode BN, clip, Adam)",
  async (e) => {
    if (!torchOk) return;
    const fx = await load("resnet_k1");
    await fineTuneStep(e, fx, (sd) => ResNetEncoder.fromTorchvision(e, torchvisionResNet(sd, "tiny resnet")));
  },
);

for (
  const [kind, what] of [
    ["swiglu_reg_avg", "registers, SwiGLU, LayerScale, mean pooling + fc_norm"],
    ["gelu_token", "class token, GELU, token pooling"],
  ]
) {
  gpuTest(
    `a timm ViT's last block + final norm + HE2Gene's heads take one Trainer step as PyTorch's (${what})`,
    async (e) => {
      if (!torchOk) return;
      const fx = await load(`${kind}_k1`);
      await fineTuneStep(e, fx, (sd) => ViTEncoder.fromTimm(e, fx.config, sd, kind));
    },
  );
}

gpuTest(
  "fresh heads are HE2Gene's (nn.Linear's init); k = 0 trains the heads alone; bad heads, k and state dicts are refused",
  async (e) => {
    if (!torchOk) return;
    const fx = await load("resnet_k1");
    const weights = fx.prefixed("sd.");
    const build = (sd: Map<string, HostTensor>) =>
      ResNetEncoder.fromTorchvision(e, torchvisionResNet(sd, "tiny"));
    const enc = build(weights);
    try {
      const m = FineTunedEncoder.create(e, enc, {
        k: 1,
        variant: "spat",
        targetGenes: 4,
        auxGenes: 6,
        seed: 3,
      });
      try {
        const want = initHeads({ variant: "spat", targetGenes: 4, auxGenes: 6 }, enc.dim, 3);
        assertEquals([...m.params.keys()].filter((k) => !k.startsWith("encoder.")), [...want.keys()]);
        const bound = 1 / Math.sqrt(enc.dim);
        for (const [k, t] of want) {
          const got = await m.params.get(k)!.toArray();
          assertClose(got, t.data, TOL.exact, k);
          assertEquals(got.every((v) => Math.abs(v) <= bound), true, `${k} within ±1/√${enc.dim}`);
        }
        assertEquals(m.config, { k: 1, variant: "spat", targetGenes: 4, auxGenes: 6 });
      } finally {
        m.dispose();
      }
      // k = 0: the heads alone train, on the encoder's frozen features.
      const probe = FineTunedEncoder.create(e, enc, { k: 0, targetGenes: 5, auxGenes: 7 });
      const trainer = new Trainer(e, probe, { ...DEFAULT_TRAIN, lr: 1e-3 });
      const up = (a: string) => e.tensor(fx.get(a).data, fx.get(a).shape);
      const [x, target, aux] = ["x", "target", "aux"].map(up);
      try {
        const heads = ["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias", "fc3.weight", "fc3.bias"];
        assertEquals([...probe.params.keys()], heads);
        const before = await probe.params.get("fc1.weight")!.toArray();
        const { total } = await trainer.step({ x, b: 3, target, aux, tumor: new Int8Array([1, 0, -1]) });
        assertEquals(Number.isFinite(total), true, `loss ${total}`);
        const sd = await probe.stateDict();
        assertEquals([...sd.keys()], heads);
        assertEquals(sd.get("fc1.weight")!.data.some((v, i) => v !== before[i]), true, "fc1 trained");
      } finally {
        trainer.dispose();
        probe.dispose();
        for (const t of [x, target, aux]) t.dispose();
      }
      assertThrows(
        () => FineTunedEncoder.create(e, enc, { k: 1, auxGenes: 6 }),
        RangeError,
        "targetGenes is undefined",
      );
      assertThrows(
        () => FineTunedEncoder.create(e, enc, { k: 6, targetGenes: 4, auxGenes: 6 }),
        RangeError,
        "it has 5 (give 1 to 5)",
      );
      const heads = fx.prefixed("heads.");
      assertThrows(
        () => FineTunedEncoder.create(e, enc, { k: 1, heads, targetGenes: 9 }),
        RangeError,
        "targetGenes 9 asked, the heads have 5",
      );
      const short = new Map(heads);
      short.set("fc2.weight", { shape: [7, 255], data: new Float32Array(7 * 255) });
      assertThrows(
        () => FineTunedEncoder.create(e, enc, { k: 1, heads: short }),
        RangeError,
        "fc2.weight: expected [7,256], found [7,255]",
      );
      const bad = new Map([...heads, ["encoder.layer4.1.conv1.weight", {
        shape: [3],
        data: new Float32Array(3),
      }]]);
      assertThrows(
        () => FineTunedEncoder.fromStateDict(e, bad, { weights, build }),
        RangeError,
        "encoder.layer4.1.conv1.weight: [3], the encoder's weights have [64,256,1,1]",
      );
      const stray = new Map([...heads, ["layer4.1.conv1.weight", weights.get("layer4.1.conv1.weight")!]]);
      assertThrows(
        () => FineTunedEncoder.fromStateDict(e, stray, { weights, build }),
        RangeError,
        "unexpected layer4.1.conv1.weight",
      );
    } finally {
      enc.dispose();
    }
  },
);
