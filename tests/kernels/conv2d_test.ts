import {
  conv2dBackwardBias,
  conv2dBackwardCpu,
  conv2dBackwardInput,
  conv2dBackwardWeight,
  conv2dCandidates,
  conv2dCpu,
  conv2dForward,
  conv2dGeometry,
  conv2dShapeClass,
  releaseConv2dWeight,
  withConv2dVariant,
} from "../../kernels/conv2d/mod.ts";
import { conv2d } from "../../ops/conv2d.ts";
import { chooseMatmulKernel, matmulVariantId, type TexConfig } from "../../kernels/matmul.ts";
import { useTuning, withVariant } from "../../kernels/tuning.ts";
import type { Engine } from "../../engine/engine.ts";
import { requiresGrad, Tape } from "../../engine/autograd.ts";
import { sum } from "../../ops/reduce.ts";
import { CONV_CASES, type ConvCase } from "../../ops/selftest.ts";
import {
  assertClose,
  assertEquals,
  assertGradients,
  assertThrows,
  dispatched,
  gpuTest,
  rand,
  TOL as SHARED_TOL,
} from "../helpers.ts";

/**
 * Tolerance of every GPU-vs-reference comparison in this file (kernels/tolerance.ts): against the scale
 * Σ|a||b| of the same product computed on absolute values, not against |want|; looser against PyTorch.
 */
const TOL = SHARED_TOL.conv2d;
const TOL_TORCH = SHARED_TOL.conv2dTorch;

const abs = (a: Float32Array) => a.map(Math.abs);
const prod = (s: readonly number[]) => s.reduce((a, b) => a * b, 1);

// [N, Cin, H, W, Cout, K, stride, padding]: awkward sizes, not multiples of any register tile, shared with
// the self-test. Its last two (1×1, multiples of 4) are for the `blocked` strategy's matmul shortcut only.
type Case = ConvCase;
const CASES: readonly Case[] = CONV_CASES.slice(0, -2);

function caseData(c: Case, seed: number) {
  const [n, cin, h, w, cout, k, stride, padding] = c;
  const xShape = [n, cin, h, w], wShape = [cout, cin, k, k];
  const oh = Math.floor((h + 2 * padding - k) / stride) + 1,
    ow = Math.floor((w + 2 * padding - k) / stride) + 1;
  const yShape = [n, cout, oh, ow];
  return {
    xShape,
    wShape,
    yShape,
    stride,
    padding,
    x: rand(prod(xShape), seed, -1, 1),
    w: rand(prod(wShape), seed + 1, -1, 1),
    b: rand(cout, seed + 2, -1, 1),
    r: rand(prod(yShape), seed + 3, -1, 1),
    dy: rand(prod(yShape), seed + 4, -1, 1),
    label: `x[${xShape}] w[${wShape}] s${stride} p${padding}`,
  };
}

gpuTest("conv2d forward matches the float64 reference on awkward shapes", async (e) => {
  for (const [ci, c] of CASES.entries()) {
    const d = caseData(c, 10 * ci + 1);
    const o = { stride: d.stride, padding: d.padding };
    const y = conv2dForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), o);
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, o);
    const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, o).data;
    assertEquals([...y.shape], want.shape, d.label);
    assertClose(await y.toArray(), want.data, TOL, `forward ${d.label}`, scale);
  }
});

gpuTest("conv2d backward (dx, dw, db) matches the float64 reference on awkward shapes", async (e) => {
  for (const [ci, c] of CASES.entries()) {
    const d = caseData(c, 10 * ci + 2);
    const o = { stride: d.stride, padding: d.padding };
    await e.scope(async () => {
      const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
      const dx = conv2dBackwardInput(dy, w, d.xShape, o);
      const dw = conv2dBackwardWeight(x, dy, d.wShape, o);
      const db = conv2dBackwardBias(dy);
      const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, o);
      const scale = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), o);
      assertEquals([...dx.shape], d.xShape);
      assertEquals([...dw.shape], d.wShape);
      assertEquals([...db.shape], [d.wShape[0]]);
      assertClose(await dx.toArray(), want.dx, TOL, `dx ${d.label}`, scale.dx);
      assertClose(await dw.toArray(), want.dw, TOL, `dw ${d.label}`, scale.dw);
      assertClose(await db.toArray(), want.db, TOL, `db ${d.label}`, scale.db);
    });
  }
});

gpuTest("conv2d weight gradient is the same with one split and with many", async (e) => {
  const d = caseData([3, 6, 11, 10, 5, 3, 1, 1], 7);
  const o = { stride: d.stride, padding: d.padding };
  const x = e.tensor(d.x, d.xShape), dy = e.tensor(d.dy, d.yShape);
  const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, o);
  const scale = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), o);
  for (const strategy of ["implicit_gemm", "blocked"]) {
    for (const target of [1, 64 * 9 * 4, 1 << 20]) {
      const variant = `${strategy}/split${target}`;
      const dw = withVariant("conv2d.dw", variant, () => conv2dBackwardWeight(x, dy, d.wShape, o));
      assertClose(await dw.toArray(), want.dw, TOL, `dw with ${variant}`, scale.dw);
    }
  }
});

