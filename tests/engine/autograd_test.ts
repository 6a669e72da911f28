import { add, div, mul, noGrad, relu, requiresGrad, sigmoid, sub, sum, tanh, Tape } from "../../mod.ts";
import { exp, log, sqrt } from "../../ops/elementwise.ts";
import { assertEquals, assertGradients, gpuTest, rand } from "../helpers.ts";

gpuTest("gradients of broadcast add, sub, mul and div match finite differences", async (e) => {
  const a = { data: rand(12, 1, -2, 2), shape: [3, 4] };
  const b = { data: rand(4, 2, 0.5, 2), shape: [4] };
  await assertGradients(e, ([x, y]) => add(x, y), [a, b], { what: "add" });
  await assertGradients(e, ([x, y]) => sub(x, y), [a, b], { what: "sub" });
  await assertGradients(e, ([x, y]) => mul(mul(x, y), x), [a, b], { what: "mul (x used twice)" });
  await assertGradients(e, ([x, y]) => div(x, y), [a, b], { what: "div" });
});

gpuTest("gradients of unary ops match finite differences", async (e) => {
  const x = { data: rand(7, 3, -2, 2).map((v) => (Math.abs(v) < 0.05 ? 0.3 : v)), shape: [7] };
  const pos = { data: rand(7, 4, 0.5, 3), shape: [7] };
  await assertGradients(e, ([t]) => relu(t), [x], { what: "relu" });
  await assertGradients(e, ([t]) => sigmoid(t), [x], { what: "sigmoid" });
  await assertGradients(e, ([t]) => tanh(t), [x], { what: "tanh" });
  await assertGradients(e, ([t]) => exp(t), [x], { what: "exp" });
  await assertGradients(e, ([t]) => log(t), [pos], { what: "log" });
  await assertGradients(e, ([t]) => sqrt(t), [pos], { what: "sqrt" });
  await assertGradients(e, ([t]) => mul(t, 3), [x], { what: "scalar mul" });
});

gpuTest("no-grad mode records nothing and a tape leaks nothing after dispose", async (e) => {
  const w = requiresGrad(e.tensor(rand(6, 5), [6]));
  const before = e.stats().inUse;
  const tape = new Tape();
  const loss = tape.record(() => e.scope(() => sum(mul(relu(w), w))));
  const grads = tape.backward(loss);
  assertEquals(grads.has(w), true);
  const g = grads.get(w)!;
  const wv = await w.toArray();
  const gv = await g.toArray();
  // d/dw sum(relu(w)·w) = 2w for w > 0, 0 otherwise
  for (let i = 0; i < 6; i++) assertEquals(Math.abs(gv[i] - (wv[i] > 0 ? 2 * wv[i] : 0)) < 1e-6, true);
  tape.dispose();
  loss.dispose();
  g.dispose();
  assertEquals(e.stats().inUse, before);
  const t2 = new Tape();
  const y = t2.record(() => noGrad(() => sum(mul(w, w))));
  let threw = false;
  try {
    t2.backward(y);
  } catch {
    threw = true;
  }
  assertEquals(threw, true);
  y.dispose();
});

gpuTest(
  "gradients of a tensor used more than once are summed (scalar and vec4), also past one binding",
  async (e) => {
    // Small and just over one binding, each with a size that is a multiple of 4 (vec4 kernel) and one not.
    const big = Math.floor(e.maxBinding / 4) + 1_000_003;
    for (const n of [7, 8, big, big + 1]) {
      const step = n > 8 ? 9973 : 1;
      const dy = new Float32Array(n);
      for (let i = 0; i < n; i += step) dy[i] = (i % 1000) - 499.75;
      dy[n - 1] = 3.5;
      const x = requiresGrad(e.tensor(new Float32Array(n), [n]));
      const seed = e.tensor(dy, [n]);
      const tape = new Tape();
      const y = tape.record(() => add(add(x, x), x)); // dy/dx = 3: three gradients summed
      const g = tape.backward(y, seed).get(x)!;
      tape.dispose();
      assertEquals(g.shape, [n]);
      const got = await g.toArray();
      for (let i = 0; i < n; i += step) {
        if (got[i] !== 3 * dy[i]) throw new Error(`dx[${i}] = ${got[i]}, expected ${3 * dy[i]} (n = ${n})`);
      }
      assertEquals(got[n - 1], 3 * dy[n - 1]);
      for (const t of [g, y, seed, x]) t.dispose();
    }
  },
);

