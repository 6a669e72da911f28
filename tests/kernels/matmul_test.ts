import {
  type Activation,
  chooseMatmulKernel,
  matmulCandidates,
  matmulCpu,
  matmulForward,
  matmulReducedPrecisionVariants,
  matmulShapeClass,
  matmulVariant,
  matmulVariantId,
  transpose,
} from "../../kernels/matmul.ts";
import { blockWorkgroup, stagesTiles } from "../../kernels/_wgsl.ts";
import { compareClose } from "../../kernels/tolerance.ts";
import { texCannot } from "../../kernels/matmul_tex.ts";
import { useTuning, withVariant } from "../../kernels/tuning.ts";
import { linear, matmul } from "../../ops/matmul.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  dispatched,
  gpuTest,
  rand,
  smallBindingEngine,
  TOL,
} from "../helpers.ts";
import { createEngine, type Engine } from "../../mod.ts";
import type { MmCase } from "../../ops/selftest.ts";

type Case = MmCase;

// `variant`: a matmul variant id forced while the product is recorded (else the adapter's choice). `f16`:
// against the product of A and B rounded to f16 (a reduced-precision variant's contract).
async function check(e: Engine, c: Case, variant?: string, f16 = false) {
  const aShape = [...(c.batchA ?? []), ...(c.tA ? [c.k, c.m] : [c.m, c.k])];
  const bShape = [...(c.batchB ?? []), ...(c.tB ? [c.n, c.k] : [c.k, c.n])];
  const na = aShape.reduce((p, d) => p * d, 1), nb = bShape.reduce((p, d) => p * d, 1);
  const a = rand(na, na + c.m, -1, 1), b = rand(nb, nb + c.n, -1, 1);
  const bias = c.bias ? rand(c.n, 7, -1, 1) : undefined;
  const r = (x: Float32Array) => f16 ? x.map(Math.f16round) : x;
  const want = matmulCpu(r(a), aShape, r(b), bShape, {
    transposeA: c.tA,
    transposeB: c.tB,
    bias,
    activation: c.act,
  });
  const ta = e.tensor(a, aShape), tb = e.tensor(b, bShape);
  const tbias = bias ? e.tensor(bias, [c.n]) : undefined;
  const run = () =>
    matmulForward(ta, tb, { transposeA: c.tA, transposeB: c.tB, bias: tbias, activation: c.act });
  const y = variant ? withVariant("matmul", variant, run) : run();
  const what = `matmul ${JSON.stringify(c)} ${variant ?? "auto"}`;
  assertEquals([...y.shape], want.shape, what);
  // Sigmoid is scaled by its slope ≤ 1/4, so the same scale bounds its error.
  assertClose(await y.toArray(), want.data, TOL.matmul, what, want.scale);
  for (const t of [ta, tb, tbias, y]) t?.dispose();
}

const SHAPES: Case[] = [
  { m: 1, k: 1, n: 1 },
  { m: 7, k: 33, n: 129 },
  { m: 129, k: 7, n: 33 },
  { m: 33, k: 129, n: 7 },
  { m: 1000, k: 12, n: 20 },
  { m: 5, k: 1000, n: 3 },
  { m: 64, k: 64, n: 64 },
];

gpuTest("matmul matches the CPU reference on shapes that are not tile multiples", async (e) => {
  for (const s of SHAPES) await check(e, s);
});

gpuTest("matmul with A and/or B transposed matches the reference", async (e) => {
  for (const s of [SHAPES[1], SHAPES[2], SHAPES[3]]) {
    for (const [tA, tB] of [[true, false], [false, true], [true, true]]) await check(e, { ...s, tA, tB });
  }
});

gpuTest("batched matmul, equal batches and a broadcast 2-D operand", async (e) => {
  await check(e, { m: 7, k: 12, n: 9, batchA: [3], batchB: [3] });
  await check(e, { m: 7, k: 12, n: 9, batchA: [2, 3], batchB: [2, 3], tB: true });
  await check(e, { m: 7, k: 13, n: 9, batchA: [4] }); // B broadcast: batch folded into M
  await check(e, { m: 7, k: 13, n: 9, batchB: [4], tA: true }); // A broadcast
  await check(e, { m: 5, k: 8, n: 6, batchA: [3], tA: true });
});

gpuTest("the fused bias + activation epilogue matches the reference", async (e) => {
  for (const act of ["none", "relu", "sigmoid"] as Activation[]) {
    await check(e, { m: 33, k: 20, n: 17, bias: true, act });
    await check(e, { m: 9, k: 16, n: 12, bias: true, act, tB: true });
  }
  await check(e, { m: 9, k: 16, n: 12, act: "relu" });
});