gpuTest("conv2d weight gradient sums every term of a long K in every strategy", async (e) => {
  // K = N·OH·OW = 264 500: one invocation summing it all would loop more than 65 535 times, after which
  // llvmpipe silently leaves the loop (MAX_LOOP_STEPS in kernels/conv2d/common.ts); split1 asks for one split.
  const d = caseData([5, 4, 230, 230, 4, 3, 1, 1], 9);
  const o = { stride: d.stride, padding: d.padding };
  const x = e.tensor(d.x, d.xShape), dy = e.tensor(d.dy, d.yShape);
  const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, o);
  const scale = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), o);
  for (const variant of ["blocked/split1", "implicit_gemm/split1", "direct", "winograd"]) {
    const dw = withVariant("conv2d.dw", variant, () => conv2dBackwardWeight(x, dy, d.wShape, o));
    assertClose(await dw.toArray(), want.dw, TOL, `dw with ${variant}`, scale.dw);
  }
});

gpuTest("conv2d matches the reference at a ResNet layer shape (64 → 64, 3×3, 14×14)", async (e) => {
  const d = caseData([2, 64, 14, 14, 64, 3, 1, 1], 3);
  const o = { stride: 1, padding: 1 };
  const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
  const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, o);
  const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, o).data;
  assertClose(await conv2dForward(x, w, o).toArray(), want.data, TOL, "forward", scale);
  const g = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, o);
  const gs = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), o);
  assertClose(await conv2dBackwardInput(dy, w, d.xShape, o).toArray(), g.dx, TOL, "dx", gs.dx);
  assertClose(await conv2dBackwardWeight(x, dy, d.wShape, o).toArray(), g.dw, TOL, "dw", gs.dw);
});

gpuTest("conv2d fused epilogue (bias, residual, ReLU) matches the reference in every strategy", async (e) => {
  for (const strategy of ["blocked", "implicit_gemm", "direct"]) {
    for (const c of [CASES[2], CASES[4], CASES[6]]) {
      await checkEpilogue(e, strategy, c);
    }
  }
});

async function checkEpilogue(e: Engine, strategy: string, c: Case): Promise<void> {
  const d = caseData(c, 5);
  for (const [bias, residual, relu] of [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 1]]) {
    const o = { stride: d.stride, padding: d.padding };
    const y = withVariant(
      "conv2d.fwd",
      strategy,
      () =>
        conv2dForward(e.tensor(d.x, d.xShape), e.tensor(d.w, d.wShape), {
          ...o,
          bias: bias ? e.tensor(d.b, [d.wShape[0]]) : null,
          residual: residual ? e.tensor(d.r, d.yShape) : null,
          relu: !!relu,
        }),
    );
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, {
      ...o,
      bias: bias ? d.b : undefined,
      residual: residual ? d.r : undefined,
      relu: !!relu,
    });
    const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, {
      ...o,
      bias: bias ? abs(d.b) : undefined,
      residual: residual ? abs(d.r) : undefined,
    }).data;
    assertClose(
      await y.toArray(),
      want.data,
      TOL,
      `${d.label} ${strategy} bias ${bias} res ${residual} relu ${relu}`,
      scale,
    );
  }
}

gpuTest("conv2d backward matches finite differences at stride 1 and 2", async (e) => {
  for (
    const [n, cin, h, w, cout, k, stride, padding] of [[1, 2, 5, 4, 3, 3, 1, 1], [2, 2, 5, 5, 2, 3, 2, 1]]
  ) {
    await assertGradients(
      e,
      ([x, wt, b]) => conv2d(x, wt, { stride, padding, bias: b }),
      [
        { data: rand(n * cin * h * w, 21, -1, 1), shape: [n, cin, h, w] },
        { data: rand(cout * cin * k * k, 22, -1, 1), shape: [cout, cin, k, k] },
        { data: rand(cout, 23, -1, 1), shape: [cout] },
      ],
      { what: `conv2d s${stride} p${padding}` },
    );
  }
});

gpuTest("conv2d backward through the fused ReLU and residual matches finite differences", async (e) => {
  // Inputs away from the ReLU kink: a finite difference across it would be meaningless.
  await assertGradients(
    e,
    ([x, wt, r]) => conv2d(x, wt, { padding: 1, residual: r, relu: true }),
    [
      { data: rand(1 * 2 * 4 * 4, 31, -1, 1), shape: [1, 2, 4, 4] },
      { data: rand(3 * 2 * 3 * 3, 32, -1, 1), shape: [3, 2, 3, 3] },
      { data: rand(3 * 4 * 4, 33, -1, 1).map((v) => v + Math.sign(v) * 3), shape: [1, 3, 4, 4] },
    ],
    { what: "conv2d relu+residual" },
  );
});