gpuTest("backward(loss) fills .grad of leaves like PyTorch, accumulating until zeroGrad", async (e) => {
  const { backward, Adam, linear, mseLoss } = await import("../../mod.ts");
  const x = e.tensor(rand(6, 1), [3, 2]);
  const w = e.tensor(rand(4, 2), [2, 2], { requiresGrad: true });
  const b = e.tensor(rand(2, 3), [2], { requiresGrad: true });
  const t = e.tensor(rand(6, 4), [3, 2]);
  const loss = mseLoss(linear(x, w, b), t);
  await backward(loss);
  const gw = await w.grad!.toArray();
  const gb = await b.grad!.toArray();
  assertEquals(x.grad, null); // x needs no gradient
  // Second backward on a fresh graph accumulates (loss.backward() form).
  await mseLoss(linear(x, w, b), t).backward();
  const gw2 = await w.grad!.toArray();
  for (let i = 0; i < 4; i++) {
    assertEquals(Math.abs(gw2[i] - 2 * gw[i]) <= 1e-6 * Math.abs(gw[i]) + 1e-7, true);
  }
  // dL/db = 2/(N) Σ_rows (y − t) for MSE over N = 6 elements: check against a float64 recomputation.
  const [xv, wv, bv, tv] = await Promise.all([x.toArray(), w.toArray(), b.toArray(), t.toArray()]);
  const want = [0, 0];
  for (let i = 0; i < 3; i++) {
    for (let o = 0; o < 2; o++) {
      const y = xv[i * 2] * wv[o * 2] + xv[i * 2 + 1] * wv[o * 2 + 1] + bv[o];
      want[o] += (2 / 6) * (y - tv[i * 2 + o]);
    }
  }
  for (let o = 0; o < 2; o++) assertEquals(Math.abs(gb[o] - want[o]) < 1e-5, true);
  // Adam's step() uses .grad; zeroGrad() clears it.
  const opt = new Adam([w, b], { lr: 0.1, weightDecay: 1e-4 });
  const before = await w.toArray();
  opt.step();
  const after = await w.toArray();
  for (let i = 0; i < 4; i++) {
    assertEquals(Math.abs(after[i] - before[i] + 0.1 * Math.sign(gw2[i] + 1e-4 * before[i])) < 1e-4, true);
  }
  opt.zeroGrad();
  assertEquals(w.grad, null);
  assertEquals(b.grad, null);
  opt.dispose();
});

gpuTest("backward from a tensor computed without gradients is a clear error", async (e) => {
  const { backward } = await import("../../mod.ts");
  const x = e.tensor(rand(3, 1), [3]);
  let msg = "";
  await backward(sum(x)).catch((err: Error) => (msg = err.message));
  assertEquals(msg.includes("Cannot back-propagate"), true);
});

gpuTest(
  "with the NaN watch on, the op that first produced NaN/Inf is named; off, the loss reads as NaN",
  async (e) => {
    const { watchNumerics, mseLoss, GPUFailure } = await import("../../mod.ts");
    const x = e.tensor(new Float32Array([1, -1, 2, 3]), [4]);
    const t = e.tensor(new Float32Array(4), [4]);
    // Off: NaN propagates into the loss and is read back as NaN.
    const [plain] = await mseLoss(log(x), t).toArray();
    assertEquals(Number.isNaN(plain), true);
    watchNumerics(e, true);
    try {
      const loss = mseLoss(mul(log(x), 2), t);
      let msg = "";
      await loss.toArray().catch((err: Error) => {
        if (err instanceof GPUFailure) msg = err.message;
      });
      assertEquals(msg.includes("NaN or Inf first produced by log([4]) → [4]"), true);
    } finally {
      watchNumerics(e, false);
    }
  },
);
