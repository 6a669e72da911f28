import { add, defineKernel, GPUFailure, grid, mul, relu, sum } from "../../mod.ts";
import { sizeClass } from "../../engine/pool.ts";
import { assertClose, assertEquals, assertRejects, assertThrows, gpuTest, rand, TOL } from "../helpers.ts";

gpuTest("upload and readback round-trip exactly, including size 0 and scalars", async (e) => {
  for (const shape of [[0], [], [1], [7, 33], [3, 0, 2]]) {
    const n = shape.reduce((p, d) => p * d, 1);
    const x = rand(n, 3);
    const t = e.tensor(x, shape);
    assertEquals([...t.shape], shape);
    assertEquals(await t.toArray(), x);
    t.dispose();
  }
});

gpuTest("the adapter is named and its backend reported", (e) => {
  assertEquals(typeof e.adapterInfo.name, "string");
  assertEquals(e.adapterInfo.name.length > 0, true);
  assertEquals(typeof e.adapterInfo.backend, "string");
  // The device was created with the adapter's maximum binding size, not the 128 MiB default cap.
  assertEquals(e.maxBinding >= 128 * 1024 * 1024, true);
});

gpuTest("a tensor used after release throws a clear error", (e) => {
  const t = e.tensor(new Float32Array(4), [4]);
  t.dispose();
  assertThrows(() => relu(t), Error, "was already released");
  t.dispose(); // idempotent
});

gpuTest("reading a released tensor rejects with the same clear error", async (e) => {
  const t = e.tensor(new Float32Array(4), [4]);
  t.dispose();
  await assertRejects(() => t.toArray(), Error, "was already released");
});

gpuTest("scope releases intermediates and keeps what it returns", async (e) => {
  const a = e.tensor(rand(1000, 1), [1000]);
  const before = e.stats().inUse;
  const y = e.scope(() => relu(mul(add(a, 1), 2)));
  assertEquals(e.stats().inUse, before + 1);
  const r = e.scope(() => ({ s: sum(y), kept: add(y, 1).keep(), dropped: mul(y, 3) }));
  // s and kept survive (returned / kept); the dropped value was returned too so it survives as well.
  assertEquals(r.s.disposed || r.kept.disposed || r.dropped.disposed, false);
  e.scope(() => {
    add(a, a);
    mul(a, a);
  });
  assertEquals(e.stats().inUse, before + 4);
  const want = Float32Array.from(await a.toArray(), (v) => Math.max((v + 1) * 2, 0));
  assertClose(await y.toArray(), want, TOL.elementwise, "scoped result");
  for (const t of [y, r.s, r.kept, r.dropped]) t.dispose();
  assertEquals(e.stats().inUse, before);
});

gpuTest("async scopes release intermediates after the awaited work", async (e) => {
  const a = e.tensor(rand(10, 2), [10]);
  const before = e.stats().inUse;
  const v = await e.scope(async () => {
    const s = sum(mul(a, a));
    return (await s.toArray())[0];
  });
  assertEquals(e.stats().inUse, before);
  assertEquals(typeof v, "number");
});

gpuTest("the buffer pool reuses buffers: a repeated step creates none after the first", (e) => {
  const a = e.tensor(rand(5000, 4), [50, 100]);
  const step = () => e.scope(() => void sum(relu(add(a, a)), { axes: 1 }));
  step();
  const created = e.stats().created;
  for (let i = 0; i < 5; i++) step();
  assertEquals(e.stats().created, created);
});

gpuTest("size classes round up by at most 12.5 % above 1 MiB", () => {
  for (const n of [1, 17, 1000, (1 << 20) + 1, 123_456_789]) {
    const c = sizeClass(n);
    assertEquals(c >= n, true);
    if (n > 1 << 20) assertEquals(c <= n * 1.125 + 16, true);
  }
});

gpuTest("tensors larger than one 128 MiB storage binding work through elementwise ops", async (e) => {
  const n = Math.floor(e.maxBinding / 4) + 1_000_003; // just over one binding
  const x = new Float32Array(n);
  for (let i = 0; i < n; i += 9973) x[i] = i % 1000;
  const t = e.tensor(x, [n]);
  const y = add(t, t);
  const got = await y.toArray();
  for (let i = 0; i < n; i += 9973) {
    if (got[i] !== 2 * x[i]) throw new Error(`y[${i}] = ${got[i]}, expected ${2 * x[i]}`);
  }
  assertEquals(got[n - 1], 2 * x[n - 1]);
  t.dispose();
  y.dispose();
});