gpuTest("conv2d gradients on the tape match the float64 reference (1×1 and 7×7 stride 2)", async (e) => {
  for (const c of [CASES[3], CASES[6]]) {
    const d = caseData(c, 41);
    const o = { stride: d.stride, padding: d.padding };
    const x = requiresGrad(e.tensor(d.x, d.xShape)), w = requiresGrad(e.tensor(d.w, d.wShape));
    const b = requiresGrad(e.tensor(d.b, [d.wShape[0]]));
    const tape = new Tape();
    const loss = tape.record(() => sum(conv2d(x, w, { ...o, bias: b })));
    const grads = tape.backward(loss);
    const ones = new Float32Array(prod(d.yShape)).fill(1);
    const want = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, ones, o);
    const scale = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, ones, o);
    assertClose(await grads.get(x)!.toArray(), want.dx, TOL, `tape dx ${d.label}`, scale.dx);
    assertClose(await grads.get(w)!.toArray(), want.dw, TOL, `tape dw ${d.label}`, scale.dw);
    assertClose(await grads.get(b)!.toArray(), want.db, TOL, `tape db ${d.label}`, scale.db);
    tape.dispose();
  }
});

const FIXTURES = new URL("../fixtures/conv2d/", import.meta.url);

gpuTest("conv2d forward and backward match PyTorch (tests/fixtures/conv2d)", async (e) => {
  const meta = JSON.parse(await Deno.readTextFile(new URL("cases.json", FIXTURES)));
  const names = Object.keys(meta.cases);
  assertEquals(names.length > 0, true);
  for (const name of names) {
    const { stride, padding, shapes } = meta.cases[name];
    const load = async (key: string) => {
      const bytes = await Deno.readFile(new URL(`${name}_${key}.bin`, FIXTURES));
      const a = new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4);
      assertEquals(a.length, prod(shapes[key]), `${name}_${key}.bin length`);
      return a;
    };
    const [x, w, b, dy, y, dx, dw, db] = await Promise.all(
      ["x", "w", "b", "dy", "y", "dx", "dw", "db"].map(load),
    );
    const o = { stride, padding };
    const xt = e.tensor(x, shapes.x), wt = e.tensor(w, shapes.w), dyt = e.tensor(dy, shapes.dy);
    const gy = conv2dForward(xt, wt, { ...o, bias: e.tensor(b, shapes.b) });
    const scale = conv2dCpu(abs(x), shapes.x, abs(w), shapes.w, { ...o, bias: abs(b) }).data;
    assertClose(await gy.toArray(), y, TOL_TORCH, `${name} y`, scale);
    const gs = conv2dBackwardCpu(abs(x), shapes.x, abs(w), shapes.w, abs(dy), o);
    assertClose(
      await conv2dBackwardInput(dyt, wt, shapes.x, o).toArray(),
      dx,
      TOL_TORCH,
      `${name} dx`,
      gs.dx,
    );
    assertClose(
      await conv2dBackwardWeight(xt, dyt, shapes.w, o).toArray(),
      dw,
      TOL_TORCH,
      `${name} dw`,
      gs.dw,
    );
    assertClose(await conv2dBackwardBias(dyt).toArray(), db, TOL_TORCH, `${name} db`, gs.db);
  }
});

gpuTest("conv2d rejects wrong ranks, channel mismatches and bad options, naming both shapes", (e) => {
  const x = e.tensor(new Float32Array(2 * 3 * 5 * 5), [2, 3, 5, 5]);
  const w = e.tensor(new Float32Array(4 * 3 * 3 * 3), [4, 3, 3, 3]);
  assertThrows(
    () => conv2d(x.reshape([6, 5, 5]), w),
    TypeError,
    "Cannot conv2d input of shape [6,5,5] with weight of shape [4,3,3,3]",
  );
  assertThrows(
    () => conv2d(x, w.reshape([4, 27])),
    TypeError,
    "Cannot conv2d input of shape [2,3,5,5] with weight of shape [4,27]",
  );
  assertThrows(
    () => conv2d(x, e.tensor(new Float32Array(4 * 2 * 9), [4, 2, 3, 3])),
    RangeError,
    "Cannot conv2d input of shape [2,3,5,5] with weight of shape [4,2,3,3]: input has 3 channels",
  );
  assertThrows(() => conv2d(x, w, { stride: 0 }), RangeError, "stride must be a positive integer");
  assertThrows(
    () => conv2d(x, e.tensor(new Float32Array(4 * 3 * 49), [4, 3, 7, 7])),
    RangeError,
    "larger than",
  );
  assertThrows(
    () => conv2d(x, w, { bias: e.tensor(new Float32Array(3), [3]) }),
    RangeError,
    "bias of shape [3]: bias must be [4]",
  );
  assertThrows(
    () => conv2d(x, w, { residual: e.tensor(new Float32Array(2 * 4 * 5 * 5), [2, 4, 5, 5]) }),
    RangeError,
    "residual of shape [2,4,5,5]: the output has shape [2,4,3,3]",
  );
  assertThrows(
    () => conv2dBackwardInput(e.tensor(new Float32Array(8), [2, 4, 1, 1]), w, x.shape),
    RangeError,
    "dy of shape [2,4,1,1]: the convolution's output has shape [2,4,3,3]",
  );
});

