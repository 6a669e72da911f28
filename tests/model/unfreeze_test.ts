/**
 * Fine-tuning the last K blocks of an encoder (`Encoder.trainable(k)`, issue 17 item 4's `--unfreeze-last K`)
 * against PyTorch: tests/fixtures/encoders/make_unfreeze.py (run at test time) takes a tiny torchvision-layout
 * ResNet and two timm-layout ViTs (class token + GELU + token pooling; registers + SwiGLUPacked + LayerScale
 * + mean pooling with fc_norm), requires_grad on the last K blocks only, and computes in float64 the
 * features, the gradients of sum(features · R) for a fixed R, and the features and state after one SGD step.
 * Here: the same on the GPU, for K = 1 and 2, and the trained state rebuilt into an encoder predicts as the
 * trainable one does in eval mode. Below: the two shape ops the ViT's trainable path adds (ops/shape.ts).
 *
 * Parity bar: issue 17's, max error ≤ 1e-4 of the quantity's scale — `TOL.model` (the whole-network bar,
 * atol 1e-4) on each tensor divided by its largest |value| in PyTorch's result.
 */
import { join } from "node:path";
import { backward, noGrad, zeroGrad } from "../../engine/autograd.ts";
import type { Engine } from "../../engine/engine.ts";
import { mul, sub } from "../../ops/elementwise.ts";
import { sum } from "../../ops/reduce.ts";
import { concat, narrow, reshape } from "../../ops/shape.ts";
import {
  type Encoder,
  ResNetEncoder,
  torchvisionResNet,
  type TrainableEncoder,
} from "../../model/encoder.ts";
import { ViTEncoder } from "../../model/vit.ts";
import type { HostTensor } from "../../model/he2gene.ts";
import { maxActivationPerImage } from "../../model/resnet.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  gpuTest,
  rand,
  smallBindingEngine,
  TOL,
} from "../helpers.ts";

const PYTHON = "/usr/bin/python3";
const SCRIPT = new URL("../fixtures/encoders/make_unfreeze.py", import.meta.url).pathname;
const torchOk = await new Deno.Command(PYTHON, { args: ["-c", "import torch, torchvision, numpy"] })
  .output().then((r) => r.success, () => false);
if (!torchOk) console.warn(`skipped: the fine-tuning parity tests need ${PYTHON} with torch and torchvision`);

// Every case made by one run of the script, on first use; the folder goes when the process ends.
let fixtures: Promise<string> | null = null;
function fixtureDir(): Promise<string> {
  return fixtures ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-unfreeze-" });
    globalThis.addEventListener("unload", () => Deno.removeSync(dir, { recursive: true }));
    const py = await new Deno.Command(PYTHON, { args: [SCRIPT, dir], stdout: "piped", stderr: "piped" })
      .output();
    if (!py.success) throw new Error(`make_unfreeze.py failed:\n${new TextDecoder().decode(py.stderr)}`);
    return dir;
  })();
}

interface Fixture {
  kind: string;
  k: number;
  lr: number;
  config: unknown;
  trainable: string[];
  changed: string[];
  get(name: string): HostTensor;
  /** The initial state dict (`sd.<key>`). */
  stateDict: Map<string, HostTensor>;
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
  const stateDict = new Map(
    Object.keys(m.arrays).filter((a) => a.startsWith("sd.")).map((a) => [a.slice(3), get(a)]),
  );
  return { ...m, get, stateDict };
}

/** `got ≈ want` within `TOL.model` once both are divided by max |want| (issue 17's 1e-4 of the scale). */
function assertParity(got: Float32Array, want: Float32Array, what: string): void {
  let scale = 0;
  for (const v of want) scale = Math.max(scale, Math.abs(v));
  if (scale === 0) scale = 1;
  assertClose(got.map((v) => v / scale), want.map((v) => v / scale), TOL.model, `${what} (scale ${scale})`);
}

/**
 * Forward, the gradients of sum(f · R), one SGD step on `t.params`, a second forward, and the state: each
 * against PyTorch's. Then the trained state merged into the initial weights (`rebuild`: an encoder from a
 * state dict) gives, on the inference path, what `t.forward(x, { training: false })` gives.
 */
