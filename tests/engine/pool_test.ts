import { BufferPool } from "../../engine/pool.ts";
import { createEngine } from "../../engine/engine.ts";
import { binary } from "../../kernels/elementwise.ts";
import { assertEquals, gpuTest, rand } from "../helpers.ts";

const MiB = 2 ** 20;
const USAGE = GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST;

gpuTest("the pool reuses a released size and, on a miss, destroys free buffers beyond its slack", (e) => {
  let flushes = 0;
  const pool = new BufferPool(e.device, e.limits.maxBufferSize, {
    slackBytes: 3 * MiB,
    beforeDestroy: () => flushes++,
  });
  const a = pool.acquire(4 * MiB, USAGE, "a"), b = pool.acquire(2 * MiB, USAGE, "b");
  pool.release(a);
  pool.release(b);
  assertEquals(pool.stats().freeBytes, 6 * MiB);
  // A hit reuses the buffer and destroys nothing.
  const a2 = pool.acquire(4 * MiB, USAGE, "a2");
  assertEquals([a2.id, pool.stats().created, flushes], [a.id, 2, 0]);
  pool.release(a2);
  // A miss with 6 MiB free > 3 MiB slack: the 4 MiB buffer goes (largest first), the 2 MiB one stays.
  const c = pool.acquire(8 * MiB, USAGE, "c");
  const s = pool.stats();
  assertEquals([flushes, s.created, s.free, s.freeBytes, s.totalBytes], [1, 3, 1, 2 * MiB, 10 * MiB]);
  assertEquals(pool.acquire(2 * MiB, USAGE, "b2").id, b.id);
  pool.release(c);
  pool.trim();
  assertEquals(pool.stats().totalBytes, 2 * MiB);
});

gpuTest(
  "with no slack, ops of changing sizes stay correct while the pool destroys what they released",
  async () => {
    // Every miss destroys all free buffers: recorded work that used them must be submitted first.
    const e = await createEngine({ poolSlackBytes: 0 });
    try {
      // All recorded before any readback: buffers released by earlier sizes are destroyed while the work that
      // used them is still only recorded.
      const runs = [1000, 70_000, 3000, 250_000, 1000, 40_000].map((n) => {
        const x = rand(n, n, -1, 1), y = rand(n, n + 1, -1, 1);
        const [tx, ty] = [e.tensor(x, [n]), e.tensor(y, [n])];
        const s = binary("add", tx, ty), p = binary("mul", s, tx);
        for (const t of [tx, ty, s]) t.dispose();
        return { n, x, y, p };
      });
      for (const { n, x, y, p } of runs) {
        const got = await p.toArray();
        p.dispose();
        for (let i = 0; i < n; i += 97) {
          const want = Math.fround(Math.fround(x[i] + y[i]) * x[i]);
          if (got[i] !== want) throw new Error(`n=${n}: [${i}] = ${got[i]}, expected ${want}`);
        }
      }
      e.checkError();
      assertEquals(e.pool.stats().freeBytes <= e.pool.stats().totalBytes, true);
    } finally {
      e.destroy();
    }
  },
);