/** Forward, dx and dw of `c` with all three passes forced to `variant`, against the float64 reference. */
async function checkVariant(e: Engine, variant: string, c: Case, seed: number): Promise<void> {
  const d = caseData(c, seed);
  const o = { stride: d.stride, padding: d.padding };
  await e.scope(async () => {
    const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
    const what = `${d.label} ${variant}`;
    const [y, dx, dw] = withConv2dVariant(variant, () => [
      conv2dForward(x, w, o),
      conv2dBackwardInput(dy, w, d.xShape, o),
      conv2dBackwardWeight(x, dy, d.wShape, o),
    ]);
    const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, o);
    const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, o).data;
    assertEquals([...y.shape], want.shape, `forward ${what}`);
    assertClose(await y.toArray(), want.data, TOL, `forward ${what}`, scale);
    const g = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, o);
    const gs = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), o);
    assertClose(await dx.toArray(), g.dx, TOL, `dx ${what}`, gs.dx);
    assertClose(await dw.toArray(), g.dw, TOL, `dw ${what}`, gs.dw);
  });
}

gpuTest("conv2d implicit_gemm kernels give the reference results with other register tiles", async (e) => {
  for (
    const variant of ["implicit_gemm/8x8", "implicit_gemm/4x4", "implicit_gemm/4x8", "implicit_gemm/8x4"]
  ) {
    for (const c of [CASES[2], CASES[3], CASES[4], CASES[6], CASES[12]]) {
      await checkVariant(e, variant, c, 51);
    }
  }
});

gpuTest("conv2d direct strategy matches the reference on every geometry, forward and backward", async (e) => {
  for (const [ci, c] of CONV_CASES.entries()) await checkVariant(e, "direct", c, 80 + ci);
});

gpuTest(
  "conv2d blocked strategy matches the reference with 8- and 16-wide blocks and split K",
  async (e) => {
    // 1×1 stride-1 shapes with H·W, Cin and Cout multiples of 4 run through matmul unless `nomatmul`.
    for (
      const variant of [
        "blocked/t8/split1",
        "blocked/t16/split1048576/nomatmul",
        "blocked/t8/split1048576/nomatmul",
      ]
    ) {
      for (const [ci, c] of CONV_CASES.entries()) await checkVariant(e, variant, c, 60 + ci);
    }
  },
);

