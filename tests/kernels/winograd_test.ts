import {
  conv2dBackwardCpu,
  conv2dCpu,
  conv2dGeometry,
  releaseConv2dWeight,
} from "../../kernels/conv2d/mod.ts";
import {
  WINOGRAD_MATRICES,
  winogradBackwardInput,
  winogradBackwardWeight,
  winogradForward,
  winogradSupports,
  type WinogradTile,
} from "../../kernels/conv2d/winograd.ts";
import {
  assertClose,
  assertEquals,
  assertThrows,
  dispatched,
  gpuTest,
  rand,
  TOL as SHARED_TOL,
} from "../helpers.ts";

/**
 * Every comparison holds the direct convolution's tolerance (kernels/tolerance.ts): against the scale
 * Σ|a||b| of the same product on absolute values. F(4×4, 3×3) errs ~10× more than F(2×2, 3×3) on zero-mean
 * data and still stays within a third of it.
 */
const TOL = SHARED_TOL.conv2d;
const TILES: readonly WinogradTile[] = [2, 4];

const abs = (a: Float32Array) => a.map(Math.abs);
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

// [N, Cin, H, W, Cout, padding]: odd sizes, channels not multiples of 4, batch 1 and 3, every padding.
type Case = readonly [number, number, number, number, number, number];
const CASES: readonly Case[] = [
  [1, 1, 1, 1, 1, 1], // one pixel: only the centre tap
  [3, 5, 7, 9, 6, 1],
  [1, 3, 9, 11, 7, 2],
  [3, 6, 5, 7, 5, 0],
  [2, 17, 13, 10, 9, 1],
  [1, 4, 8, 12, 8, 1], // multiples of 4 and of both tile sizes
  [2, 2, 3, 2, 3, 1],
  [1, 3, 2, 2, 2, 2], // the input gradient runs at padding 0
];

function caseData(c: Case, seed: number, lo = -1) {
  const [n, cin, h, w, cout, padding] = c;
  const xShape = [n, cin, h, w], wShape = [cout, cin, 3, 3];
  const g = conv2dGeometry(xShape, wShape, { padding });
  const yShape = [n, cout, g.oh, g.ow];
  return {
    g,
    xShape,
    wShape,
    yShape,
    o: { padding },
    x: rand(prod(xShape), seed, lo, 1),
    w: rand(prod(wShape), seed + 1, lo, 1),
    b: rand(cout, seed + 2, -1, 1),
    r: rand(prod(yShape), seed + 3, -1, 1),
    dy: rand(prod(yShape), seed + 4, lo, 1),
    label: `x[${xShape}] w[${wShape}] p${padding}`,
  };
}

Deno.test("the Winograd matrices compute the 3-tap correlation y[i] = Σ_k d[i+k]·g[k] exactly", () => {
  for (const m of TILES) {
    const { bt, g: G, at } = WINOGRAD_MATRICES[m];
    const a = m + 2;
    const d = Float64Array.from(rand(a, 7 + m));
    const g = Float64Array.from(rand(3, 9 + m));
    // Y = Aᵀ[(G g) ⊙ (Bᵀ d)]
    const u = G.map((row) => row.reduce((s, c, k) => s + c * g[k], 0));
    const v = bt.map((row) => row.reduce((s, c, k) => s + c * d[k], 0));
    const y = at.map((row) => row.reduce((s, c, k) => s + c * u[k] * v[k], 0));
    for (let i = 0; i < m; i++) {
      const want = d[i] * g[0] + d[i + 1] * g[1] + d[i + 2] * g[2];
      if (Math.abs(y[i] - want) > 1e-12) throw new Error(`F(${m},3): y[${i}] = ${y[i]}, expected ${want}`);
    }
  }
});

Deno.test("winogradSupports takes stride-1 3×3 convolutions with padding ≤ 2 only", () => {
  const supports = (x: number[], w: number[], o: { stride?: number; padding?: number }) =>
    winogradSupports(conv2dGeometry(x, w, o));
  assertEquals(supports([2, 64, 56, 56], [64, 64, 3, 3], { padding: 1 }), true);
  assertEquals(supports([1, 3, 5, 5], [4, 3, 3, 3], { padding: 0 }), true);
  assertEquals(supports([1, 3, 5, 5], [4, 3, 3, 3], { padding: 2 }), true);
  assertEquals(supports([1, 3, 5, 5], [4, 3, 3, 3], { padding: 3 }), false);
  assertEquals(supports([1, 3, 9, 9], [4, 3, 3, 3], { stride: 2, padding: 1 }), false);
  assertEquals(supports([1, 3, 9, 9], [4, 3, 1, 1], {}), false);
  assertEquals(supports([1, 3, 9, 9], [4, 3, 7, 7], { padding: 3 }), false);
});

