import {
  binary,
  binaryCpu,
  type BinaryOp,
  unary,
  unaryCpu,
  type UnaryOp,
} from "../../kernels/elementwise.ts";
import { add, div, mul, sub } from "../../ops/elementwise.ts";
import { sum } from "../../ops/reduce.ts";
import { requiresGrad, Tape } from "../../engine/autograd.ts";
import { TEXTURE_READS_MIN } from "../../engine/flat.ts";
import { assertClose, assertEquals, assertThrows, dispatched, gpuTest, rand, TOL } from "../helpers.ts";

const UNARY: UnaryOp[] = ["relu", "sigmoid", "exp", "log", "sqrt", "neg", "abs", "tanh"];
const BINARY: BinaryOp[] = ["add", "sub", "mul", "div", "maximum", "minimum"];
const SIZES = [0, 1, 7, 33, 129, 1000, 100_003];

for (const op of UNARY) {
  gpuTest(`unary ${op} matches the CPU reference on sizes 0…100003`, async (e) => {
    for (const n of SIZES) {
      // log and sqrt need positive inputs; the others see both signs and large magnitudes.
      const x = op === "log" || op === "sqrt" ? rand(n, n + 3, 0.01, 50) : rand(n, n + 3, -30, 30);
      const t = e.tensor(x, [n]);
      const y = unary(op, t);
      assertEquals(y.shape, [n]);
      assertClose(await y.toArray(), unaryCpu(op, x), TOL.elementwise, `${op}[${n}]`);
      t.dispose();
      y.dispose();
    }
  });
}

const SHAPE_PAIRS: [number[], number[]][] = [
  [[129], [129]],
  [[7, 33], [7, 33]],
  [[7, 33], [33]],
  [[7, 1], [1, 33]],
  [[2, 3, 1, 5], [3, 4, 1]],
  [[1], [1000]],
  [[], [3, 2]],
  [[0, 4], [4]],
  [[1, 1, 1, 1, 1, 1, 2], [3, 1]],
];

for (const op of BINARY) {
  gpuTest(`binary ${op} broadcasts across ranks like NumPy`, async (e) => {
    for (const [sa, sb] of SHAPE_PAIRS) {
      const na = sa.reduce((p, d) => p * d, 1), nb = sb.reduce((p, d) => p * d, 1);
      const a = rand(na, na + 1, -4, 4);
      const b = op === "div" ? rand(nb, nb + 2, 0.5, 3) : rand(nb, nb + 2, -4, 4);
      const ta = e.tensor(a, sa), tb = e.tensor(b, sb);
      const y = binary(op, ta, tb);
      const want = binaryCpu(op, a, sa, b, sb);
      assertEquals([...y.shape], want.shape, `${op} [${sa}] [${sb}] shape`);
      assertClose(await y.toArray(), want.data, TOL.elementwise, `${op} [${sa}] ∘ [${sb}]`);
      for (const t of [ta, tb, y]) t.dispose();
    }
  });
}

gpuTest("scalar forms apply the scalar on the right (and on the left when reversed)", async (e) => {
  const x = rand(1000, 5, -3, 3);
  const t = e.tensor(x, [10, 100]);
  assertClose(await add(t, 2.5).toArray(), x.map((v) => v + 2.5), TOL.elementwise, "x + 2.5");
  assertClose(await sub(t, 1).toArray(), x.map((v) => v - 1), TOL.elementwise, "x - 1");
  assertClose(await mul(t, -0.5).toArray(), x.map((v) => v * -0.5), TOL.elementwise, "x * -0.5");
  assertClose(await div(t, 4).toArray(), x.map((v) => v / 4), TOL.elementwise, "x / 4");
  assertClose(await binary("sub", t, 1, true).toArray(), x.map((v) => 1 - v), TOL.elementwise, "1 - x");
});

gpuTest("elementwise ops on 10⁷ elements use a 2-D dispatch grid and stay correct", async (e) => {
  const n = 10_000_019;
  const a = rand(n, 11), b = rand(n, 12);
  const y = add(e.tensor(a, [n]), e.tensor(b, [n]));
  const got = await y.toArray();
  for (const i of [0, 1, 65535 * 128, n - 1, 7_777_777]) {
    assertClose([got[i]], [a[i] + b[i]], TOL.elementwise, `y[${i}]`);
  }
});