gpuTest(
  "conv2d blocked reads textures (forward and dx where channels round to 16s, dw always), bit for bit",
  async (e) => {
    // Forward (Cin → 16 or 32) and input gradient (Cout → 16 or 32) read textures, and the weight gradient
    // (any channels) does; their FMAs run in the same order as the storage-buffer kernels', so the results
    // are the same bits. Stride phases, a phase without taps (1×1 stride 2), ragged blocks of 8 and 16, the
    // fused epilogue, split K (dw), conv1's 3 channels and 3×3s of 6 and 8 (the forward's rows padded with
    // zero taps to whole 4-texel steps; dw only for the input gradient), stride phases whose packing fetches
    // whole texels (Cin and Cout multiples of 4), 32 × 32 blocks.
    const cases: [Case, boolean][] = [
      [CONV_CASES[13], false],
      [CONV_CASES[14], false],
      [[2, 16, 6, 7, 13, 3, 1, 0], true],
      [[2, 64, 9, 10, 64, 3, 1, 1], false],
      [[2, 3, 40, 36, 8, 7, 2, 3], true],
      [[2, 6, 9, 8, 5, 3, 1, 1], false],
      [[2, 8, 9, 8, 6, 3, 1, 1], true],
      [[2, 8, 11, 9, 16, 3, 2, 1], false],
      [[2, 16, 7, 8, 32, 1, 2, 0], false],
    ];
    for (const [ci, [c, epilogue]] of cases.entries()) {
      const d = caseData(c, 90 + ci);
      const geo = { stride: d.stride, padding: d.padding };
      await e.scope(async () => {
        const epi = epilogue ? { bias: e.tensor(d.b, [d.wShape[0]]), residual: e.tensor(d.r, d.yShape) } : {};
        const o = { ...geo, ...epi, relu: epilogue };
        const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
        const fwd = () => conv2dForward(x, w, o);
        const dx = () => conv2dBackwardInput(dy, w, d.xShape, geo);
        const dw = () => conv2dBackwardWeight(x, dy, d.wShape, geo);
        const passes = [["forward", fwd, "tex_fwd"], ["dx", dx, "tex_fwd"], ["dw", dw, "tex_dw"]] as const;
        for (const [pass, run, kernel] of passes) {
          if (pass === "dx" && Math.ceil(d.wShape[0] / 4) % 4 !== 0) continue; // Cout → 8: buffers
          const names = withConv2dVariant("blocked", () => dispatched(e, () => void run()));
          assertEquals(
            names.some((n) => n.startsWith(`conv2d_blocked_${kernel}`)),
            true,
            `${pass} ${d.label}: ${names}`,
          );
          // The channels-last copy reads x (or dy) from a flat texture where its size is a multiple of 4, 4
          // positions of a plane per invocation where the planes are whole texels.
          const src = pass === "dx" ? dy : x;
          const quads = src.shape[2] * src.shape[3] % 4 === 0;
          const flat = src.size % 4 === 0;
          assertEquals(names.includes("conv2d_nhwc_tex"), flat && !quads, `${pass} ${d.label}: ${names}`);
          assertEquals(names.includes("conv2d_nhwc_quad"), flat && quads, `${pass} ${d.label}: ${names}`);
          // The blocks go into y as whole vec4 where its planes are whole vec4s and a GEMM writes all of them
          // (not the input gradient's stride phases).
          if (pass !== "dw") {
            const [, , oh, ow] = pass === "dx" ? d.xShape : d.yShape;
            const vec = oh * ow % 4 === 0 && (pass === "forward" || d.stride === 1);
            assertEquals(
              names.some((n) => n.startsWith("conv2d_blocked_tex_out_vec")),
              vec,
              `${pass} ${d.label}: ${names}`,
            );
          }
          // So does the weight's packing, where w's size is a multiple of 4; the forward's, where Cin is,
          // and the input gradient's, where Cin and Cout are, fetch whole texels.
          if (names.some((n) => n.startsWith("conv2d_pack_a"))) {
            const [cout, cin] = d.wShape;
            const whole = pass === "forward" ? cin % 4 === 0 : cin % 4 === 0 && cout % 4 === 0;
            const kernel = pass === "forward" ? "conv2d_pack_a_fwd" : "conv2d_pack_a_dx";
            assertEquals(names.some((n) => n.startsWith(kernel)), whole, `${pass} ${d.label}: ${names}`);
            assertEquals(
              names.includes("conv2d_pack_a_tex") || whole,
              w.size % 4 === 0,
              `${pass} ${d.label}: ${names}`,
            );
          }
          // 32 × 32 blocks (one texel of k per loop step, texelsPerStep) where the GEMM has 64 rows.
          const t32 = pass !== "dw" && d.xShape[1] === 64 && d.wShape[0] === 64 ? ["blocked/t32"] : [];
          for (const variant of ["blocked", "blocked/split1048576", ...t32]) {
            if (variant === "blocked/t32") {
              const names = withConv2dVariant(variant, () => dispatched(e, () => void run()));
              assertEquals(
                names.some((n) => n.startsWith("conv2d_blocked_tex_fwd_tm32_tn32")),
                true,
                `${pass} ${d.label}: ${names}`,
              );
            }
            const viaTextures = await withConv2dVariant(variant, () => run()).toArray();
            const viaBuffers = await withConv2dVariant(`${variant}/notex`, () => run()).toArray();
            assertEquals(viaTextures, viaBuffers, `${pass} ${d.label} ${variant}`);
          }
        }
        const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, {
          ...geo,
          bias: epilogue ? d.b : undefined,
          residual: epilogue ? d.r : undefined,
          relu: epilogue,
        });
        const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, {
          ...geo,
          bias: epilogue ? abs(d.b) : undefined,
          residual: epilogue ? abs(d.r) : undefined,
        }).data;
        assertClose(
          await withConv2dVariant("blocked", fwd).toArray(),
          want.data,
          TOL,
          `forward ${d.label}`,
          scale,
        );
        const g = conv2dBackwardCpu(d.x, d.xShape, d.w, d.wShape, d.dy, geo);
        const gs = conv2dBackwardCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, abs(d.dy), geo);
        assertClose(await withConv2dVariant("blocked", dx).toArray(), g.dx, TOL, `dx ${d.label}`, gs.dx);
        assertClose(await withConv2dVariant("blocked", dw).toArray(), g.dw, TOL, `dw ${d.label}`, gs.dw);
      });
    }
  },
);