gpuTest(
  "every kernel of the table is correct: register blocks 8/16/32 (rows, cols) and tiled 64/128",
  async (e) => {
    const variants = [
      "reg/8x8/rows",
      "reg/16x16/cols",
      "reg/32x32/rows",
      "reg/32x32/cols",
      "tiled/64x64",
      "tiled/128x128",
    ];
    for (const id of variants) {
      await check(e, { m: 300, k: 36, n: 260 }, id); // vec4 A and B, partial blocks
      if (!id.startsWith("reg/32x32")) {
        await check(e, { m: 129, k: 33, n: 77 }, id); // scalar A and B
        await check(
          e,
          { m: 65, k: 40, n: 30, tB: true, bias: true, act: "relu", batchA: [2], batchB: [2] },
          id,
        );
      }
    }
  },
);

gpuTest(
  "the skinny register and texture blocks (1, 2, 4 × 32, 64) are correct on few-row products",
  async (e) => {
    for (const m of [1, 2, 3, 4]) {
      const ids = matmulCandidates(e, m, 260, 36).filter((id) => /^(reg|tex)\/[124]x/.test(id));
      assertEquals(ids.length, 4, `skinny candidates for ${m} rows: ${ids}`);
      for (const id of ids) {
        await check(e, { m, k: 36, n: 260 }, id); // vec4 A and B, a partial column block
        await check(e, { m, k: 33, n: 77 }, id); // scalar A and B
        await check(e, { m, k: 40, n: 30, tB: true, bias: true, act: "relu", batchA: [2], batchB: [2] }, id);
        assertEquals(matmulVariantId(matmulVariant(e, id, m, 260)), id);
      }
    }
    // The built-in choice for a head at batch 2 on a software adapter: its forward and input gradient.
    if (e.adapterInfo.software) {
      assertEquals(matmulVariantId(chooseMatmulKernel(e, 2, 19699, 2048, true)), "tex/2x32/cols");
      assertEquals(matmulVariantId(chooseMatmulKernel(e, 2, 2048, 19699)), "tex/2x64/cols");
    }
  },
);

gpuTest(
  "the 32×64 texture block is a candidate for large products on software adapters only, and correct",
  async (e) => {
    const wide = "tex/32x64/cols";
    // Offered from 2³⁰ FLOPs with B untransposed, where C holds a workgroup's 32 × 512 block; never the
    // built-in choice (its ~13 s compile).
    assertEquals(matmulCandidates(e, 1024, 1024, 1024).includes(wide), e.adapterInfo.software);
    const not: [number, number, number, boolean][] = [
      [300, 260, 36, false], // small
      [1024, 1024, 1024, true], // Bᵀ
      [16, 4096, 8192, false], // fewer rows than a block
    ];
    for (const [m, n, k, tB] of not) {
      assertEquals(
        matmulCandidates(e, m, n, k, tB).includes(wide),
        false,
        `${m}×${n}×${k}${tB ? " Bᵀ" : ""}`,
      );
    }
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 1024, 1024, 1024)) === wide, false);
    assertEquals(matmulVariantId(matmulVariant(e, "tex/32x64", 1024, 1024)), wide);
    assertThrows(() => matmulVariant(e, "tex/32x64/rows", 1024, 1024), RangeError, "lanes along N");
    // A table's choice applies to the products it was a candidate for; Bᵀ or batched products of its class
    // (35–43 s kernels to compile) keep the built-in choice. Forced, it applies anyway.
    // 1000 × 1024 × 1000: C's 1 024 columns fill a 32 × 64 block's workgroup at 8 and at 16 lanes.
    const choice = (tB: boolean, batch: number) =>
      matmulVariantId(chooseMatmulKernel(e, 1000, 1024, 1000, tB, batch));
    const [plain, transposed, batched] = [choice(false, 1), choice(true, 1), choice(false, 2)];
    useTuning(e, { entries: { [`matmul|${matmulShapeClass(1024, 1024, 1024)}`]: wide } });
    try {
      assertEquals(choice(false, 1), e.adapterInfo.software ? wide : plain);
      assertEquals(choice(true, 1), transposed);
      assertEquals(choice(false, 2), batched);
      assertEquals(withVariant("matmul", wide, () => choice(true, 2)), wide);
    } finally {
      useTuning(e, null);
    }
    if (texCannot(e, 300, 260, 36, false)) return;
    // Right where forced: ragged blocks (300 = 9 × 32 + 12 rows, 260 = 4 × 64 + 4 columns), vec4 operands.
    await check(e, { m: 300, k: 36, n: 260 }, wide);
  },
);