gpuTest("Winograd forward matches the float64 reference on awkward shapes, F(2×2) and F(4×4)", async (e) => {
  for (const [ci, c] of CASES.entries()) {
    const d = caseData(c, 10 * ci + 1);
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, d.o);
    const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, d.o).data;
    for (const tile of TILES) {
      await e.scope(async () => {
        const y = winogradForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), d.g, d.o, { tile });
        assertEquals([...y.shape], want.shape, d.label);
        assertClose(await y.toArray(), want.data, TOL, `forward F${tile} ${d.label}`, scale);
      });
    }
  }
});

gpuTest("Winograd input and weight gradients match the float64 reference on awkward shapes", async (e) => {
  for (const [ci, c] of CASES.entries()) {
    const d = caseData(c, 10 * ci + 2);
    const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, d.o);
    const scale = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), d.o);
    for (const tile of TILES) {
      await e.scope(async () => {
        const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
        const dx = winogradBackwardInput(dy, w, d.g, { tile });
        const dw = winogradBackwardWeight(x, dy, d.g, { tile });
        assertEquals([...dx.shape], d.xShape);
        assertEquals([...dw.shape], d.wShape);
        assertClose(await dx.toArray(), want.dx, TOL, `dx F${tile} ${d.label}`, scale.dx);
        assertClose(await dw.toArray(), want.dw, TOL, `dw F${tile} ${d.label}`, scale.dw);
      });
    }
  }
});

gpuTest("Winograd fused epilogue adds bias, then the residual, then applies ReLU", async (e) => {
  // CASES[5]: OW a multiple of 4, so F(4×4)'s output tile rows are whole vec4s.
  for (const c of [CASES[1], CASES[2], CASES[4], CASES[5]]) {
    const d = caseData(c, 5);
    for (const [bias, residual, relu] of [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 1]]) {
      const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, {
        ...d.o,
        bias: bias ? d.b : undefined,
        residual: residual ? d.r : undefined,
        relu: !!relu,
      });
      const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, {
        ...d.o,
        bias: bias ? abs(d.b) : undefined,
        residual: residual ? abs(d.r) : undefined,
      }).data;
      for (const tile of TILES) {
        await e.scope(async () => {
          const fwd = () =>
            winogradForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), d.g, {
              ...d.o,
              bias: bias ? e.tensor(d.b, [d.wShape[0]]) : null,
              residual: residual ? e.tensor(d.r, d.yShape) : null,
              relu: !!relu,
            }, { tile });
          const what = `F${tile} ${d.label} bias ${bias} res ${residual} relu ${relu}`;
          const names = dispatched(e, () => void fwd());
          if (e.adapterInfo.software) {
            // The transforms read a channels-last copy and M (and the residual) through flat textures; a
            // residual whose size is not a multiple of 4 has none, and takes the storage-buffer kernel.
            const texOut = !residual || prod(d.yShape) % 4 === 0;
            const vec = texOut && tile === 4 && d.g.ow % 4 === 0;
            const has = (k: string) => names.some((n) => n.startsWith(k));
            assertEquals(has(`winograd_input_tex_m${tile}`), true, `${what}: ${names}`);
            assertEquals(
              names.some((n) => n.startsWith(`winograd_output_m${tile}`) && n.includes("_tex")),
              texOut,
              `${what}: ${names}`,
            );
            assertEquals(names.some((n) => n.endsWith("_vec")), vec, `${what}: ${names}`);
          }
          const y = fwd();
          assertClose(await y.toArray(), want.data, TOL, what, scale);
        });
      }
    }
  }
});

gpuTest(
  "Winograd matches the reference at a ResNet layer shape (64 → 64, 14×14) and on non-negative inputs",
  async (e) => {
    // Non-negative x, w and dy (as after a ReLU): no cancellation in the direct sum, plenty in the transforms.
    for (
      const [c, lo] of [[[2, 64, 14, 14, 64, 1], -1], [[2, 64, 14, 14, 64, 1], 0], [
        [3, 5, 7, 9, 6, 1],
        0,
      ]] as const
    ) {
      const d = caseData(c, 3, lo);
      const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, d.o);
      const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, d.o).data;
      const g = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, d.o);
      const gs = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), d.o);
      for (const tile of TILES) {
        await e.scope(async () => {
          const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
          const what = `F${tile} ${d.label} inputs ≥ ${lo}`;
          assertClose(await winogradForward(x, w, d.g, d.o, { tile }).toArray(), want.data, TOL, what, scale);
          assertClose(
            await winogradBackwardInput(dy, w, d.g, { tile }).toArray(),
            g.dx,
            TOL,
            `dx ${what}`,
            gs.dx,
          );
          assertClose(
            await winogradBackwardWeight(x, dy, d.g, { tile }).toArray(),
            g.dw,
            TOL,
            `dw ${what}`,
            gs.dw,
          );
        });
      }
    }
  },
);