gpuTest("the vec4 kernels (sizes a multiple of 4) are bit-identical to the scalar ones", async (e) => {
  // 1000 elements go 4 per invocation, 1001 one per invocation; the first 1000 see the same data.
  const [x, z] = [rand(1001, 5, -30, 30), rand(1001, 6, 0.01, 50)];
  const firstOf = async (f: (n: number) => ReturnType<typeof unary>) => {
    const [v, s] = [f(1000), f(1001)];
    const out = [await v.toArray(), (await s.toArray()).subarray(0, 1000)];
    v.dispose();
    s.dispose();
    return out;
  };
  const tensors = new Map<string, ReturnType<typeof unary>>();
  const t = (name: string, a: Float32Array, n: number) => {
    const key = `${name}${n}`;
    if (!tensors.has(key)) tensors.set(key, e.tensor(a.subarray(0, n), [n]));
    return tensors.get(key)!;
  };
  for (const op of UNARY) {
    const src = op === "log" || op === "sqrt" ? z : x;
    const [v, s] = await firstOf((n) => unary(op, t(op === "log" || op === "sqrt" ? "z" : "x", src, n)));
    assertEquals(v, s, `unary ${op}`);
  }
  const ops: BinaryOp[] = [...BINARY, "relu_grad", "sigmoid_grad", "tanh_grad", "sign_mul"];
  for (const op of ops) {
    const [v, s] = await firstOf((n) => binary(op, t("x", x, n), t("z", z, n)));
    assertEquals(v, s, `binary ${op}`);
    const [vs, ss] = await firstOf((n) => binary(op, t("x", x, n), 0.75));
    assertEquals(vs, ss, `${op} with a scalar`);
    const [vr, sr] = await firstOf((n) => binary(op, t("z", z, n), -1.5, true));
    assertEquals(vr, sr, `${op} with a scalar, reversed`);
  }
  for (const v of tensors.values()) v.dispose();
});

gpuTest(
  "elementwise ops from 2¹⁶ elements read flat textures on software adapters, bit for bit",
  async (e) => {
    // n = 2¹⁶ + 4 goes through textures (vec4) on llvmpipe; n + 1 through the scalar storage kernel; the
    // first n results are the same bits. Below TEXTURE_READS_MIN, storage.
    const n = TEXTURE_READS_MIN + 4;
    const [x, z] = [rand(n + 1, 7, -30, 30), rand(n + 1, 8, 0.01, 50)];
    const [x4, z4, x1, z1] = [
      e.tensor(x.subarray(0, n), [n]),
      e.tensor(z.subarray(0, n), [n]),
      e.tensor(x, [n + 1]),
      e.tensor(z, [n + 1]),
    ];
    // Each form: the kernel family it dispatches, and f(first n) against f(n + 1) for the first n.
    const forms: [string, string, (four: boolean) => ReturnType<typeof unary>][] = [];
    const ops: BinaryOp[] = [...BINARY, "relu_grad", "sigmoid_grad", "tanh_grad", "sign_mul"];
    for (const op of ops) {
      forms.push([`binary ${op}`, "binary", (four) => binary(op, four ? x4 : x1, four ? z4 : z1)]);
      forms.push([`${op} 0.75`, "scalar", (four) => binary(op, four ? x4 : x1, 0.75)]);
      forms.push([`-1.5 ${op}`, "scalar", (four) => binary(op, four ? z4 : z1, -1.5, true)]);
    }
    for (const op of UNARY) {
      const positive = op === "log" || op === "sqrt";
      forms.push([
        `unary ${op}`,
        "unary",
        (four) => unary(op, four ? (positive ? z4 : x4) : (positive ? z1 : x1)),
      ]);
    }
    for (const [what, family, f] of forms) {
      const names = dispatched(e, () => void f(true));
      assertEquals(
        names.some((k) => k.startsWith(family) && k.endsWith("_tex")),
        e.adapterInfo.software,
        `${what}: ${names}`,
      );
      const [v, s] = [await f(true).toArray(), await f(false).toArray()];
      // The first differing element, if any (a diff of 65 540 floats would take minutes to print).
      const [vb, sb] = [new Uint32Array(v.buffer), new Uint32Array(s.buffer)];
      const at = vb.findIndex((b, i) => b !== sb[i]);
      assertEquals(at === -1 ? null : [at, v[at], s[at]], null, `${what}: first difference`);
    }
    const small = [e.tensor(x.subarray(0, 1024), [1024]), e.tensor(z.subarray(0, 1024), [1024])];
    assertEquals(
      dispatched(e, () => void binary("add", small[0], small[1])).some((k) => k.endsWith("_tex")),
      false,
    );
    // The tape's sum of the gradients of a tensor used three times (x·x + 3·x): dx = x + x + 3.
    const xs = requiresGrad(e.tensor(x.subarray(0, n), [n]));
    const f = () => sum(add(mul(xs, xs), mul(xs, 3)));
    const names = dispatched(e, () => {
      const t = new Tape();
      t.backward(t.record(f));
    });
    assertEquals(names.includes("grad_add_vec_tex"), e.adapterInfo.software, `${names}`);
    const tape = new Tape();
    const g = tape.backward(tape.record(f)).get(xs)!;
    const want = Float32Array.from(x.subarray(0, n), (v) => 2 * v + 3);
    assertClose(await g.toArray(), want, TOL.elementwise, "d(x·x + 3x)/dx");
    tape.dispose();
    for (const t of [x4, z4, x1, z1, xs, ...small]) t.dispose();
  },
);

gpuTest("mismatched shapes throw a RangeError naming the op and both shapes", (e) => {
  const a = e.tensor(new Float32Array(6), [2, 3]);
  const b = e.tensor(new Float32Array(4), [4]);
  assertThrows(() => add(a, b), RangeError, "Cannot add tensors of shapes [2,3] and [4]");
  assertThrows(() => add(a, "x" as unknown as number), TypeError, "Cannot add");
});