gpuTest("vec4 loads and stores (N a multiple of 4) give the same bits as scalar ones", async (e) => {
  // B with 260 columns goes through vec4 B loads and vec4 C stores; with a 261st column, scalar ones. The
  // sums run in the same order, so the first 260 columns agree bit for bit, with bias and ReLU too.
  const [m, k] = [37, 36];
  const a = e.tensor(rand(m * k, 1, -1, 1), [m, k]);
  const b261 = rand(k * 261, 2, -1, 1), b260 = new Float32Array(k * 260);
  for (let r = 0; r < k; r++) b260.set(b261.subarray(r * 261, r * 261 + 260), r * 260);
  const bias = rand(261, 3, -1, 1);
  const [tb260, tb261] = [e.tensor(b260, [k, 260]), e.tensor(b261, [k, 261])];
  const [bias260, bias261] = [e.tensor(bias.subarray(0, 260), [260]), e.tensor(bias, [261])];
  for (const id of ["reg/8x8/rows", "reg/16x16/cols", "reg/4x32/cols"]) {
    const y260 = withVariant(
      "matmul",
      id,
      () => matmulForward(a, tb260, { bias: bias260, activation: "relu" }),
    );
    const y261 = withVariant(
      "matmul",
      id,
      () => matmulForward(a, tb261, { bias: bias261, activation: "relu" }),
    );
    const [v, s] = [await y260.toArray(), await y261.toArray()];
    const first = new Float32Array(m * 260);
    for (let r = 0; r < m; r++) first.set(s.subarray(r * 261, r * 261 + 260), r * 260);
    assertEquals(v, first, id);
    y260.dispose();
    y261.dispose();
  }
  for (const t of [a, tb260, tb261, bias260, bias261]) t.dispose();
});

gpuTest("empty dimensions: M = 0 gives an empty result, K = 0 gives act(bias)", async (e) => {
  const y0 = matmul(e.tensor(new Float32Array(0), [0, 4]), e.tensor(rand(12, 1), [4, 3]));
  assertEquals([...y0.shape], [0, 3]);
  const bias = e.tensor(new Float32Array([1, -2, 3]), [3]);
  const y1 = matmulForward(e.tensor(new Float32Array(0), [2, 0]), e.tensor(new Float32Array(0), [0, 3]), {
    bias,
    activation: "relu",
  });
  assertEquals([...await y1.toArray()], [1, 0, 3, 1, 0, 3]);
});

gpuTest(
  "a transposed B larger than one storage binding is split into blocks (the 2048 × 19 699 head)",
  async (e) => {
    const m = 5, k = 2048, n = Math.ceil(e.maxBinding / 4 / k) + 300; // just past one binding
    const a = rand(m * k, 1), w = rand(n * k, 2, -0.05, 0.05), bias = rand(n, 3);
    const [ta, tw, tbias] = [e.tensor(a, [m, k]), e.tensor(w, [n, k]), e.tensor(bias, [n])];
    // The built-in choice (on software adapters textures, B in two bands of n/2 rows) and register blocks
    // reading the binding-sized blocks of B.
    for (const id of [undefined, "reg/8x8/cols"]) {
      const run = () => linear(ta, tw, tbias);
      const y = await (id ? withVariant("matmul", id, run) : run()).toArray();
      // Check columns on both sides of every block and band boundary against float64.
      const h = Math.ceil(n / 2);
      const cols = [0, 1, n - 1, n - 2, h - 1, h, h + 1, 16383, 16384, 16385].filter((j) => j < n);
      for (let i = 0; i < m; i++) {
        for (const j of cols) {
          let s = bias[j], sc = Math.abs(bias[j]);
          for (let p = 0; p < k; p++) {
            s += a[i * k + p] * w[j * k + p];
            sc += Math.abs(a[i * k + p] * w[j * k + p]);
          }
          assertClose([y[i * n + j]], [s], TOL.matmul, `${id ?? "built-in"} y[${i},${j}]`, [sc]);
        }
      }
    }
  },
);

gpuTest(
  "texture-operand kernels take a B taller than a texture in bands side by side (both layouts)",
  async (e) => {
    const max = e.limits.maxTextureDimension2D;
    // Bᵀ with max + 37 rows (n) in two bands; untransposed B with K = max + 16 rows, then max + 11: the
    // same texture, whose last band's rows past K must read as zeros, not as the first product's values
    // (infinities here: times A's zero padding, NaN).
    const cases: Case[] = [
      { m: 3, k: 64, n: max + 37, tB: true, bias: true, act: "relu" },
      { m: 2, k: max + 16, n: 64 },
      { m: 2, k: max + 11, n: 64 },
      { m: 9, k: max + 11, n: 128, batchA: [2] },
    ];
    const inf = new Float32Array((max + 16) * 64).fill(1).fill(Infinity, (max + 11) * 64);
    for (const c of cases) {
      if (c.k === max + 11) {
        for (const id of ["tex/4x64/cols", "tex/16x16/rows"]) {
          const [x, y] = [
            e.tensor(new Float32Array(2 * (max + 16)), [2, max + 16]),
            e.tensor(inf, [max + 16, 64]),
          ];
          withVariant("matmul", id, () => matmulForward(x, y)).dispose();
          for (const t of [x, y]) t.dispose();
        }
      }
      const l = texCannot(e, c.m * (c.batchA?.[0] ?? 1), c.n, c.k, !!c.tB);
      assertEquals(l, null, `bands for ${JSON.stringify(c)}`);
      for (const id of c.m <= 4 ? ["tex/4x32/cols", "tex/4x64/cols", "tex/16x16/cols"] : ["tex/16x16/rows"]) {
        await check(e, c, id);
      }
    }
    // Rows whose length is not a multiple of 64 floats cannot be copied into bands: register blocks.
    assertEquals(texCannot(e, 2, max + 1, 60, true)?.includes("bands") ?? false, true);
    assertEquals(chooseMatmulKernel(e, 2, max + 1, 60, true).kind === "tex", false);
  },
);

