/**
 * Bad inputs of `he2gene train` (issue 12, items 6, 9, 10, 11, 12): option checks before any data is read,
 * gene lists that leave no target or auxiliary genes, duplicate genes / spots / barcodes, broken HDF5
 * matrices, the `--out` lock, a fresh run over a previous one, and Ctrl-C (exit 130, resumable).
 *
 * Datasets are made in each test: a 6 × 6-spot synthetic Visium folder (PNG slide, Matrix Market counts),
 * a her2st folder and an HBCIS folder of a few lines.
 */
import { join } from "node:path";
import { gzipSync } from "node:zlib";
import { encodePng } from "../../slide/png.ts";
import { syntheticSection } from "../../slide/synthetic.ts";
import { readSafetensors } from "../../weights/mod.ts";
import { hostName, LOCK_TIMING, lockRunFolder } from "../../cli/train.ts";
import { assertEquals, assertRejects } from "../helpers.ts";
import { expectRefused, runCli, spawnCli, tempDir } from "./harness.ts";

/** Gene names of the synthetic Visium folder. */
const GENES = ["G0", "G1", "G2", "G3", "G4", "G5"];

/**
 * A Space Ranger-like folder: tissue_positions_list.csv, scalefactors_json.json, tissue_lowres_image.png
 * and filtered_feature_bc_matrix/ (Matrix Market) for a 6 × 6 synthetic section.
 */
async function tinyVisium(
  dir: string,
  o: { genes?: string[]; ids?: string[]; barcodes?: (bcs: string[]) => string[]; positions?: string[] } = {},
): Promise<string> {
  const sec = syntheticSection({ rows: 6, cols: 6, spacing: 24, genes: GENES.length, seed: 5 });
  await Deno.mkdir(join(dir, "filtered_feature_bc_matrix"), { recursive: true });
  const bcs = sec.spots.map((_, i) => `BC${String(i).padStart(3, "0")}-1`);
  await Deno.writeTextFile(
    join(dir, "tissue_positions_list.csv"),
    (o.positions ??
      sec.spots.map((s, i) => `${bcs[i]},1,${s.array[1]},${s.array[0]},${s.pixel[1]},${s.pixel[0]}`))
      .join("\n") + "\n",
  );
  await Deno.writeTextFile(
    join(dir, "scalefactors_json.json"),
    JSON.stringify({ spot_diameter_fullres: 20, tissue_lowres_scalef: 1, tissue_hires_scalef: 1 }),
  );
  await Deno.writeFile(
    join(dir, "tissue_lowres_image.png"),
    encodePng(sec.image.width, sec.image.height, sec.image.data),
  );
  const G = GENES.length, entries: string[] = [];
  sec.spots.forEach((_, b) => {
    for (let g = 0; g < G; g++) {
      if (sec.counts[b * G + g]) entries.push(`${g + 1} ${b + 1} ${sec.counts[b * G + g]}`);
    }
  });
  const mex = join(dir, "filtered_feature_bc_matrix");
  await Deno.writeTextFile(
    join(mex, "matrix.mtx"),
    `%%MatrixMarket matrix coordinate integer general\n${G} ${bcs.length} ${entries.length}\n${
      entries.join("\n")
    }\n`,
  );
  await Deno.writeTextFile(join(mex, "barcodes.tsv"), (o.barcodes?.(bcs) ?? bcs).join("\n") + "\n");
  const genes = o.genes ?? GENES, ids = o.ids ?? genes.map((_, j) => `ENSG${j}`);
  await Deno.writeTextFile(
    join(mex, "features.tsv"),
    genes.map((g, j) => `${ids[j]}\t${g}\tGene Expression`).join("\n") + "\n",
  );
  return dir;
}

/** Tiny training options: TINY backbone, 32 px images, batches of 8. */
const TINY = [
  "--dataset",
  "visium",
  "--backbone",
  "tiny",
  "--image-size",
  "32",
  "--crop-size",
  "24",
  "--batch-size",
  "8",
  "--n-target",
  "2",
  "--lr",
  "1e-3",
];

// ---------------------------------------------------------------------------------------------------------
// Item 9: every numeric option is checked before anything is read.

