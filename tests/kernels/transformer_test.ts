import {
  layerNormBackward,
  layerNormBackwardCpu,
  layerNormCpu,
  layerNormForward,
} from "../../kernels/layernorm.ts";
import {
  activationBackward,
  activationBackwardCpu,
  activationCpu,
  activationForward,
  erfCpu,
} from "../../kernels/activation.ts";
import { softmaxBackward, softmaxBackwardCpu, softmaxCpu, softmaxForward } from "../../kernels/softmax.ts";
import {
  attentionBackward,
  attentionBackwardCpu,
  attentionCpu,
  attentionForward,
} from "../../kernels/attention.ts";
import { attention, gelu, layerNorm, silu, softmax } from "../../ops/transformer.ts";
import { requiresGrad, Tape } from "../../engine/autograd.ts";
import type { Tensor } from "../../engine/tensor.ts";
import {
  assertClose,
  assertGradients,
  assertThrows,
  engine,
  gpuTest,
  rand,
  TOL as SHARED_TOL,
  type Tolerance,
} from "../helpers.ts";

/** Tolerances, stated once in kernels/tolerance.ts. */
const TOL = SHARED_TOL.transformer;

// ---------------------------------------------------------------- layerNorm

// [rows…, C]: C below, at and above the workgroup of 64, not a multiple of it; ViT-S's C = 384.
const LN_SHAPES: number[][] = [[1, 1], [3, 7], [2, 5, 64], [2, 13, 100], [2, 197, 384]];

for (const shape of LN_SHAPES) {
  gpuTest(`layerNorm forward and backward match the float64 reference on [${shape}]`, async (e) => {
    const c = shape.at(-1)!, n = shape.reduce((a, b) => a * b, 1);
    // An offset mean: the two-pass variance must not lose the spread.
    const x = rand(n, 11, 2, 4), w = rand(c, 12, 0.5, 1.5), b = rand(c, 13), dy = rand(n, 14);
    const want = layerNormCpu(x, c, w, b);
    const got = layerNormForward(e.tensor(x, shape), e.tensor(w, [c]), e.tensor(b, [c]));
    assertClose(await got.y.toArray(), want.y, TOL.layerNorm, "y");
    assertClose(await got.mean.toArray(), want.mean, TOL.layerNorm, "mean");
    assertClose(await got.rstd.toArray(), want.rstd, { rtol: TOL.layerNorm.rtol, atol: 0 }, "rstd");
    const g = layerNormBackward(e.tensor(dy, shape), e.tensor(x, shape), {
      weight: e.tensor(w, [c]),
      mean: got.mean,
      rstd: got.rstd,
    });
    const wantG = layerNormBackwardCpu(dy, x, c, w);
    assertClose(await g.dx.toArray(), wantG.dx, TOL.layerNormGrad, "dx");
    assertClose(await g.dweight.toArray(), wantG.dweight, TOL.layerNormGrad, "dweight");
    assertClose(await g.dbias.toArray(), wantG.dbias, TOL.layerNormGrad, "dbias");
  });
}

gpuTest("layerNorm backward matches finite differences in x, weight and bias", async (e) => {
  await assertGradients(
    e,
    ([x, w, b]) => layerNorm(x, w, b, 1e-5),
    [
      { data: rand(15, 21), shape: [3, 5] },
      { data: rand(5, 22, 0.5, 1.5), shape: [5] },
      { data: rand(5, 23), shape: [5] },
    ],
    { what: "layerNorm" },
  );
});

gpuTest("layerNorm rejects a weight that does not match the last axis", (e) => {
  assertThrows(() => layerNorm(e.zeros([2, 4]), e.zeros([3]), e.zeros([4])), RangeError, "weight");
});

// ---------------------------------------------------------------- gelu, silu

gpuTest("the WGSL erf is within 3e-7 relative of a float64 erf on [-6, 6]", async (e) => {
  // A dense grid across both pieces (the split at |z| = 0.9277) and the saturation at |z| ≈ 4.
  const n = 24_001;
  const z = Float32Array.from({ length: n }, (_, i) => -6 + 12 * i / (n - 1));
  const got = await activationForward("erf", e.tensor(z, [n])).toArray();
  assertClose(got, Float64Array.from(z, erfCpu), TOL.erf, "erf");
});

