/**
 * The bench's PyTorch CPU peer (bench/peer_cpu.ts): what it reads from bench/peer_torch.py's JSON line and
 * how it fails. A stand-in script plays python3 here (the real run needs torch and ~15 s, so it is the
 * bench's, not the suite's).
 */
import { ok as assert } from "node:assert";
import { assertEquals } from "../helpers.ts";
import { printTorchCpuTable, runTorchCpu } from "../../bench/peer_cpu.ts";

function assertStringIncludes(text: string, part: string): void {
  assert(text.includes(part), `expected ${JSON.stringify(part)} in ${JSON.stringify(text)}`);
}

async function fakePython(body: string): Promise<string> {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-peer-" });
  const path = `${dir}/python3`;
  await Deno.writeTextFile(path, `#!/bin/sh\n${body}\n`);
  await Deno.chmod(path, 0o755);
  return path;
}

Deno.test("the PyTorch CPU peer reads matmul, inference and training rows and passes the batches on", async () => {
  const rows = [
    { what: "matmul 1024^3", mode: "fp32", batch: null, seconds: 0.0125, gflops: 171.8 },
    { what: "resnet50+heads inference", mode: "fp32", batch: 8, seconds: 0.8, s_per_image: 0.1 },
    { what: "training step", mode: "fp32", batch: 2, seconds: 1.5, s_per_image: 0.75, loss0: 15 },
    { what: "training step", mode: "fp32", batch: 8, error: "out of memory" },
  ];
  // The stand-in checks its arguments itself (a failure names them in stderr's last line).
  const py = await fakePython(
    `case "$*" in *"--device cpu"*"--batches 8"*"--train-batches 2,8"*) ;; *) echo "bad args: $*" >&2; exit 3;; esac\n` +
      `echo "peer_torch: a table"\necho 'json: ${JSON.stringify({ device: "cpu", torch: "1.13", rows })}'`,
  );
  const logs: string[] = [];
  const r = await runTorchCpu({
    inferBatches: [8],
    trainBatches: [2, 8],
    reps: 2,
    log: (s) => logs.push(s),
    python: py,
  });
  assert(r !== null, logs.join("\n"));
  assertEquals(r.torch, "1.13");
  assertEquals(r.matmulGflops, 171.8);
  assertEquals(r.inferSPerImage, { 8: 0.1 });
  assertEquals(r.trainSPerStep, { 2: 1.5 });
  assertEquals(logs.length, 1);
  assertStringIncludes(logs[0], "training step, batch 8: out of memory");
  const table: string[] = [];
  printTorchCpuTable(
    r,
    { matmulGflops: 34.36, inferSPerImage: { 8: 0.4 }, trainSPerStep: { 2: 6 } },
    (s) => table.push(s),
  );
  const text = table.join("\n");
  // Speed ratios ours ÷ PyTorch: GFLOP/s directly, times inverted.
  assert(/matmul 1024³, GFLOP\/s\s+171\.8\s+34\.4\s+0\.20×/.test(text), text);
  assert(/inference batch 8, s\/image\s+0\.100\s+0\.400\s+0\.25×/.test(text), text);
  assert(/training step batch 2, s\/step\s+1\.500\s+6\.000\s+0\.25×/.test(text), text);
  await Deno.remove(py.slice(0, py.lastIndexOf("/")), { recursive: true });
});

Deno.test("the PyTorch CPU peer says why when python3 fails or is missing, and returns null", async () => {
  const py = await fakePython(
    `echo "peer_torch: PyTorch is not importable here (No module named torch)" >&2; exit 2`,
  );
  const logs: string[] = [];
  const r = await runTorchCpu({
    inferBatches: [],
    trainBatches: [2],
    reps: 1,
    log: (s) => logs.push(s),
    python: py,
  });
  assertEquals(r, null);
  assertStringIncludes(
    logs.join("\n"),
    "PyTorch (CPU) peer failed: peer_torch: PyTorch is not importable here",
  );
  const missing = await runTorchCpu({
    inferBatches: [8],
    trainBatches: [],
    reps: 1,
    log: (s) => logs.push(s),
    python: py + ".absent",
  });
  assertEquals(missing, null);
  assertStringIncludes(logs.at(-1)!, "PyTorch (CPU) peer not run:");
  await Deno.remove(py.slice(0, py.lastIndexOf("/")), { recursive: true });
});
