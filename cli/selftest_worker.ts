/**
 * A second (third, …) engine of `he2gene selftest --jobs N`: a Worker with a GPU device of its own that
 * takes checks from the counter it shares with the main thread and posts each result back. Compiling the
 * kernels is most of a cold self-test (Mesa's shader cache is empty: ~65 s on llvmpipe Vulkan, ~100 s on
 * OpenGL, one core), and each device compiles on its own thread.
 *
 * @module
 */
import { createEngine } from "../mod.ts";
import { runSelftest, type SelftestResult } from "../ops/selftest.ts";

/** What the main thread sends to start a worker. */
export interface SelftestJob {
  quick: boolean;
  fault?: string[];
  only?: string[];
  /** An Int32Array's buffer: the index of the next check to claim (`Atomics.add`). */
  counter: SharedArrayBuffer;
  /** The main engine's adapter and backend: a worker that finds another claims nothing. */
  adapter: string;
  backend: string;
}

/** What a worker posts: each check it starts and its result, then `done` (or `error`). */
export type SelftestMessage =
  | {
    type: "start";
    check: Omit<SelftestResult, "maxError" | "tolerance" | "ratio" | "ms" | "ok">;
    index: number;
    total: number;
  }
  | { type: "result"; index: number; total: number; result: SelftestResult }
  | { type: "done" }
  | { type: "error"; message: string };

const scope = self as unknown as {
  onmessage: ((e: MessageEvent<SelftestJob>) => void) | null;
  postMessage(m: SelftestMessage): void;
};

scope.onmessage = async (ev) => {
  const job = ev.data;
  const counter = new Int32Array(job.counter);
  let engine: Awaited<ReturnType<typeof createEngine>> | null = null;
  try {
    engine = await createEngine();
    const { name, backend } = engine.adapterInfo;
    if (name !== job.adapter || backend !== job.backend) {
      throw new Error(`this worker's adapter is ${name} (${backend}), not ${job.adapter} (${job.backend})`);
    }
    await runSelftest(engine, {
      quick: job.quick,
      fault: job.fault,
      only: job.only,
      next: () => Atomics.add(counter, 0, 1),
      onStart: ({ family, op, variant, shape, index, total }) =>
        scope.postMessage({ type: "start", check: { family, op, variant, shape }, index, total }),
      onResult: (result, index, total) => scope.postMessage({ type: "result", index, total, result }),
    });
    engine.destroy();
    engine = null;
    scope.postMessage({ type: "done" });
  } catch (e) {
    engine?.destroy();
    scope.postMessage({ type: "error", message: e instanceof Error ? e.message : String(e) });
  }
};
