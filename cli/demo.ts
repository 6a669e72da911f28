/**
 * `deno task demo`: what runs on a fresh machine. For now: find the adapter, run a fused matmul (bias +
 * ReLU) on the GPU and check it against the CPU reference; later issues turn this into the HE2Gene
 * pipeline on built-in data.
 *
 * @module
 */
import { createEngine } from "../mod.ts";
import { matmulCpu, matmulForward } from "../kernels/matmul.ts";

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  });
}

/** Run the demonstration; throws if the GPU result is wrong. */
export async function runDemo(): Promise<void> {
  const t0 = performance.now();
  const engine = await createEngine();
  const a = engine.adapterInfo;
  console.log(`he2gene demo — HE2Gene on WebGPU`);
  console.log(
    `adapter: ${a.name}${a.software ? " (software adapter: CPU speed)" : ""}; backend: ${a.backend}`,
  );
  console.log(`features: ${a.features.join(", ") || "none"}`);
  const [m, k, n] = [300, 512, 250]; // 300 spots × 512 features → 250 genes, not tile multiples
  const x = rand(m * k, 1), w = rand(n * k, 2), b = rand(n, 3);
  const want = matmulCpu(x, [m, k], w, [n, k], { transposeB: true, bias: b, activation: "relu" });
  const y = engine.scope(() =>
    matmulForward(engine.tensor(x, [m, k]), engine.tensor(w, [n, k]), {
      transposeB: true,
      bias: engine.tensor(b, [n]),
      activation: "relu",
    })
  );
  await y.toArray(); // first run compiles the kernel
  const t1 = performance.now();
  const got = await engine.scope(() =>
    matmulForward(engine.tensor(x, [m, k]), engine.tensor(w, [n, k]), {
      transposeB: true,
      bias: engine.tensor(b, [n]),
      activation: "relu",
    }).toArray()
  );
  const ms = performance.now() - t1;
  let worst = 0;
  for (let i = 0; i < got.length; i++) {
    worst = Math.max(worst, Math.abs(got[i] - want.data[i]) / (want.scale[i] + 1e-30));
  }
  const ok = worst < 1e-5;
  console.log(
    `relu(x·Wᵀ + b), ${m}×${k} · (${n}×${k})ᵀ: max error ${worst.toExponential(2)} of Σ|x||w| ` +
      `(${ok ? "matches" : "DOES NOT MATCH"} the CPU reference); ${
        ms.toFixed(1)
      } ms with upload and readback`,
  );
  engine.destroy();
  if (!ok) throw new Error("the GPU result does not match the CPU reference");
  console.log(
    `done in ${((performance.now() - t0) / 1000).toFixed(1)} s. Next: deno task test, deno task bench.`,
  );
}