gpuTest(
  "batched texture products taller than a texture run in groups of products (Winograd's 36 GEMMs)",
  async (e) => {
    if (!e.adapterInfo.software) return; // the built-in choice reads textures on software adapters only
    const max = e.limits.maxTextureDimension2D;
    // Three products of m rows stacked would exceed the texture height; two fit: launches of 2 and 1.
    const m = Math.floor(max / 2) - 5;
    const cases: Case[] = [
      { m, k: 64, n: 8, tB: true, batchA: [3], batchB: [3] }, // A and Bᵀ copied into their textures
      { m, k: 20, n: 30, batchA: [3], batchB: [3], bias: true, act: "relu" }, // packed, K and N padded
      { m: 64, k: 16, n: m, tB: true, batchB: [3] }, // one A shared by every product
    ];
    // One product's Bᵀ taller than a texture: no launch holds it (bands are for unbatched products only),
    // so the register blocks compute the batch.
    await check(e, { m: 8, k: 64, n: max + 5, tB: true, batchA: [2], batchB: [2] });
    for (const c of cases) {
      const aShape = [...(c.batchA ?? []), c.m, c.k];
      const bShape = [...(c.batchB ?? []), ...(c.tB ? [c.n, c.k] : [c.k, c.n])];
      const zeros = (s: number[]) => e.tensor(new Float32Array(s.reduce((p, d) => p * d, 1)), s);
      const a = zeros(aShape), b = zeros(bShape);
      const names = dispatched(e, () => void matmulForward(a, b, { transposeB: c.tB }));
      const gemms = names.filter((k) => k.startsWith("matmul_tex_tm"));
      assertEquals(gemms.length, 2, `${JSON.stringify(c)}: ${names}`);
      for (const t of [a, b]) t.dispose();
      await check(e, c);
    }
  },
);

gpuTest(
  "matmul gradients match finite differences (transposes, bias, activation, broadcast batch)",
  async (e) => {
    const A = (r: number, c: number, s = 1) => ({ data: rand(r * c, s, -1, 1), shape: [r, c] });
    await assertGradients(e, ([a, b]) => matmul(a, b), [A(3, 4, 1), A(4, 5, 2)], { what: "plain" });
    await assertGradients(e, ([a, b]) => matmul(a, b, { transposeA: true }), [A(4, 3, 3), A(4, 5, 4)], {
      what: "Aᵀ",
    });
    await assertGradients(e, ([a, b]) => matmul(a, b, { transposeB: true }), [A(3, 4, 5), A(5, 4, 6)], {
      what: "Bᵀ",
    });
    await assertGradients(e, ([a, b, c]) => matmul(a, b, { transposeA: true, transposeB: true, bias: c }), [
      A(4, 3, 7),
      A(5, 4, 8),
      { data: rand(5, 9), shape: [5] },
    ], { what: "AᵀBᵀ + bias" });
    await assertGradients(
      e,
      ([a, b, c]) => matmul(a, b, { bias: c, activation: "sigmoid" }),
      [A(3, 4, 10), A(4, 2, 11), { data: rand(2, 12), shape: [2] }],
      { what: "sigmoid(AB + bias)" },
    );
    await assertGradients(e, ([a, b]) => matmul(a, b), [
      { data: rand(2 * 3 * 4, 13), shape: [2, 3, 4] },
      A(4, 2, 14),
    ], { what: "batched A, broadcast B" });
    await assertGradients(e, ([a, b]) => matmul(a, b, { transposeB: true }), [
      A(3, 4, 15),
      { data: rand(2 * 5 * 4, 16), shape: [2, 5, 4] },
    ], { what: "broadcast A, batched Bᵀ" });
  },
);

// Aᵀ·B with K ≤ 16 (a linear layer's weight gradient dyᵀ·x at a small batch) on software adapters: one
// kernel over flat textures of A and B, no transpose; the register blocks' FMA order, so the same bits.
async function checkOuter(e: Engine, k: number, m: number, n: number, blocks: number) {
  const what = `Aᵀ·B K ${k} M ${m} N ${n}`;
  const a = rand(k * m, k + m), b = rand(k * n, k + n + 1);
  const ta = e.tensor(a, [k, m]), tb = e.tensor(b, [k, n]);
  const run = () => matmulForward(ta, tb, { transposeA: true });
  const names = dispatched(e, () => void run());
  assertEquals(names, Array(blocks).fill(`matmul_outer_tex_k${k}`), `${what}: ${names}`);
  const got = await run().toArray();
  const viaReg = await withVariant("matmul", "reg/16x16/rows", run).toArray();
  const at = got.findIndex((v, i) => !Object.is(v, viaReg[i]));
  assertEquals(at, -1, `${what}: element ${at}: ${got[at]} against the register blocks' ${viaReg[at]}`);
  const want = matmulCpu(a, [k, m], b, [k, n], { transposeA: true });
  assertClose(got, want.data, TOL.matmul, what, want.scale);
}