for (const op of ["gelu", "silu"] as const) {
  for (const n of [1, 7, 1000, 197 * 1536 + 3]) {
    gpuTest(`${op} forward and backward match the float64 reference on ${n} values`, async (e) => {
      // Wide range: the far negative tail (gelu's 1 + erf without cancellation) and saturation.
      const x = rand(n, 31, -9, 9), dy = rand(n, 32);
      const got = await activationForward(op, e.tensor(x, [n])).toArray();
      assertClose(got, activationCpu(op, x), TOL.activation, `${op}`);
      const dx = await activationBackward(op, e.tensor(dy, [n]), e.tensor(x, [n])).toArray();
      assertClose(dx, activationBackwardCpu(op, dy, x), TOL.activation, `${op} dx`);
    });
  }
  gpuTest(`${op} backward matches finite differences`, async (e) => {
    const f = op === "gelu" ? gelu : silu;
    await assertGradients(e, ([x]) => f(x), [{ data: rand(12, 33, -3, 3), shape: [3, 4] }], {
      what: op,
    });
  });
}

// ---------------------------------------------------------------- softmax

for (const shape of [[1, 1], [3, 5], [2, 3, 64], [2, 6, 197, 197]]) {
  gpuTest(`softmax forward and backward match the float64 reference on [${shape}]`, async (e) => {
    const n = shape.at(-1)!, size = shape.reduce((a, b) => a * b, 1);
    // Large logits: without the max subtraction exp overflows float32.
    const x = rand(size, 41, -60, 120), dy = rand(size, 42);
    const y = softmaxForward(e.tensor(x, shape));
    assertClose(await y.toArray(), softmaxCpu(x, n), TOL.softmax, "softmax");
    const dx = softmaxBackward(e.tensor(dy, shape), y);
    assertClose(await dx.toArray(), softmaxBackwardCpu(dy, x, n), TOL.softmax, "softmax dx");
  });
}

gpuTest("softmax backward matches finite differences", async (e) => {
  await assertGradients(e, ([x]) => softmax(x), [{ data: rand(15, 43, -2, 2), shape: [3, 5] }], {
    what: "softmax",
  });
});

// ---------------------------------------------------------------- attention

// [B, H, N, d]: N below, at and above the 32-row tiles and not a multiple of them (197: ViT-S/16 at 224²);
// d = 64 (ViT) and 48 (vec4 rows), 7 (scalar rows); B·H > 1.
const ATTENTION_SHAPES: number[][] = [[1, 1, 1, 8], [2, 1, 33, 7], [2, 3, 37, 64], [1, 2, 64, 48], [
  2,
  2,
  45,
  48,
], [
  1,
  6,
  197,
  64,
]];

// The adapter's variant on every shape; tiles read from storage (OpenGL's variant) on three of them too.
const ATTENTION_CASES = [
  ...ATTENTION_SHAPES.map((shape) => ({ shape, staged: undefined })),
  ...[[2, 1, 33, 7], [2, 3, 37, 64], [1, 6, 197, 64]].map((shape) => ({ shape, staged: false })),
];

for (const { shape, staged } of ATTENTION_CASES) {
  const what = staged === false ? ", tiles read from storage" : "";
  gpuTest(`attention forward and backward match the float64 reference on [${shape}]${what}`, async (e) => {
    const size = shape.reduce((a, b) => a * b, 1), scale = 1 / Math.sqrt(shape[3]);
    // Spread scores (|s| up to ~4 at d = 64) so that the softmax is far from uniform.
    const q = rand(size, 51, -2, 2), k = rand(size, 52, -2, 2), v = rand(size, 53), dout = rand(size, 54);
    const [tq, tk, tv] = [q, k, v].map((x) => e.tensor(x, shape));
    const { out, lse } = attentionForward(tq, tk, tv, scale, { staged });
    assertClose(await out.toArray(), attentionCpu(q, k, v, shape, scale), TOL.attention, "out");
    const g = attentionBackward(e.tensor(dout, shape), { q: tq, k: tk, v: tv, out, lse }, scale, { staged });
    const want = attentionBackwardCpu(dout, q, k, v, shape, scale);
    assertClose(await g.dq.toArray(), want.dq, TOL.attentionGrad, "dq");
    assertClose(await g.dk.toArray(), want.dk, TOL.attentionGrad, "dk");
    assertClose(await g.dv.toArray(), want.dv, TOL.attentionGrad, "dv");
  });
}

gpuTest("attention backward matches finite differences in q, k and v", async (e) => {
  const shape = [1, 2, 5, 4];
  await assertGradients(
    e,
    ([q, k, v]) => attention(q, k, v, 0.5),
    [61, 62, 63].map((seed) => ({ data: rand(40, seed), shape })),
    { what: "attention" },
  );
});

