/**
 * PyTorch on this machine's CPU, run once from `deno task bench` after the matmul, resnet and train suites:
 * the same work as those suites (bench/peer_torch.py `--device cpu`, all cores, float32), so that a figure
 * of ours has a CPU reference from the same run. On llvmpipe the adapter *is* this CPU, and the machine's
 * speed varies from day to day (shared hosts): a ratio to a peer in the same run is what can be compared
 * across days, a figure alone is not.
 *
 * Only where `/usr/bin/python3` imports torch and torchvision; otherwise the bench says why and goes on.
 *
 * @module
 */

/** What PyTorch measured (missing entries: not asked for, or failed). */
export interface TorchCpu {
  /** e.g. "1.13.0a0". */
  torch: string;
  threads: number;
  /** matmul 1024³, GFLOP/s (median). */
  matmulGflops?: number;
  /** ResNet-50 + heads inference, seconds per image, by batch. */
  inferSPerImage: Record<number, number>;
  /** One HE2Gene-Base training step (forward, backward, clip, Adam), seconds per step, by batch. */
  trainSPerStep: Record<number, number>;
  /** Wall time of the whole peer run, seconds. */
  wallS: number;
}

interface PeerRow {
  what: string;
  batch: number | null;
  seconds?: number;
  gflops?: number;
  s_per_image?: number;
  error?: string;
}

/**
 * Run bench/peer_torch.py on the CPU; null (after a line through `log` saying why) when it can't run.
 * Batches of 0 length skip that part; the script always times matmul 1024³ (~0.1 s).
 */
export async function runTorchCpu(opts: {
  inferBatches: number[];
  trainBatches: number[];
  reps: number;
  log: (s: string) => void;
  python?: string;
}): Promise<TorchCpu | null> {
  const script = new URL("./peer_torch.py", import.meta.url).pathname;
  const threads = navigator.hardwareConcurrency;
  const t0 = performance.now();
  let out: Deno.CommandOutput;
  try {
    out = await new Deno.Command(opts.python ?? "/usr/bin/python3", {
      args: [
        script,
        "--device",
        "cpu",
        "--threads",
        String(threads),
        "--reps",
        String(opts.reps),
        "--batches",
        opts.inferBatches.join(","),
        "--train-batches",
        opts.trainBatches.join(","),
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
  } catch (err) {
    opts.log(`  PyTorch (CPU) peer not run: ${(err as Error).message}`);
    return null;
  }
  const wallS = (performance.now() - t0) / 1000;
  const text = new TextDecoder().decode(out.stdout);
  const json = text.split("\n").find((l) => l.startsWith("json: "));
  if (!out.success || !json) {
    const why = new TextDecoder().decode(out.stderr).trim().split("\n").at(-1) || `exit code ${out.code}`;
    opts.log(`  PyTorch (CPU) peer failed: ${why}`);
    return null;
  }
  const parsed = JSON.parse(json.slice("json: ".length)) as { torch: string; rows: PeerRow[] };
  const r: TorchCpu = { torch: parsed.torch, threads, inferSPerImage: {}, trainSPerStep: {}, wallS };
  for (const row of parsed.rows) {
    if (row.error !== undefined) {
      opts.log(`  PyTorch (CPU) ${row.what}, batch ${row.batch}: ${row.error}`);
    } else if (row.what.startsWith("matmul")) {
      r.matmulGflops = row.gflops;
    } else if (row.what.includes("inference") && row.batch !== null && row.s_per_image !== undefined) {
      r.inferSPerImage[row.batch] = row.s_per_image;
    } else if (row.what.includes("training") && row.batch !== null && row.seconds !== undefined) {
      r.trainSPerStep[row.batch] = row.seconds;
    }
  }
  return r;
}

/** Speed ratio ours ÷ PyTorch as "n.nn×" (> 1: he2gene is faster), or "–"; `time`: the figures are times. */
function speed(ours: number | undefined, peer: number | undefined, time: boolean): string {
  if (ours === undefined || peer === undefined || !(peer > 0) || !(ours > 0)) return "–";
  return `${(time ? peer / ours : ours / peer).toFixed(2)}×`;
}

/**
 * The table: each figure of PyTorch next to ours from the same run (the better of default and tuned where
 * both were timed).
 */
export function printTorchCpuTable(
  p: TorchCpu,
  ours: {
    matmulGflops?: number;
    inferSPerImage: Record<number, number>;
    trainSPerStep: Record<number, number>;
  },
  log: (s: string) => void,
): void {
  log(
    `\nPyTorch ${p.torch} on this machine's CPU (${p.threads} threads, float32), same run ` +
      `(${p.wallS.toFixed(0)} s):`,
  );
  const lines: string[][] = [["work", "PyTorch", "ours", "ours/PyTorch"]];
  if (p.matmulGflops !== undefined) {
    lines.push([
      "matmul 1024³, GFLOP/s",
      p.matmulGflops.toFixed(1),
      ours.matmulGflops?.toFixed(1) ?? "–",
      speed(ours.matmulGflops, p.matmulGflops, false),
    ]);
  }
  for (const [b, s] of Object.entries(p.inferSPerImage)) {
    const o = ours.inferSPerImage[Number(b)];
    lines.push([`inference batch ${b}, s/image`, s.toFixed(3), o?.toFixed(3) ?? "–", speed(o, s, true)]);
  }
  for (const [b, s] of Object.entries(p.trainSPerStep)) {
    const o = ours.trainSPerStep[Number(b)];
    lines.push([`training step batch ${b}, s/step`, s.toFixed(3), o?.toFixed(3) ?? "–", speed(o, s, true)]);
  }
  const w = lines[0].map((_, i) => Math.max(...lines.map((l) => l[i].length)));
  for (const [i, l] of lines.entries()) {
    log("  " + l.map((c, j) => (j === 0 ? c.padEnd(w[j]) : c.padStart(w[j]))).join("  "));
    if (i === 0) log("  " + w.map((n) => "-".repeat(n)).join("  "));
  }
  log("  ours/PyTorch: speed ratio (> 1 means he2gene is faster); ours: the better of default and tuned.");
}