gpuTest(
  "a short-K Aᵀ·B (a weight gradient) reads flat textures on software adapters, bit for bit",
  async (e) => {
    if (!e.adapterInfo.software) return;
    // M odd (A padded to whole texels), K 1 to 16, a head's gradient at batch 2.
    for (const [k, m, n] of [[2, 4999, 64], [7, 37, 12], [16, 250, 2048], [1, 5, 4], [2, 19699, 256]]) {
      await checkOuter(e, k, m, n, 1);
    }
    // K past 16, or N not a multiple of 4: the usual kernels.
    const ta = e.tensor(rand(17 * 8), [17, 8]), tb = e.tensor(rand(17 * 8), [17, 8]);
    const names = dispatched(e, () => void matmulForward(ta, tb, { transposeA: true }));
    assertEquals(names.some((n) => n.startsWith("matmul_outer")), false, `K 17: ${names}`);
  },
);

Deno.test({
  name: "a short-K Aᵀ·B larger than one binding stores C in row blocks of a binding each",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await smallBindingEngine(4 << 20, 256);
    if (!e.adapterInfo.software) return;
    // C: 1 001 × 2 048 floats (7.8 MiB): blocks of 512 rows (4 MiB), the last of 489.
    await checkOuter(e, 3, 1001, 2048, 2);
    e.checkError();
  },
});

gpuTest("transpose swaps the last two dimensions", async (e) => {
  const x = rand(2 * 17 * 33, 5);
  const y = await transpose(e.tensor(x, [2, 17, 33])).toArray();
  for (let b = 0; b < 2; b++) {
    for (let i = 0; i < 17; i++) {
      for (let j = 0; j < 33; j++) assertEquals(y[b * 561 + j * 17 + i], x[b * 561 + i * 33 + j]);
    }
  }
  // From 2¹⁶ elements with rows of a multiple of 4 (R = 68), x through a flat texture on software adapters
  // (a texel row ends mid-matrix); R = 67 through workgroup memory. Exact either way.
  for (const [r, c, tex] of [[68, 601, e.adapterInfo.software], [67, 601, false]] as const) {
    const v = rand(2 * r * c, 6);
    const t = e.tensor(v, [2, r, c]);
    assertEquals(dispatched(e, () => void transpose(t)).includes("transpose_tex"), tex, `[2, ${r}, ${c}]`);
    const got = await transpose(t).toArray();
    let bad = -1;
    for (let b = 0; b < 2 && bad < 0; b++) {
      for (let i = 0; i < r && bad < 0; i++) {
        for (let j = 0; j < c; j++) {
          if (got[(b * c + j) * r + i] !== v[(b * r + i) * c + j]) {
            bad = (b * c + j) * r + i;
            break;
          }
        }
      }
    }
    assertEquals(bad, -1, `[2, ${r}, ${c}]: first wrong element`);
    t.dispose();
  }
});

gpuTest("mismatched shapes throw errors that name the op and both shapes", (e) => {
  const a = e.tensor(new Float32Array(6), [2, 3]);
  const b = e.tensor(new Float32Array(8), [4, 2]);
  assertThrows(() => matmul(a, b), RangeError, "Cannot matmul tensors of shapes [2,3] and [4,2]");
  assertThrows(() => matmul(a, e.tensor(new Float32Array(3), [3])), TypeError, "rank ≥ 2");
  assertThrows(
    () => matmul(e.tensor(new Float32Array(12), [2, 2, 3]), e.tensor(new Float32Array(18), [3, 3, 2])),
    RangeError,
    "batch dimensions differ",
  );
  assertThrows(
    () => linear(a, e.tensor(new Float32Array(6), [2, 3]), e.tensor(new Float32Array(3), [3])),
    RangeError,
    "bias",
  );
});

gpuTest("the built-in table picks texture blocks on software adapters and tiles on hardware", (e) => {
  const c = chooseMatmulKernel(e, 1024, 1024, 1024);
  // On hardware behind OpenGL, whose tiled kernels take long to compile (stagesTiles), register blocks.
  const kind = e.adapterInfo.software ? "tex" : stagesTiles(e) ? "tiled" : "reg";
  assertEquals(c.kind, kind);
  if (c.kind !== "tiled") {
    assertEquals(c.tm, 32);
    assertEquals((chooseMatmulKernel(e, 12544, 64, 576) as { lanes: string }).lanes, "rows");
  }
  if (kind === "tex") {
    // Bᵀ past the adapter's texture size (the aux head's 19 699 × 2048 weight): in bands; rows that can't
    // be copied whole (K not a multiple of 64): register blocks.
    const n = e.limits.maxTextureDimension2D + 1;
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 32, n, 2048, true)), "tex/32x32/cols");
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 32, n, 2040, true)), "reg/32x32/cols");
    assertEquals(chooseMatmulKernel(e, 32, n, 2048).kind, "tex"); // untransposed: n/4 texels per row
    // Few rows: 16 × 16 blocks, not 32 × 32.
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 8, 19699, 2048, true)), "tex/16x16/cols");
    assertEquals(chooseMatmulKernel(e, 16, 16, 16).kind, "reg"); // small: 8 × 8 register blocks
  }
});