gpuTest("attention rejects mismatched shapes; the fused kernel a head dimension above 64", (e) => {
  assertThrows(
    () => attention(e.zeros([1, 1, 4, 8]), e.zeros([1, 1, 5, 8]), e.zeros([1, 1, 4, 8]), 1),
    RangeError,
  );
  const big = e.zeros([1, 1, 2, 65]);
  assertThrows(() => attentionForward(big, big, big, 1), RangeError, "head dimension");
});

// ---------------------------------------------------------------- against PyTorch

/** The first of these with torch runs the PyTorch check (pyenv's python3 on PATH may lack torch). */
const PYTHONS = ["/usr/bin/python3", "python3"];

/** A python3 with torch, or null (the PyTorch check is then skipped with a message). */
function torchPython(): string | null {
  for (const python of PYTHONS) {
    if (torchRuns(python)) return python;
  }
  return null;
}

function torchRuns(python: string): boolean {
  try {
    const r = new Deno.Command(python, { args: ["-c", "import torch"], stdout: "null", stderr: "null" })
      .outputSync();
    return r.success;
  } catch {
    return false;
  }
}

const PYTHON = torchPython();
if (PYTHON === null) {
  console.log("transformer_test: python3 with torch not found; skipping the PyTorch check");
}

Deno.test({
  name: "layerNorm, gelu, silu, softmax and attention match PyTorch (tests/fixtures/transformer)",
  ignore: PYTHON === null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await engine();
    const dir = await Deno.makeTempDir({ prefix: "he2gene-transformer-" });
    try {
      const script = new URL("../fixtures/transformer/make_reference.py", import.meta.url).pathname;
      const run = await new Deno.Command(PYTHON!, { args: [script, dir] }).output();
      if (!run.success) throw new Error(`make_reference.py failed: ${new TextDecoder().decode(run.stderr)}`);
      const manifest = JSON.parse(await Deno.readTextFile(`${dir}/manifest.json`));
      const load = async (name: string) => {
        const bytes = await Deno.readFile(`${dir}/${name}.bin`);
        const f32 = manifest[name].dtype === "f32";
        return f32 ? new Float32Array(bytes.buffer) : new Float64Array(bytes.buffer);
      };
      const shapeOf = (name: string): number[] => manifest[name].shape;
      /** Taped op on the fixture's inputs, seeded with its dy; compares the output and each gradient. */
      const check = async (
        prefix: string,
        names: string[],
        f: (xs: Tensor[]) => Tensor,
        tol: { out: Tolerance; grad: Tolerance },
      ) => {
        const xs = await Promise.all(
          names.map(async (n) =>
            requiresGrad(e.tensor(await load(`${prefix}_${n}`) as Float32Array, shapeOf(`${prefix}_${n}`)))
          ),
        );
        const tape = new Tape();
        const y = tape.record(() => f(xs));
        const dy = e.tensor(await load(`${prefix}_dy`) as Float32Array, shapeOf(`${prefix}_dy`));
        const grads = tape.backward(y, dy);
        assertClose(await y.toArray(), await load(`${prefix}_out`), tol.out, `${prefix} out`);
        for (const [i, n] of names.entries()) {
          assertClose(
            await grads.get(xs[i])!.toArray(),
            await load(`${prefix}_d${n}`),
            tol.grad,
            `${prefix} d${n}`,
          );
        }
        tape.dispose();
      };
      await check("ln", ["x", "weight", "bias"], ([x, w, b]) => layerNorm(x, w, b, 1e-6), {
        out: TOL.layerNorm,
        grad: TOL.layerNormGrad,
      });
      await check("gelu", ["x"], ([x]) => gelu(x), { out: TOL.activation, grad: TOL.activation });
      await check("silu", ["x"], ([x]) => silu(x), { out: TOL.activation, grad: TOL.activation });
      await check("softmax", ["x"], ([x]) => softmax(x), { out: TOL.softmax, grad: TOL.softmax });
      await check("att", ["q", "k", "v"], ([q, k, v]) => attention(q, k, v, manifest.att_scale), {
        out: TOL.attention,
        grad: TOL.attentionGrad,
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
    e.checkError();
  },
});

gpuTest(
  "attention with heads wider than 64 (ViT-H/14's 80) runs unfused and matches the reference",
  async (e) => {
    const shape = [1, 2, 37, 80], size = shape.reduce((a, b) => a * b, 1), scale = 1 / Math.sqrt(80);
    const q = rand(size, 61, -2, 2), k = rand(size, 62, -2, 2), v = rand(size, 63);
    const out = attention(e.tensor(q, shape), e.tensor(k, shape), e.tensor(v, shape), scale);
    assertClose(await out.toArray(), attentionCpu(q, k, v, shape, scale), TOL.attention, "out");
  },
);