Deno.test("train refuses every bad number (batch size, epochs, lr, image size, weights, seed …) at once, exit 2", async () => {
  const dir = await tempDir("train-numbers");
  try {
    // The root does not exist: reaching the data would give exit 1, not 2.
    const base = [
      "train",
      "--dataset",
      "visium",
      "--root",
      join(dir, "no-such-root"),
      "--out",
      join(dir, "run"),
    ];
    const cases: [string, string][] = [
      ["--batch-size", "0"],
      ["--batch-size", "-1"],
      ["--batch-size", "2.5"],
      ["--batch-size", "many"],
      ["--epochs", "0"],
      ["--lr", "-1"],
      ["--lr", "0"],
      ["--image-size", "0"],
      ["--image-size", "16"],
      ["--weight-decay", "-1"],
      ["--step-size", "0"],
      ["--gamma", "0"],
      ["--clip", "0"],
      ["--patience", "0"],
      ["--aux", "-1"],
      ["--tmr", "-0.5"],
      ["--spat", "-1"],
      ["--n-target", "0"],
      ["--crop-size", "0"],
      ["--seed", "-1"],
      ["--seed", "1.5"],
      ["--epochs", ""],
      ["--lr", "NaN"],
    ];
    for (const [flag, value] of cases) {
      const t0 = performance.now();
      await expectRefused({
        args: [...base, `${flag}=${value}`], // "--lr -1" is refused by the parser itself (ambiguous)
        code: 2,
        names: [flag, `current value is ${value}`],
        watch: dir,
        not: ["expected a Visium folder"],
      });
      const ms = performance.now() - t0;
      if (ms > 500) {
        throw new Error(`${flag} ${value} took ${ms.toFixed(0)} ms: the check came after some work`);
      }
    }
    // --resume and --force contradict each other.
    await expectRefused({
      args: [...base, "--resume", "--force"],
      code: 2,
      names: ["--resume", "--force"],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Item 10: no target or no auxiliary genes is an error naming the cause, before training.

Deno.test("train refuses gene choices that leave no target or no auxiliary genes, naming the cause", async () => {
  const dir = await tempDir("train-genes");
  try {
    const root = await tinyVisium(join(dir, "V1"));
    const out = join(dir, "run");
    const args = (
      ...more: string[]
    ) => ["train", ...TINY, "--root", root, "--out", out, "--epochs", "1", ...more];
    const empty = join(dir, "empty.txt"), absent = join(dir, "absent.txt"), all = join(dir, "all.txt");
    const dup = join(dir, "dup.txt");
    await Deno.writeTextFile(empty, "\n\n");
    await Deno.writeTextFile(absent, "NOPE1\nNOPE2\n");
    await Deno.writeTextFile(all, GENES.join("\n") + "\n");
    await Deno.writeTextFile(dup, "G1\nG2\nG1\n");
    const not = ["NaN", "loss became"];
    await expectRefused({
      args: args("--target-genes", empty),
      code: 1,
      names: [empty, "no genes"],
      watch: dir,
      not,
    });
    await expectRefused({
      args: args("--target-genes", absent),
      code: 1,
      names: [absent, "none of the 2 genes", "NOPE1"],
      watch: dir,
      not,
    });
    await expectRefused({
      args: args("--target-genes", all),
      code: 1,
      names: [all, "no auxiliary genes"],
      watch: dir,
      not,
    });
    await expectRefused({
      args: args("--target-genes", dup),
      code: 1,
      names: [dup, "G1 (lines 1, 3)"],
      watch: dir,
      not,
    });
    await expectRefused({
      args: args("--target-genes", join(dir, "missing.txt")),
      code: 1,
      names: [join(dir, "missing.txt"), "no such file"],
      watch: dir,
    });
    for (const n of ["6", "100"]) {
      await expectRefused({
        args: [...args(), "--n-target", n],
        code: 1,
        names: [`--n-target ${n}`, "6 genes", "no auxiliary genes"],
        watch: dir,
        not,
      });
    }
    await expectRefused({ args: [...args(), "--n-target", "0"], code: 2, names: ["--n-target"], watch: dir });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Item 11: duplicates in the data are refused, naming the file and the duplicates.

Deno.test("train refuses duplicate barcodes, feature ids, spot rows and gene columns, naming file and duplicates", async () => {
  const dir = await tempDir("train-dups");
  try {
    const run = (root: string, dataset = "visium") => [
      "train",
      ...TINY,
      "--dataset",
      dataset,
      "--root",
      root,
      "--out",
      join(dir, "run"),
    ];
    // Visium: a barcode twice in barcodes.tsv (two count rows for one spot).
    const a = await tinyVisium(join(dir, "A"), { barcodes: (b) => [...b.slice(0, 35), b[3]] });
    await expectRefused({
      args: run(a),
      code: 1,
      names: [join(a, "filtered_feature_bc_matrix", "barcodes.tsv"), "BC003-1 (entries 4, 36)"],
      watch: dir,
    });
    // Visium: one feature id twice (two count columns for one feature).
    const b = await tinyVisium(join(dir, "B"), { ids: ["E0", "E1", "E2", "E1", "E4", "E5"] });
    await expectRefused({
      args: run(b),
      code: 1,
      names: [join(b, "filtered_feature_bc_matrix", "features.tsv"), "E1 (entries 2, 4)"],
      watch: dir,
    });
    // Visium: a barcode twice in tissue_positions_list.csv.
    const c = join(dir, "C");
    await tinyVisium(c);
    const pos = (await Deno.readTextFile(join(c, "tissue_positions_list.csv"))).trim().split("\n");
    await Deno.writeTextFile(join(c, "tissue_positions_list.csv"), [...pos, pos[0]].join("\n") + "\n");
    await expectRefused({
      args: run(c),
      code: 1,
      names: [join(c, "tissue_positions_list.csv"), "BC000-1 (lines 1, 37)"],
      watch: dir,
    });
    // her2st: a gene column twice, a spot row twice.
    const h = join(dir, "her2st");
    const cnts = join(h, "data", "ST-cnts", "X1.tsv.gz");
    await Deno.mkdir(join(h, "data", "ST-cnts"), { recursive: true });
    await Deno.mkdir(join(h, "data", "ST-spotfiles"), { recursive: true });
    await Deno.mkdir(join(h, "data", "ST-imgs", "X", "X1"), { recursive: true });
    await Deno.writeFile(
      join(h, "data", "ST-imgs", "X", "X1", "x.jpg"),
      new Uint8Array([0xff, 0xd8, 0xff, 0xd9]),
    );
    await Deno.writeTextFile(
      join(h, "data", "ST-spotfiles", "X1_selection.tsv"),
      "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n1\t1\t1\t1\t50\t50\t1\n2\t1\t2\t1\t90\t50\t1\n",
    );
    const gz = (s: string) => gzipSync(new TextEncoder().encode(s));
    await Deno.writeFile(cnts, gz("\tA\tB\tA\n1x1\t1\t2\t3\n2x1\t0\t3\t1\n"));
    await expectRefused({ args: run(h, "her2st"), code: 1, names: [cnts, "A (columns 2, 4)"], watch: dir });
    await Deno.writeFile(cnts, gz("\tA\tB\n1x1\t1\t2\n2x1\t0\t3\n1x1\t4\t4\n"));
    await expectRefused({ args: run(h, "her2st"), code: 1, names: [cnts, "1x1 (lines 2, 4)"], watch: dir });
    // HBCIS: a gene twice in all_genes.txt (two count columns with one name).
    const hb = join(dir, "hbcis");
    await Deno.mkdir(join(hb, "HER2", "P1"), { recursive: true });
    await Deno.writeTextFile(join(hb, "all_genes.txt"), "G1\nG2\nG1\n");
    await expectRefused({
      args: run(hb, "hbcis"),
      code: 1,
      names: [join(hb, "all_genes.txt"), "G1 (line 1, line 3)"],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Item 12 (part): an empty, truncated or foreign HDF5 matrix names its real cause.

Deno.test("train names an empty, truncated or non-HDF5 filtered_feature_bc_matrix.h5 as such, not a missing dataset", async () => {
  const dir = await tempDir("train-h5");
  try {
    const root = await tinyVisium(join(dir, "V1"));
    await Deno.remove(join(root, "filtered_feature_bc_matrix"), { recursive: true });
    const h5 = join(root, "filtered_feature_bc_matrix.h5");
    // A version-0 superblock (HDF5 spec): signature, versions, sizes of offsets / lengths = 8, base address
    // 0, no free-space info, end-of-file address 4096 — but only 96 bytes are there.
    const cut = new Uint8Array(96);
    cut.set([0x89, 0x48, 0x44, 0x46, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 0, 0, 8, 8, 0, 4, 0, 16, 0]);
    const dv = new DataView(cut.buffer);
    dv.setBigUint64(32, 0xffffffffffffffffn, true);
    dv.setBigUint64(40, 4096n, true);
    const cases: [Uint8Array, string][] = [
      [new Uint8Array(0), "empty file (0 bytes)"],
      [cut, "expected 4096 bytes"],
      [new TextEncoder().encode("barcode,count\nAAA-1,3\n"), "not an HDF5 file"],
    ];
    for (const [bytes, cause] of cases) {
      await Deno.writeFile(h5, bytes);
      await expectRefused({
        args: ["train", ...TINY, "--root", root, "--out", join(dir, "run")],
        code: 1,
        names: [h5, cause],
        watch: dir,
        not: ["expected the HDF5 dataset", "HDF5-DIAG"],
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Item 6: the --out lock, and a fresh run over a previous one.

/** What a lock of run `pid` on `host` holds. */
function lockOf(pid: number, host = hostName()): string {
  return JSON.stringify({ pid, host, started: "2026-01-02T03:04:05.000Z" });
}

Deno.test(
  "train into a locked --out exits 1 naming the run; a stale run's lock is taken over; another host's is refused",
  async () => {
    const dir = await tempDir("train-lock");
    try {
      const out = join(dir, "run");
      await Deno.mkdir(out);
      const lock = join(out, ".lock");
      const args = ["train", ...TINY, "--root", join(dir, "no-such-root"), "--out", out];
      // A live run: its lock was touched just now.
      await Deno.writeTextFile(lock, lockOf(4242));
      await expectRefused({
        args,
        code: 1,
        names: [out, "pid 4242", "started 2026-01-02T03:04:05.000Z", "another train run is using it"],
        watch: dir,
      });
      // Another host: cannot be checked, refused with the advice to delete the lock, however old.
      await Deno.writeTextFile(lock, lockOf(4242, "elsewhere.example"));
      const old = new Date(Date.now() - 3600_000);
      await Deno.utime(lock, old, old);
      await expectRefused({ args, code: 1, names: ["elsewhere.example", `delete ${lock}`], watch: dir });
      // A run that is gone (killed: its lock untouched for longer than the stale time) is taken over with a
      // warning, and released when this run fails on the (missing) data.
      await Deno.writeTextFile(lock, lockOf(4243));
      const stale = new Date(Date.now() - LOCK_TIMING.staleMs - 5000);
      await Deno.utime(lock, stale, stale);
      const r = await runCli(args);
      assertEquals(r.code, 1, r.stderr);
      for (const n of ["took over the lock", "pid 4243", "expected a Visium folder"]) {
        assertEquals(r.stderr.includes(n), true, `"${n}" in ${r.stderr}`);
      }
      assertEquals(await Array.fromAsync(Deno.readDir(out)), [], "the lock was released");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
);

Deno.test("a held run lock is touched while its run lives, so a second run never takes it over", async () => {
  const dir = await tempDir("train-heartbeat");
  try {
    const timing = { heartbeatMs: 40, staleMs: 400 };
    // A lock held for three stale periods stays fresh.
    const hold = await lockRunFolder(dir, () => {}, timing);
    const lock = join(dir, ".lock");
    const t0 = (await Deno.stat(lock)).mtime!.getTime();
    await new Promise((r) => setTimeout(r, 3 * timing.staleMs));
    const t1 = (await Deno.stat(lock)).mtime!.getTime();
    assertEquals(t1 > t0, true, "the heartbeat touched the lock");
    await assertRejects(() => lockRunFolder(dir, () => {}, timing), Error, "another train run is using it");
    hold();
    assertEquals(await Array.fromAsync(Deno.readDir(dir)), [], "released");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a fresh train run into a folder holding a previous run is refused without --force; --resume needs a checkpoint", async () => {
  const dir = await tempDir("train-previous");
  try {
    const out = join(dir, "run");
    await Deno.mkdir(out);
    await Deno.writeTextFile(join(out, "log.jsonl"), '{"epoch":1}\n');
    const args = ["train", ...TINY, "--root", join(dir, "no-such-root"), "--out", out];
    await expectRefused({ args, code: 1, names: [out, "log.jsonl", "--resume", "--force"], watch: dir });
    await expectRefused({
      args: [...args, "--resume"],
      code: 1,
      names: [out, "no checkpoint.safetensors"],
      watch: dir,
    });
    // A missing --init is named before any data is read.
    await expectRefused({
      args: [...args, "--init", join(dir, "nope.pt")],
      code: 1,
      names: ["--init", join(dir, "nope.pt"), "no such file"],
      watch: dir,
    });
    // An empty log (a run that failed at once) is no previous run; a missing --out is not left behind.
    await Deno.writeTextFile(join(out, "log.jsonl"), "");
    await expectRefused({ args, code: 1, names: ["expected a Visium folder"], watch: dir });
    await expectRefused({
      args: ["train", ...TINY, "--root", join(dir, "no-such-root"), "--out", join(dir, "new", "run")],
      code: 1,
      names: ["expected a Visium folder"],
      watch: dir,
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------------------
// Items 6 and 12: a second run while one trains; Ctrl-C gives exit 130 and a resumable checkpoint.

/** Collect a stream's text; `seen(re)` resolves once the text so far matches. */
function collect(stream: ReadableStream<Uint8Array>) {
  let text = "";
  const waiters: { re: RegExp; resolve: () => void }[] = [];
  const done = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of stream) {
      text += dec.decode(chunk, { stream: true });
      for (const w of waiters.filter((w) => w.re.test(text))) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
    return text;
  })();
  return {
    done,
    text: () => text,
    seen: (re: RegExp) =>
      re.test(text) ? Promise.resolve() : new Promise<void>((resolve) => waiters.push({ re, resolve })),
  };
}

Deno.test({
  name:
    "while a run trains, a second run into its --out exits 1 naming it; Ctrl-C saves, exits 130, and --resume finishes",
  ignore: Deno.build.os === "windows",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await tempDir("train-sigint");
    let child: Deno.ChildProcess | undefined, exited = false;
    try {
      const root = await tinyVisium(join(dir, "V1"));
      const out = join(dir, "run");
      const args = ["train", ...TINY, "--root", root, "--out", out, "--seed", "1"];
      child = spawnCli([...args, "--epochs", "30"]).spawn();
      child.status.then(() => (exited = true));
      const err = collect(child.stderr), stdout = collect(child.stdout);
      let timer: ReturnType<typeof setTimeout> | undefined;
      const ready = await Promise.race([
        err.seen(/epoch 1\/30 \d+\/\d+/).then(() => true),
        child.status.then(() => false),
        new Promise<boolean>((r) => (timer = setTimeout(() => r(false), 300_000))),
      ]);
      clearTimeout(timer);
      if (!ready) {
        throw new Error(`the first run did not start training:\n${err.text()}`);
      }
      // A second run into the same folder, while the first trains.
      const second = await runCli([...args, "--epochs", "1"]);
      assertEquals(second.code, 1, second.stderr);
      for (const n of [out, `pid ${child.pid}`, "another train run is using it"]) {
        assertEquals(second.stderr.includes(n), true, `"${n}" in ${second.stderr}`);
      }
      child.kill("SIGINT");
      const status = await child.status;
      const stderr = await err.done;
      await stdout.done;
      assertEquals(status.code, 130, stderr);
      assertEquals(
        /Interrupted: training stopped (at epoch \d+, step \d+|after epoch \d+)/.test(stderr),
        true,
        stderr,
      );
      const names = (await Array.fromAsync(Deno.readDir(out))).map((e) => e.name).sort();
      assertEquals(names.includes(".lock"), false, `the lock is gone: ${names}`);
      const ck = await readSafetensors(join(out, "checkpoint.safetensors"));
      const progress = JSON.parse(ck.metadata.progress);
      assertEquals(progress.step > 0 || progress.epoch > 0, true, ck.metadata.progress);
      // Resumable: --resume finishes the run (here at the end of the interrupted epoch).
      const resumed = await runCli([...args, "--resume", "--epochs", String(progress.epoch + 1), "--quiet"]);
      assertEquals(resumed.code, 0, resumed.stderr);
      const log = (await Deno.readTextFile(join(out, "log.jsonl"))).trim().split("\n").map((l) =>
        JSON.parse(l)
      );
      assertEquals(log.map((l) => l.epoch), [...Array(progress.epoch + 1).keys()].map((k) => k + 1));
      await Deno.stat(join(out, "val_predictions.npz"));
      // --force replaces the finished run: a fresh log of one epoch.
      const forced = await runCli([...args, "--force", "--epochs", "1", "--quiet"]);
      assertEquals(forced.code, 0, forced.stderr);
      assertEquals(forced.stderr.includes("--force: removed the previous run's"), false, "quiet");
      assertEquals((await Deno.readTextFile(join(out, "log.jsonl"))).trim().split("\n").length, 1);
    } finally {
      if (child && !exited) {
        child.kill("SIGKILL"); // a failed assertion must not leave a training process behind
        await child.status;
      }
      await Deno.remove(dir, { recursive: true });
    }
  },
});