gpuTest(
  "a 1×1 stride-1 convolution with an epilogue runs as one texture matmul that applies it, bit for bit",
  async (e) => {
    // Inference's 1×1 convolutions (batch norm folded into a bias, ReLU, the block's shortcut): where the
    // matmul's choice is a `tex` kernel, y = act(W · x[n] + bias + residual) in one kernel on the NCHW
    // tensors, without the channels-last copy and the scatter. H·W a multiple of 64 (B copied into its
    // texture) and not (B packed); Cin 100 (K padded; the blocked kernels read buffers there). Products
    // of at least 2²² FLOPs, where the built-in choice on software adapters is a `tex` kernel.
    const cases: Case[] = [[2, 256, 16, 16, 32, 1, 1, 0], [2, 192, 12, 12, 80, 1, 1, 0], [
      1,
      100,
      12,
      12,
      160,
      1,
      1,
      0,
    ]];
    for (const [ci, c] of cases.entries()) {
      const d = caseData(c, 120 + ci);
      const cfg = chooseMatmulKernel(e, d.wShape[0], d.xShape[2] * d.xShape[3], d.xShape[1]);
      const tex = cfg.kind === "tex";
      if (e.adapterInfo.software) assertEquals(tex, true, `${d.label}: the matmul's built-in kernel`);
      for (const [bias, residual, relu] of [[1, 1, 1], [1, 0, 1], [0, 1, 0], [1, 0, 0]]) {
        const label = `${d.label} bias ${bias} res ${residual} relu ${relu}`;
        await e.scope(async () => {
          const o = {
            bias: bias ? e.tensor(d.b, [d.wShape[0]]) : null,
            residual: residual ? e.tensor(d.r, d.yShape) : null,
            relu: !!relu,
          };
          const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape);
          const fwd = () => conv2dForward(x, w, o);
          const names = withConv2dVariant("blocked", () => dispatched(e, () => void fwd()));
          if (tex) {
            const mm = names.filter((n) => n.startsWith("matmul_tex_tm"));
            assertEquals(mm.length, 1, `${label}: ${names}`);
            assertEquals(mm[0].includes("_rowBias"), !!bias, `${label}: ${names}`);
            assertEquals(mm[0].includes("_res"), !!residual, `${label}: ${names}`);
            assertEquals(mm[0].includes("_actrelu"), !!relu, `${label}: ${names}`);
            // The built-in choice, with its workgroup (one SIMD group: 8 lanes at llvmpipe's default 256
            // bits). At 8 lanes: 32 × 32 blocks with lanes along N, the block that pads least for these C
            // (32 × 256, 80 × 144 and 160 × 144; 32 × 32 counted at 1/1.5 against 16 × 16, lanes along N
            // on a tie).
            const c = cfg as TexConfig;
            if (c.wg === 8) {
              assertEquals(matmulVariantId(c), "tex/32x32/cols", `${label}: the built-in choice`);
            }
            const want = `matmul_tex_tm${c.tm}_tn${c.tn}_wg${c.wg}_lanes${c.lanes}`;
            assertEquals(mm[0].startsWith(want), true, `${label}: ${names}`);
            assertEquals(names.some((n) => n.startsWith("conv2d_")), false, `${label}: ${names}`);
          }
          const got = await withConv2dVariant("blocked", fwd).toArray();
          const blocked = await withConv2dVariant("blocked/nomatmul", fwd).toArray();
          const at = got.findIndex((v, i) => !Object.is(v, blocked[i]));
          assertEquals(
            at,
            -1,
            `${label}: element ${at}: ${got[at]} against the blocked kernels' ${blocked[at]}`,
          );
          const ref = { bias: bias ? d.b : undefined, residual: residual ? d.r : undefined };
          const want = conv2dCpu(d.x, d.xShape, d.w, d.wShape, { ...ref, relu: !!relu });
          const scale = conv2dCpu(abs(d.x), d.xShape, abs(d.w), d.wShape, {
            bias: bias ? abs(d.b) : undefined,
            residual: residual ? abs(d.r) : undefined,
          }).data;
          assertClose(got, want.data, TOL, label, scale);
        });
      }
    }
  },
);