gpuTest(
  "texture-operand kernels: copied and packed textures, ragged edges, epilogues, fallbacks",
  async (e) => {
    const cases: Case[] = [
      { m: 70, k: 128, n: 128 }, // A and B copied into their textures (rows of a multiple of 64 floats)
      { m: 33, k: 20, n: 17, bias: true, act: "relu" }, // packed, K padded to 32, N to 20
      { m: 9, k: 64, n: 30, tB: true, bias: true, act: "sigmoid" }, // Bᵀ copied, scalar C
      { m: 40, k: 37, n: 12, tB: true }, // Bᵀ packed
      { m: 5, k: 8, n: 6, batchA: [3] }, // batched A folded into M
      { m: 6, k: 5, n: 7, tA: true }, // Aᵀ materialised first
      // Batches stacked along the textures' rows: packed (K padded per slab), copied, Bᵀ, a shared A.
      { m: 5, k: 8, n: 6, batchA: [2], batchB: [2] },
      { m: 33, k: 64, n: 128, batchA: [3], batchB: [3] },
      { m: 9, k: 37, n: 30, tB: true, bias: true, act: "relu", batchA: [2, 2], batchB: [2, 2] },
      { m: 7, k: 20, n: 12, batchB: [3] },
      { m: 64, k: 64, n: 64, tB: true, batchB: [2] },
      // Five stacked A slabs of 4 100 rows pass the texture size: the register kernel instead.
      { m: 4100, k: 4, n: 4, batchA: [5], batchB: [5] },
    ];
    // Packing reads its source through a flat texture on software adapters (where its size is a multiple
    // of 4), from the storage buffer elsewhere.
    for (const [k, n, tex] of [[20, 4, e.adapterInfo.software], [21, 3, false]] as const) {
      const [a, b] = [e.tensor(rand(33 * k, 1), [33, k]), e.tensor(rand(k * n, 2), [k, n])];
      const names = withVariant("matmul", "tex/16x16", () => dispatched(e, () => void matmulForward(a, b)))
        .filter((x) => x.startsWith("matmul_tex_pack"));
      assertEquals(names.length, 2, `${names}`);
      assertEquals(
        names.every((x) => /^matmul_tex_pack(_vec)?_tex$/.test(x) === tex),
        true,
        `${k}, ${n}: ${names}`,
      );
      for (const t of [a, b]) t.dispose();
    }
    assertEquals(texCannot(e, 4100, 4, 4, false, 5, 5) !== null, true, "20 500 texel rows");
    assertEquals(texCannot(e, 4100, 4, 4, false, 1, 5), null, "A shared, B slabs of 16 rows");
    for (const id of ["tex/16x16/rows", "tex/16x16/cols", "tex/32x32"]) {
      for (const c of id === "tex/32x32" ? cases.slice(0, 2).concat(cases.slice(7, 9)) : cases) {
        await check(e, c, id);
      }
    }
    // Two products in a row reuse the cached textures: each reads its own operands.
    const a1 = e.tensor(rand(64 * 64, 1), [64, 64]), a2 = e.tensor(rand(64 * 64, 2), [64, 64]);
    const ys = withVariant("matmul", "tex/16x16", () => [matmulForward(a1, a2), matmulForward(a2, a1)]);
    const [w1, w2] = [
      matmulCpu(await a1.toArray(), [64, 64], await a2.toArray(), [64, 64]),
      matmulCpu(await a2.toArray(), [64, 64], await a1.toArray(), [64, 64]),
    ];
    assertClose(await ys[0].toArray(), w1.data, TOL.matmul, "A1·A2", w1.scale);
    assertClose(await ys[1].toArray(), w2.data, TOL.matmul, "A2·A1", w2.scale);
    assertThrows(() => e.texture("x", e.limits.maxTextureDimension2D + 1, 1), RangeError, "texture x");
  },
);

gpuTest(
  "an untransposed B larger than one storage binding is split along K and accumulated (dX of the aux head)",
  async (e) => {
    const n = 2048, m = 3, k = Math.ceil(e.maxBinding / 4 / n) + 77; // B: (k, n) just past one binding
    const a = rand(m * k, 21), w = rand(k * n, 22, -0.05, 0.05), bias = rand(n, 23);
    const [ta, tw, tbias] = [e.tensor(a, [m, k]), e.tensor(w, [k, n]), e.tensor(bias, [n])];
    // Register blocks (K split, accumulated), and the built-in choice (textures in bands on llvmpipe).
    for (const id of ["reg/4x32/cols", undefined]) {
      const run = () => matmulForward(ta, tw, { bias: tbias, activation: "relu" });
      const y = await (id ? withVariant("matmul", id, run) : run()).toArray();
      for (let i = 0; i < m; i++) {
        for (const j of [0, 1, 777, n - 1]) {
          let s = bias[j], sc = Math.abs(bias[j]);
          for (let p = 0; p < k; p++) {
            s += a[i * k + p] * w[p * n + j];
            sc += Math.abs(a[i * k + p] * w[p * n + j]);
          }
          assertClose([y[i * n + j]], [Math.max(s, 0)], TOL.matmul, `${id ?? "built-in"} y[${i},${j}]`, [sc]);
        }
      }
    }
  },
);