gpuTest("a buffer larger than the device allows names the limit and suggests a smaller batch", (e) => {
  const n = Math.floor(e.limits.maxBufferSize / 4) + 16;
  assertThrows(() => e.empty([n]), RangeError, "maxBufferSize");
  assertThrows(() => e.empty([n]), RangeError, "smaller batch");
});

gpuTest("wrong data length or bad shapes throw", (e) => {
  assertThrows(() => e.tensor(new Float32Array(5), [2, 3]), RangeError, "needs 6 values");
  assertThrows(() => e.tensor(new Float32Array(1), [-1]), TypeError, "non-negative integers");
  assertThrows(() => e.tensor(new Float32Array(6), [2, 3]).reshape([4, 2]), RangeError, "Cannot reshape");
});

gpuTest("reshape shares storage and frees it when the last view is released", async (e) => {
  const t = e.tensor(rand(12, 9), [3, 4]);
  const before = e.stats().inUse;
  const r = t.reshape([2, -1]);
  assertEquals([...r.shape], [2, 6]);
  t.dispose();
  assertEquals(e.stats().inUse, before);
  assertEquals((await r.toArray()).length, 12);
  r.dispose();
  assertEquals(e.stats().inUse, before - 1);
});

gpuTest("a WGSL compile error names the kernel and the line", async (e) => {
  const bad = defineKernel({
    name: "broken_kernel",
    bindings: [{ name: "x", access: "read_write" }],
    uniforms: { n: "u32" },
    workgroupSize: [1],
    body: "@compute @workgroup_size(1) fn main() {\n  x[0] = undefined_thing;\n}",
  });
  const t = e.tensor(new Float32Array(4), [4]);
  const log = console.error;
  console.error = () => {};
  try {
    e.run(bad, { bindings: [t], uniforms: { n: 1 }, workgroups: grid(1, 1), info: "[4]" });
    const err = await assertRejects(() => e.sync(), GPUFailure, "broken_kernel");
    assertEquals(/line \d+/.test(err.message), true);
  } finally {
    console.error = log;
  }
});

gpuTest("HE2GENE_TRACE prints each dispatch with kernel, shapes and workgroups", (e) => {
  const lines: string[] = [];
  const log = console.error;
  console.error = (s: string) => lines.push(s);
  e.trace = true;
  try {
    const a = e.tensor(new Float32Array(6), [2, 3]);
    e.scope(() => add(a, a));
  } finally {
    e.trace = false;
    console.error = log;
  }
  assertEquals(
    lines.some((l) => l.includes("binary_opadd") && l.includes("[2,3]") && l.includes("wg=1x1x1")),
    true,
  );
});

gpuTest(
  "timeGpu times every pass a buffer clear splits the work into, and gives up past its query set",
  async (e) => {
    if (!e.device.features.has("timestamp-query")) {
      console.log("skipped: the adapter has no timestamp-query");
      return;
    }
    const x = e.tensor(rand(1 << 16, 5), [1 << 16]);
    // Two dispatches with a clear between them: two passes, both timed; the results are the ordinary ones.
    let y = x, z = x;
    const ms = await e.timeGpu(() => {
      y = relu(x);
      const zero = e.zeros([1 << 16]);
      z = add(y, zero);
      zero.dispose();
    });
    assertEquals(typeof ms, "number");
    if (!(ms! > 0)) throw new Error(`timeGpu returned ${ms} for two passes of work`);
    assertEquals(await z.toArray(), await relu(x).toArray());
    // Nothing recorded: zero milliseconds.
    assertEquals(await e.timeGpu(() => {}), 0);
    // More passes than queries (64): null, and the work is still done.
    const outs: ReturnType<typeof relu>[] = [];
    const none = await e.timeGpu(() => {
      for (let i = 0; i < 70; i++) {
        outs.push(relu(x));
        e.zeros([4]).dispose();
      }
    });
    assertEquals(none, null);
    assertEquals(await outs[69].toArray(), await relu(x).toArray());
    for (const t of [x, y, z, ...outs]) t.dispose();
  },
);