async function fineTuneStep(
  e: Engine,
  t: TrainableEncoder,
  fx: Fixture,
  rebuild: (sd: Map<string, HostTensor>) => Encoder,
): Promise<void> {
  assertEquals([...t.params.keys()], fx.trainable);
  const up = (a: string) => e.tensor(fx.get(a).data, fx.get(a).shape);
  const x = up("x"), r = up("r");
  try {
    const f = t.forward(x);
    assertParity(await f.toArray(), fx.get("features").data, "features");
    await backward(sum(mul(f, r)));
    f.dispose();
    for (const [key, p] of t.params) {
      if (!p.grad) throw new Error(`${key} has no gradient`);
      assertParity(await p.grad.toArray(), fx.get(`grad.${key}`).data, `gradient of ${key}`);
    }
    // p ← p − lr·∇p (torch.optim.SGD without momentum).
    noGrad(() =>
      e.scope(() => {
        for (const p of t.params.values()) e.copy(sub(p, mul(p.grad!, fx.lr)), p);
      })
    );
    zeroGrad(t.params.values());
    const f2 = noGrad(() => t.forward(x));
    assertParity(await f2.toArray(), fx.get("features2").data, "features after one SGD step");
    f2.dispose();
    // What changed is the last K blocks alone (make_unfreeze.py checks PyTorch's side), and equals PyTorch's.
    const sd = await t.stateDict();
    assertEquals([...sd.keys()].sort(), [...fx.changed].sort());
    for (const [key, v] of sd) assertParity(v.data, fx.get(`after.${key}`).data, `${key} after the step`);
    const enc = rebuild(new Map([...fx.stateDict, ...sd]));
    try {
      const want = enc.features(x), got = noGrad(() => t.forward(x, { training: false }));
      assertParity(await got.toArray(), await want.toArray(), "eval forward against the rebuilt encoder");
      want.dispose();
      got.dispose();
    } finally {
      enc.dispose();
    }
  } finally {
    x.dispose();
    r.dispose();
  }
}

for (const k of [1, 2]) {
  gpuTest(
    `the last ${k} ResNet block${
      k > 1 ? "s" : ""
    } fine-tune as PyTorch's: train-mode batch norm, gradients, one SGD step`,
    async (e) => {
      if (!torchOk) return;
      const fx = await load(`resnet_k${k}`);
      const enc = ResNetEncoder.fromTorchvision(e, torchvisionResNet(fx.stateDict, "tiny resnet"));
      const t = enc.trainable(k);
      try {
        await fineTuneStep(
          e,
          t,
          fx,
          (sd) => ResNetEncoder.fromTorchvision(e, torchvisionResNet(sd, "trained")),
        );
      } finally {
        t.dispose();
        enc.dispose();
      }
    },
  );
}

for (const kind of ["gelu_token", "swiglu_reg_avg"]) {
  for (const k of [1, 2]) {
    const what = kind === "gelu_token"
      ? "class token, GELU, token pooling"
      : "registers, SwiGLU, LayerScale, mean pooling + fc_norm";
    gpuTest(
      `the last ${k} ViT block${
        k > 1 ? "s" : ""
      } + final norm fine-tune as PyTorch's (${what}): gradients, one SGD step`,
      async (e) => {
        if (!torchOk) return;
        const fx = await load(`${kind}_k${k}`);
        const enc = ViTEncoder.fromTimm(e, fx.config, fx.stateDict, kind);
        const t = enc.trainable(k);
        try {
          await fineTuneStep(e, t, fx, (sd) => ViTEncoder.fromTimm(e, fx.config, sd, "trained"));
        } finally {
          t.dispose();
          enc.dispose();
        }
      },
    );
  }
}

gpuTest("an HE2Gene backbone fine-tunes under its own keys (base_model.…)", async (e) => {
  if (!torchOk) return;
  const fx = await load("resnet_k1");
  const sd = new Map([...fx.stateDict].map(([k, v]) => [`base_model.${k}`, v]));
  const enc = ResNetEncoder.fromHE2Gene(e, sd, "he2gene.pt");
  const t = enc.trainable(1);
  try {
    await fineTuneStep(e, t, {
      ...fx,
      trainable: fx.trainable.map((k) => `base_model.${k}`),
      changed: fx.changed.map((k) => `base_model.${k}`),
      get: (a) => fx.get(a.replace(/^(grad|after)\.base_model\./, "$1.")),
      stateDict: sd,
    }, (m) => ResNetEncoder.fromHE2Gene(e, m, "trained"));
  } finally {
    t.dispose();
    enc.dispose();
  }
});