gpuTest(
  "a constant weight's packed layout is reused across calls and batch sizes, and released",
  async (e) => {
    for (const path of ["blocked", "implicit_gemm"]) {
      await withVariant("conv2d.fwd", path, async () => {
        const w = e.tensor(rand(6 * 5 * 3 * 3, 3), [6, 5, 3, 3]).keep();
        const b = e.tensor(rand(6, 4), [6]).keep();
        const live: number[] = [];
        for (const n of [1, 3, 1]) {
          await e.scope(async () => {
            const x = e.tensor(rand(n * 5 * 9 * 8, 5 + n), [n, 5, 9, 8]);
            const opts = { stride: 1, padding: 1, bias: b, relu: true };
            const want = await conv2dForward(x, w, opts).toArray();
            const got = await conv2dForward(x, w, { ...opts, constantWeight: true }).toArray();
            assertEquals(got, want, `${path}, batch ${n}`);
          });
          live.push(e.pool.stats().inUse);
        }
        // Packed once: nothing more stays alive after the second and third calls.
        assertEquals(live, [live[0], live[0], live[0]], `${path}: buffers in use after each call`);
        const before = e.pool.stats().inUse;
        releaseConv2dWeight(w);
        assertEquals(e.pool.stats().inUse, before - 1, `${path}: the one cached layout is freed`);
        w.dispose();
        b.dispose();
      });
    }
  },
);

gpuTest("conv2d runs the tuning table's variant for its shape class, and a forced variant over it", (e) => {
  const d = caseData(CASES[1], 71);
  const o = { stride: d.stride, padding: d.padding };
  const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
  const g = conv2dGeometry(d.xShape, d.wShape, o);
  const shapeClass = conv2dShapeClass(g);
  assertEquals(shapeClass, "k3s1 c4-8 hw16");
  const fwd = () => void conv2dForward(x, w, o);
  const dx = () => void conv2dBackwardInput(dy, w, d.xShape, o);
  const has = (names: string[], prefix: string) => names.some((n) => n.startsWith(prefix));
  // Default: blocked on software adapters (through textures or buffers), implicit_gemm on GPUs; on software
  // adapters Winograd for this stride-1 3×3 forward where the weight is constant (prediction).
  const byDefault = e.adapterInfo.software ? "conv2d_blocked_" : "conv2d_fwd_tm8_tn8";
  assertEquals(has(dispatched(e, fwd), byDefault), true, `default ${dispatched(e, fwd)}`);
  const predict = () => void conv2dForward(x, w, { ...o, constantWeight: true });
  const constant = e.adapterInfo.software ? "winograd_input" : "conv2d_fwd_tm8_tn8";
  assertEquals(has(dispatched(e, predict), constant), true, `constant weight ${dispatched(e, predict)}`);
  releaseConv2dWeight(w);
  try {
    useTuning(e, {
      entries: {
        [`conv2d.fwd|${shapeClass}`]: "direct",
        [`conv2d.dx|${shapeClass}`]: "implicit_gemm/4x4",
        "conv2d.fwd|k7s2 c4-64 hw256": "implicit_gemm/4x8",
      },
    });
    assertEquals(dispatched(e, fwd), ["conv2d_direct_fwd"]);
    assertEquals(has(dispatched(e, dx), "conv2d_dx_tm4_tn4"), true, `dx ${dispatched(e, dx)}`);
    const forced = withVariant("conv2d.fwd", "implicit_gemm", () => dispatched(e, fwd));
    assertEquals(has(forced, "conv2d_fwd_tm8_tn8"), true, `forced ${forced}`);
    useTuning(e, { entries: { [`conv2d.fwd|${shapeClass}`]: "winograd/f4" } });
    assertEquals(has(dispatched(e, fwd), "winograd_input"), true, `winograd ${dispatched(e, fwd)}`);
    // A table entry that names no variant is an error, naming the entry.
    useTuning(e, { entries: { [`conv2d.fwd|${shapeClass}`]: "winograd/f3" } });
    assertThrows(
      fwd,
      RangeError,
      `with variant "winograd/f3" (tuning table entry "conv2d.fwd|${shapeClass}")`,
    );
    // An entry whose variant cannot run this geometry (a class is coarser than one geometry) gives way to
    // the default: Winograd for a stride-2 3×3 class.
    const d2 = caseData(CASES[2], 73);
    const o2 = { stride: d2.stride, padding: d2.padding };
    const g2 = conv2dGeometry(d2.xShape, d2.wShape, o2);
    assertEquals(g2.stride, 2);
    useTuning(e, { entries: { [`conv2d.fwd|${conv2dShapeClass(g2)}`]: "winograd" } });
    const x2 = e.tensor(d2.x, d2.xShape), w2 = e.tensor(d2.w, d2.wShape);
    const fell = dispatched(e, () => void conv2dForward(x2, w2, o2));
    assertEquals(has(fell, byDefault), true, `fallback ${fell}`);
  } finally {
    useTuning(e, null);
  }
});