gpuTest("variant ids name every configuration and parse back to it", (e) => {
  for (const id of matmulCandidates(e, 300, 260, 36)) {
    assertEquals(matmulVariantId(matmulVariant(e, id, 300, 260)), id);
  }
  assertEquals(matmulCandidates(e, 300, 260, 36).slice(0, 6), [
    "reg/8x8/rows",
    "reg/8x8/cols",
    "reg/16x16/rows",
    "reg/16x16/cols",
    "reg/32x32/rows",
    "reg/32x32/cols",
  ]);
  // Without lanes, the lanes are those of the built-in choice (the dimension that pads less).
  assertEquals((matmulVariant(e, "reg/32x32", 12544, 64) as { lanes: string }).lanes, "rows");
  assertEquals((matmulVariant(e, "reg/8x8", 8, 1000) as { lanes: string }).lanes, "cols");
  // Blocks twice the size of C in both dimensions are no candidates; nothing runs without work.
  assertEquals(matmulCandidates(e, 5, 7, 3).filter((id) => id.startsWith("reg/")), [
    "reg/8x8/rows",
    "reg/8x8/cols",
  ]);
  assertEquals(matmulCandidates(e, 0, 7, 3), []);
  // Texture blocks where the operands fit the adapter's texture size.
  assertEquals(matmulCandidates(e, 300, 260, 36).filter((id) => id.startsWith("tex/")), [
    "tex/16x16/rows",
    "tex/32x32/rows",
  ]);
  const tall = e.limits.maxTextureDimension2D + 1;
  // Past the texture size, B in bands where its rows are copied whole (multiples of 64 floats), else none.
  assertEquals(matmulCandidates(e, 4, tall, 60, true).filter((id) => id.startsWith("tex/")), []);
  assertEquals(matmulCandidates(e, 4, tall, 64, true).filter((id) => id.startsWith("tex/")), [
    "tex/16x16/cols",
    "tex/32x32/cols",
    "tex/4x32/cols",
    "tex/4x64/cols",
  ]);
  assertEquals(matmulShapeClass(3136, 64, 576), "m4096 n64 k1024");
  assertEquals(matmulShapeClass(1, 0, 3), "m1 n0 k4");
});

gpuTest("the tuning table and forced variants choose the matmul kernel", async (e) => {
  const software = e.adapterInfo.software || !stagesTiles(e);
  const builtIn = matmulVariantId(chooseMatmulKernel(e, 300, 260, 36));
  assertEquals(
    builtIn,
    e.adapterInfo.software ? "tex/32x32/rows" : software ? "reg/16x16/rows" : "tiled/64x64",
  );
  if (e.adapterInfo.software) {
    // The texture block and lanes that pad least (32 × 32 counted at 1/1.5): Winograd's products at batch 8.
    // A workgroup is one SIMD group (8 lanes at 256 bits, 16 at 512): 32 × 32 blocks with lanes along N
    // cover 256 columns at 8 lanes, but 512 at 16, where 16 × 16 blocks cover C's 256 exactly.
    const wg = blockWorkgroup(e);
    for (
      const [m, n, k, id] of [
        [1568, 64, 64, "tex/32x32/rows"],
        [392, 128, 128, "tex/32x32/rows"],
        [128, 256, 256, wg === 8 ? "tex/32x32/cols" : "tex/16x16/cols"],
        [32, 512, 512, "tex/32x32/cols"],
        [8, 19699, 2048, "tex/16x16/cols"],
      ] as const
    ) {
      assertEquals(matmulVariantId(chooseMatmulKernel(e, m, n, k, true)), id, `${m} × ${n} × ${k}`);
    }
    // The threshold counts every product of a batch: Winograd's 36 products of 392 × 64 × 64 at batch 2.
    assertEquals(chooseMatmulKernel(e, 392, 64, 64, true).kind, "reg");
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 392, 64, 64, true, 36)), "tex/32x32/rows");
  }
  try {
    useTuning(e, { entries: { [`matmul|${matmulShapeClass(300, 260, 36)}`]: "reg/16x16/cols" } });
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 300, 260, 36)), "reg/16x16/cols");
    assertEquals(matmulVariantId(chooseMatmulKernel(e, 290, 257, 33)), "reg/16x16/cols"); // same class
    // Another shape class keeps the built-in choice.
    assertEquals(
      matmulVariantId(chooseMatmulKernel(e, 30, 260, 36)),
      software ? "reg/8x8/cols" : "tiled/64x64",
    );
    // A forced variant wins over the table, and the result is still right.
    withVariant("matmul", "reg/8x8/cols", () => {
      assertEquals(matmulVariantId(chooseMatmulKernel(e, 300, 260, 36)), "reg/8x8/cols");
    });
    await check(e, { m: 300, k: 36, n: 260 });
  } finally {
    useTuning(e, null);
  }
  assertEquals(matmulVariantId(chooseMatmulKernel(e, 300, 260, 36)), builtIn);
});

