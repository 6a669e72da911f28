import { add, div, mul, noGrad, relu, requiresGrad, sigmoid, sub, sum, tanh, Tape } from "../../mod.ts";
import { exp, log, sqrt } from "../../kernels/elementwise.ts";
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