Deno.test({
  name:
    "the frozen ResNet blocks run in chunks when the batch exceeds one storage binding, with the same result",
  ignore: !torchOk,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    // 200 KiB bindings: the 3 images' largest activation (78 KiB each) takes two chunks.
    const maxBinding = 200 << 10;
    const fx = await load("resnet_k2");
    const r = torchvisionResNet(fx.stateDict, "tiny resnet");
    const [n, , s] = fx.get("x").shape;
    const perImage = 4 * maxActivationPerImage(r.config, s, s);
    assertEquals([perImage <= maxBinding, n * perImage > maxBinding], [true, true]);
    const e = await smallBindingEngine(maxBinding);
    const enc = ResNetEncoder.fromTorchvision(e, r);
    const t = enc.trainable(2);
    try {
      await fineTuneStep(
        e,
        t,
        fx,
        (sd) => ResNetEncoder.fromTorchvision(e, torchvisionResNet(sd, "trained")),
      );
      e.checkError();
    } finally {
      t.dispose();
      enc.dispose();
      e.destroy();
    }
  },
});

gpuTest("trainable(k) refuses k outside 1 … the number of blocks, naming both", async (e) => {
  if (!torchOk) return;
  const fx = await load("resnet_k1");
  const enc = ResNetEncoder.fromTorchvision(e, torchvisionResNet(fx.stateDict, "tiny resnet"));
  try {
    assertThrows(() => enc.trainable(0), RangeError, "Cannot unfreeze the last 0 blocks of");
    assertThrows(() => enc.trainable(6), RangeError, "it has 5 (give 1 to 5)");
  } finally {
    enc.dispose();
  }
});

// ---------------------------------------------------------------- the ops the ViT's trainable path needs

gpuTest(
  "narrow copies a range of any axis, and its gradient is dy in that range and zeros elsewhere",
  async (e) => {
    const shape = [2, 5, 3], x = rand(30, 7);
    for (const [axis, start, length] of [[0, 1, 1], [1, 1, 3], [1, 0, 5], [2, 2, 1]]) {
      const y = narrow(e.tensor(x, shape), axis, start, length);
      const out = shape.map((d, i) => (i === axis ? length : d));
      const want: number[] = [];
      for (let i = 0; i < 2; i++) {
        for (let j = 0; j < 5; j++) {
          for (let k = 0; k < 3; k++) {
            const at = [i, j, k][axis];
            if (at >= start && at < start + length) want.push(x[(i * 5 + j) * 3 + k]);
          }
        }
      }
      assertEquals(y.shape, out);
      assertClose(await y.toArray(), want, TOL.exact, `narrow(x, ${axis}, ${start}, ${length})`);
      y.dispose();
    }
    await assertGradients(e, ([t]) => narrow(t, 1, 1, 2), [{ data: rand(2 * 4 * 3, 8), shape: [2, 4, 3] }], {
      what: "narrow",
    });
    assertThrows(
      () => narrow(e.tensor(x, shape), 1, 4, 2),
      RangeError,
      "Cannot narrow [2,5,3] along axis 1 to 4…6: out of range",
    );
  },
);

gpuTest("reshape on the tape carries the gradient back to its source's shape", async (e) => {
  const x = rand(12, 9);
  const y = reshape(e.tensor(x, [2, 6]), [3, -1]);
  assertEquals(y.shape, [3, 4]);
  assertClose(await y.toArray(), x, TOL.exact, "reshape");
  y.dispose();
  // The weighted sum depends on x only through reshape: a reshape off the tape has no gradient to check.
  await assertGradients(e, ([t]) => reshape(t, [3, 4]), [{ data: x, shape: [2, 6] }], { what: "reshape" });
});

gpuTest("concat puts tensors side by side along an axis, and each gradient is its range of dy", async (e) => {
  const a = rand(2 * 3 * 2, 11), b = rand(2 * 1 * 2, 12);
  const y = concat([e.tensor(a, [2, 3, 2]), e.tensor(b, [2, 1, 2])], 1);
  assertEquals(y.shape, [2, 4, 2]);
  const want = [...a.subarray(0, 6), ...b.subarray(0, 2), ...a.subarray(6), ...b.subarray(2)];
  assertClose(await y.toArray(), want, TOL.exact, "concat");
  y.dispose();
  await assertGradients(
    e,
    ([s, t]) => concat([s, t], 1),
    [{ data: rand(6, 13), shape: [2, 3] }, { data: rand(4, 14), shape: [2, 2] }],
    { what: "concat" },
  );
  assertThrows(
    () => concat([e.tensor(a, [2, 3, 2]), e.tensor(b, [1, 2, 2])], 1),
    RangeError,
    "Cannot concatenate [2,3,2], [1,2,2] along axis 1: every other axis must agree",
  );
});