gpuTest("a forced conv2d variant that cannot run throws, naming the variant and the geometry", (e) => {
  const d = caseData(CASES[1], 72);
  const o = { stride: d.stride, padding: d.padding };
  const x = e.tensor(d.x, d.xShape), w = e.tensor(d.w, d.wShape), dy = e.tensor(d.dy, d.yShape);
  const geometry = "x[2,3,7,9] w[5,3,3,3] s1 p1";
  for (
    const [variant, why] of [
      ["fft", 'unknown strategy "fft" (the strategies are blocked, implicit_gemm, direct, winograd)'],
      ["winograd/f3", 'unknown parameter "f3" (winograd takes f2 or f4)'],
      ["blocked/t12", 'unknown parameter "t12" (blocked takes t8, t16, t32, split<N>, nomatmul, notex)'],
      ["implicit_gemm/6x8", '"6x8": TM must be 4, 8, 12 or 16 and TN 1 to 16'],
      ["implicit_gemm/split0", '"split0": the split target must be ≥ 1'],
      ["direct/t8", 'unknown parameter "t8" (direct takes none)'],
    ]
  ) {
    assertThrows(
      () => withVariant("conv2d.fwd", variant, () => conv2dForward(x, w, o)),
      RangeError,
      `Cannot conv2d ${geometry} with variant "${variant}": ${why}`,
    );
  }
  const d3 = caseData(CASES[2], 74);
  const o3 = { stride: d3.stride, padding: d3.padding };
  assertThrows(
    () =>
      withVariant(
        "conv2d.fwd",
        "winograd",
        () => conv2dForward(e.tensor(d3.x, d3.xShape), e.tensor(d3.w, d3.wShape), o3),
      ),
    RangeError,
    `with variant "winograd": Winograd runs only 3×3 stride-1 convolutions with padding ≤ 2`,
  );
  assertThrows(
    () => withVariant("conv2d.dx", "direct/t8", () => conv2dBackwardInput(dy, w, d.xShape, o)),
    RangeError,
    `Cannot conv2d backward (input) ${geometry} with variant "direct/t8"`,
  );
  assertThrows(
    () => withVariant("conv2d.dw", "blocked/t64", () => conv2dBackwardWeight(x, dy, d.wShape, o)),
    RangeError,
    `Cannot conv2d backward (weight) ${geometry} with variant "blocked/t64"`,
  );
});

/** ResNet-50's convolutions on a 224² input (torchvision v1.5: the stride on the 3×3): [Cin, H, Cout, K, s]. */
function resnet50Convs(): [number, number, number, number, number][] {
  const convs: [number, number, number, number, number][] = [[3, 224, 64, 7, 2]];
  let cin = 64, h = 56;
  for (const [planes, blocks, stride] of [[64, 3, 1], [128, 4, 2], [256, 6, 2], [512, 3, 2]]) {
    for (let b = 0; b < blocks; b++) {
      const s = b === 0 ? stride : 1;
      convs.push([cin, h, planes, 1, 1], [planes, h, planes, 3, s]);
      if (b === 0) convs.push([cin, h, planes * 4, 1, s]); // downsample
      h = Math.ceil(h / s);
      convs.push([planes, h, planes * 4, 1, 1]);
      cin = planes * 4;
    }
  }
  return convs;
}

gpuTest(
  "conv2d shape classes group ResNet-50's 53 convolutions into 23, and every strategy is a candidate",
  (e) => {
    const convs = resnet50Convs();
    assertEquals(convs.length, 53);
    const classes = new Set(
      convs.map(([cin, h, cout, k, s]) =>
        conv2dShapeClass(
          conv2dGeometry([8, cin, h, h], [cout, cin, k, k], { stride: s, padding: (k - 1) / 2 }),
        )
      ),
    );
    assertEquals(classes.size, 23, [...classes].join("; "));
    assertEquals(classes.has("k7s2 c4-64 hw256"), true);
    assertEquals(classes.has("k3s2 c128-128 hw64"), true);
    const g = conv2dGeometry([2, 64, 56, 56], [64, 64, 3, 3], { padding: 1 });
    for (const op of ["conv2d.fwd", "conv2d.dx", "conv2d.dw"] as const) {
      assertEquals(conv2dCandidates(e, op, g), [
        "blocked",
        "blocked/t8",
        "blocked/t16",
        "blocked/t32",
        "implicit_gemm",
        "implicit_gemm/4x4",
        "implicit_gemm/4x8",
        "implicit_gemm/8x4",
        "winograd/f4",
        "winograd/f2",
        "direct",
      ]);
    }
    // Winograd only where it runs: not for a 1×1 or a strided 3×3 convolution.
    for (const [k, s] of [[1, 1], [3, 2]]) {
      const g1 = conv2dGeometry([2, 64, 56, 56], [64, 64, k, k], { stride: s, padding: (k - 1) / 2 });
      assertEquals(conv2dCandidates(e, "conv2d.fwd", g1).some((v) => v.startsWith("winograd")), false);
    }
    assertThrows(
      () => conv2dCandidates(e, "conv2d.bias" as "conv2d.fwd", g),
      RangeError,
      'Cannot list conv2d candidates for "conv2d.bias"',
    );
  },
);