gpuTest("Winograd gives the reference results in chunks of images and with the tile sum split", async (e) => {
  // Chunks of 1 and 2 images of a batch of 3 (the weight gradient accumulates over chunks); at 48² the
  // weight gradient's sum over 576 (F4) and 2304 (F2) tiles runs as 2 and 6 splits.
  for (const [c, chunks] of [[CASES[1], [1, 2]], [[4, 3, 48, 48, 5, 1], [undefined, 3]]] as const) {
    const d = caseData(c, 17);
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, { ...d.o, bias: d.b, residual: d.r });
    const scale =
      conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, { ...d.o, bias: abs(d.b), residual: abs(d.r) })
        .data;
    const g = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, d.o);
    const gs = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), d.o);
    for (const tile of TILES) {
      for (const imagesPerChunk of chunks) {
        await e.scope(async () => {
          const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
          const cfg = { tile, imagesPerChunk };
          const what = `F${tile} ${d.label} ${imagesPerChunk ?? "all"} images per chunk`;
          const opts = { ...d.o, bias: e.tensor(d.b, [d.wShape[0]]), residual: e.tensor(d.r, d.yShape) };
          assertClose(await winogradForward(x, w, d.g, opts, cfg).toArray(), want.data, TOL, what, scale);
          assertClose(await winogradBackwardInput(dy, w, d.g, cfg).toArray(), g.dx, TOL, `dx ${what}`, gs.dx);
          assertClose(
            await winogradBackwardWeight(x, dy, d.g, cfg).toArray(),
            g.dw,
            TOL,
            `dw ${what}`,
            gs.dw,
          );
        });
      }
    }
  }
});

gpuTest(
  "a constant weight's Winograd transform is made once per tile size, reused, and released",
  async (e) => {
    const w = e.tensor(rand(6 * 5 * 3 * 3, 3), [6, 5, 3, 3]).keep();
    const b = e.tensor(rand(6, 4), [6]).keep();
    for (const tile of TILES) {
      const live: number[] = [];
      for (const n of [1, 3, 1]) {
        await e.scope(async () => {
          const x = e.tensor(rand(n * 5 * 9 * 8, 5 + n), [n, 5, 9, 8]);
          const g = conv2dGeometry(x.shape, w.shape, { padding: 1 });
          const opts = { padding: 1, bias: b, relu: true };
          const want = await winogradForward(x, w, g, opts, { tile }).toArray();
          const got = await winogradForward(x, w, g, { ...opts, constantWeight: true }, { tile }).toArray();
          assertEquals(got, want, `F${tile}, batch ${n}`);
        });
        live.push(e.pool.stats().inUse);
      }
      assertEquals(live, [live[0], live[0], live[0]], `F${tile}: buffers in use after each call`);
    }
    // One cached transform per tile size.
    const before = e.pool.stats().inUse;
    releaseConv2dWeight(w);
    assertEquals(e.pool.stats().inUse, before - TILES.length, "the cached transforms are freed");
    w.dispose();
    b.dispose();
  },
);

gpuTest("Winograd refuses unsupported geometries and mismatched tensors, naming them", async (e) => {
  await e.scope(() => {
    const x = e.tensor(rand(2 * 3 * 9 * 9, 1), [2, 3, 9, 9]);
    const w = e.tensor(rand(4 * 3 * 3 * 3, 2), [4, 3, 3, 3]);
    const strided = conv2dGeometry(x.shape, w.shape, { stride: 2, padding: 1 });
    assertThrows(() => winogradForward(x, w, strided, { stride: 2, padding: 1 }), RangeError, "stride 2");
    const g = conv2dGeometry(x.shape, w.shape, { padding: 1 });
    const dy = e.tensor(rand(2 * 4 * 9 * 9, 3), [2, 4, 9, 9]);
    assertThrows(
      () => winogradForward(x, e.tensor(rand(36, 4), [4, 1, 3, 3]), g),
      RangeError,
      "weight of shape",
    );
    assertThrows(() => winogradForward(x, w, g, { bias: e.tensor(rand(3, 5), [3]) }), RangeError, "bias");
    assertThrows(
      () => winogradForward(x, w, g, { residual: dy.reshape([2, 4, 81]) }),
      RangeError,
      "residual",
    );
    assertThrows(() => winogradBackwardInput(x, w, g), RangeError, "dy of shape [2,3,9,9]");
    assertThrows(() => winogradBackwardWeight(x, x, g), RangeError, "dy of shape");
  });
});

gpuTest(
  "Winograd's default tile matches the reference at ResNet-50's layer1 shape (64 → 64, 56², batch 1)",
  async (e) => {
    const d = caseData([1, 64, 56, 56, 64, 1], 31);
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, d.o);
    const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, d.o).data;
    await e.scope(async () => {
      const y = winogradForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), d.g, d.o);
      assertClose(await y.toArray(), want.data, TOL, `forward ${d.label}`, scale);
    });
  },
);