gpuTest("forcing a matmul variant that does not exist throws naming it", (e) => {
  const a = e.tensor(rand(6, 1), [2, 3]), b = e.tensor(rand(12, 2), [3, 4]);
  for (const id of ["reg/7x7", "reg/16x8", "tiled/32x32", "winograd", "reg/16x16/diagonal"]) {
    assertThrows(
      () => withVariant("matmul", id, () => matmul(a, b)),
      RangeError,
      `Cannot use matmul variant "${id}"`,
    );
  }
  assertThrows(() => matmulVariant(e, "reg/7x7", 2, 4), RangeError, "8x8, 16x16, 32x32");
});

gpuTest(
  "the f16-tile variants compute the product of the operands rounded to f16; tune never offers them",
  async (e) => {
    const ids = matmulReducedPrecisionVariants(e);
    if (!e.device.features.has("shader-f16")) {
      assertEquals(ids, []);
      console.log("skipped the f16 products: this adapter has no shader-f16");
      return;
    }
    assertEquals(ids, ["tiled/64x64/f16", "tiled/128x128/f16"]);
    for (const [m, n, k] of [[300, 260, 36], [1024, 1024, 1024], [2, 19699, 2048]]) {
      assertEquals(
        matmulCandidates(e, m, n, k).filter((id) => id.endsWith("/f16")),
        [],
        `${m} × ${n} × ${k}`,
      );
    }
    const cases: Case[] = [
      { m: 300, k: 36, n: 260 },
      { m: 65, k: 40, n: 30, tB: true, bias: true, act: "relu", batchA: [2], batchB: [2] },
      { m: 129, k: 33, n: 77, tA: true },
    ];
    for (const id of ids) for (const c of cases) await check(e, c, id, true);
    // The rounding is to nearest, ties to even, as Math.f16round: C = A · 1 with K = 1 returns A rounded.
    const ulp = 2 ** -10;
    const xs = [
      1 + ulp / 2,
      1 + 1.5 * ulp,
      1 + ulp / 2 + 2 ** -20,
      -(1 + 1.5 * ulp),
      3.14159,
      -1e-3,
      65504,
      2 ** -14,
    ];
    const a = e.tensor(Float32Array.from(xs), [xs.length, 1]),
      ones = e.tensor(new Float32Array(4).fill(1), [1, 4]);
    for (const id of ids) {
      const got = await withVariant("matmul", id, () => matmulForward(a, ones)).toArray();
      assertEquals([...got], xs.flatMap((x) => Array(4).fill(Math.f16round(x))), id);
    }
    // NaN stays NaN (also one whose mantissa is all ones, which rounding its bits would carry into the sign),
    // and ±∞ stays ±∞.
    const bits = new Uint32Array([0x7fffffff, 0xffffffff, 0x7fc00000, 0x7f800000, 0xff800000]);
    const special = new Float32Array(bits.buffer);
    const sp = e.tensor(special, [special.length, 1]);
    for (const id of ids) {
      const got = await withVariant("matmul", id, () => matmulForward(sp, ones)).toArray();
      assertEquals([...got].map(String), [...special].flatMap((x) => Array(4).fill(String(x))), id);
    }
    // Not the float32 product: the same inputs differ from it by more than the float32 tolerance.
    const x = e.tensor(rand(300 * 36, 1, -1, 1), [300, 36]),
      w = e.tensor(rand(36 * 260, 2, -1, 1), [36, 260]);
    const want = matmulCpu(await x.toArray(), [300, 36], await w.toArray(), [36, 260], {});
    const y = await withVariant("matmul", ids[0], () => matmulForward(x, w)).toArray();
    const off = compareClose(y, want.data, TOL.matmul, want.scale);
    if (off.ok) throw new Error(`${ids[0]} agrees with the float32 product (err/tol ${off.ratio})`);
    // A table entry written by hand applies (tune never writes one).
    try {
      useTuning(e, { entries: { [`matmul|${matmulShapeClass(300, 260, 36)}`]: ids[0] } });
      assertEquals(matmulVariantId(chooseMatmulKernel(e, 300, 260, 36)), ids[0]);
    } finally {
      useTuning(e, null);
    }
  },
);

Deno.test({
  name: "forcing an f16-tile variant on a device without shader-f16 throws naming the feature",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const e = await createEngine({ f16: false });
    try {
      assertEquals(matmulReducedPrecisionVariants(e), []);
      const a = e.tensor(rand(6, 1), [2, 3]), b = e.tensor(rand(12, 2), [3, 4]);
      assertThrows(
        () => withVariant("matmul", "tiled/64x64/f16", () => matmulForward(a, b)),
        RangeError,
        'Cannot use matmul variant "tiled/64x64/f16" on this adapter: it needs the device feature shader-f16',
      );
    } finally {
      e.destroy();
    }
  },
});
