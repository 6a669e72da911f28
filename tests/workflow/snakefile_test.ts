/**
 * workflow/Snakefile, run for real by `snakemake` (skipped with a message when it is not installed): three
 * samples from ../shared/data (two her2st sections at 10 of their spots, the small SVS tiled) with a tiny
 * checkpoint — the per-sample outputs equal `predict-slide` run by hand, the cohort files hold every spot, a
 * rerun has nothing to do, a run killed by SIGTERM and then SIGKILL of its process group resumes to the same
 * outputs, a broken slide fails only its own job, the SLURM profile submits GPU jobs with `--gres=gpu:1`;
 * and the `cv` target over three her2st sections (tiny backbone, one epoch, 64 px patches).
 */
import { join } from "node:path";
import { readNpz } from "../../slide/npy.ts";
import { assertEquals, sharedData, tinyCheckpoint } from "../helpers.ts";

const ROOT = new URL("../../", import.meta.url).pathname.replace(/\/$/, "");
const SNAKEFILE = join(ROOT, "workflow/Snakefile");
const PYTHON = "/usr/bin/python3";
const dec = new TextDecoder();

async function run(
  cmd: string,
  args: string[],
  o: { cwd?: string; env?: Record<string, string> } = {},
): Promise<{ code: number; out: string }> {
  try {
    const r = await new Deno.Command(cmd, { args, cwd: o.cwd, env: o.env, stdout: "piped", stderr: "piped" })
      .output();
    return { code: r.code, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
  } catch (e) {
    return { code: -1, out: (e as Error).message };
  }
}

const snakemakeVersion = await run("snakemake", ["--version"]);
const haveSnakemake = snakemakeVersion.code === 0;
if (!haveSnakemake) {
  console.warn("skipped: the workflow tests need snakemake (apt-get install -y snakemake)");
}
const her2st = sharedData("her2st/data");
const cmu = sharedData("wsi/CMU-1-Small-Region.svs");
const hvg = sharedData("her2st/her_hvg_cut_1000.npy");
const anndataOk = (await run(PYTHON, ["-c", "import anndata"])).code === 0;
if (!anndataOk) console.warn(`skipped: the cohort.h5ad checks need ${PYTHON} with anndata`);
const ready = haveSnakemake && her2st !== null && cmu !== null;

const quote = (s: string) => /^[\w@%+=:,./-]+$/.test(s) ? s : `'${s.replaceAll("'", `'\\''`)}'`;
/** The he2gene command the workflow runs: this Deno (CI may not have `deno` on PATH) on this repository. */
const HE2GENE = `${quote(Deno.execPath())} task -q --config ${quote(join(ROOT, "deno.json"))} he2gene`;

const SAMPLES = ["C2", "C3", "CMU1"] as const;
const MODE = { C2: "spots", C3: "spots", CMU1: "tiles" } as const;

/** 10 selected spots of a her2st section (every 18th line of its spot file) and the section's image. */
async function spotSubset(dir: string, section: string): Promise<{ slide: string; spots: string }> {
  const img = join(her2st!, "ST-imgs/C", section);
  const jpg = [...Deno.readDirSync(img)].find((f) => f.name.endsWith(".jpg"))!.name;
  const lines = (await Deno.readTextFile(join(her2st!, `ST-spotfiles/${section}_selection.tsv`))).trim()
    .split("\n");
  const spots = join(dir, `${section}_sub.tsv`);
  await Deno.writeTextFile(
    spots,
    [lines[0], ...lines.slice(1).filter((_, i) => (i + 1) % 18 === 0)].join("\n"),
  );
  return { slide: join(img, jpg), spots };
}

/** The inputs shared by the tests: checkpoint, sample sheet, and one complete run of the workflow. */
interface Fixture {
  dir: string;
  weights: string;
  sheet: string;
  samples: Record<string, { slide: string; spots: string | null }>;
  /** The --config entries of a prediction run (outdir apart). */
  config: string[];
  /** The first complete run's working directory and outdir. */
  workdir: string;
  out: string;
  log: string;
}

let fixture: Promise<Fixture> | null = null;
/** Temporary folders, removed when the file's tests are done (the tests share the fixture's). */
const made: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const f of made) {
    try {
      Deno.removeSync(f, { recursive: true });
    } catch { /* gone */ }
  }
});

function snakemake(workdir: string, args: string[], env?: Record<string, string>) {
  return run("snakemake", ["-s", SNAKEFILE, ...args], { cwd: workdir, env });
}

function getFixture(): Promise<Fixture> {
  return fixture ??= (async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-workflow-" });
    made.push(dir);
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const c2 = await spotSubset(dir, "C2"), c3 = await spotSubset(dir, "C3");
    const samples = {
      C2: { slide: c2.slide, spots: c2.spots },
      C3: { slide: c3.slide, spots: c3.spots },
      CMU1: { slide: cmu!, spots: null },
    };
    const sheet = join(dir, "samples.tsv");
    await Deno.writeTextFile(
      sheet,
      "sample\tslide\tspots\n" +
        Object.entries(samples).map(([s, v]) => `${s}\t${v.slide}\t${v.spots ?? ""}`).join("\n") + "\n",
    );
    const config = [
      `samples=${sheet}`,
      `weights=${weights}`,
      "tta=single",
      "tune=off",
      "crop_size=64",
      "tile_px=400",
      `he2gene=${HE2GENE}`,
    ];
    const workdir = join(dir, "run");
    await Deno.mkdir(workdir);
    const out = join(workdir, "results");
    // The local profile (gpu=1, keep-going, rerun-incomplete), two cores.
    const r = await snakemake(workdir, [
      "--profile",
      join(ROOT, "workflow/profiles/local"),
      "--cores",
      "2",
      "--config",
      ...config,
      "outdir=results",
    ]);
    if (r.code !== 0) throw new Error(`the workflow failed (exit ${r.code}):\n${r.out}`);
    return { dir, weights, sheet, samples, config, workdir, out, log: r.out };
  })();
}

function wfTest(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ignore: !ready, sanitizeOps: false, sanitizeResources: false, fn });
}

const PER_SAMPLE = [
  "predictions.npz",
  "predictions.h5ad",
  "predictions_aux.h5ad",
  "target_count_pred.csv",
  "tumor_pred.csv",
  "gene_map.png",
  "predict.log",
];

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/** Every array of two npz files equal, value for value. */
async function assertSameNpz(a: string, b: string): Promise<void> {
  const [x, y] = [await readNpz(a), await readNpz(b)];
  assertEquals(Object.keys(x).sort(), Object.keys(y).sort(), `${a} vs ${b}`);
  for (const k of Object.keys(x)) {
    assertEquals(x[k].shape, y[k].shape, `${a}: ${k}`);
    assertEquals(Array.from(x[k].data as ArrayLike<unknown>), Array.from(y[k].data as ArrayLike<unknown>), k);
  }
}

/** summary.tsv without its `seconds` column (wall-clock times differ between runs). */
async function summaryWithoutSeconds(path: string): Promise<string[][]> {
  const rows = (await Deno.readTextFile(path)).trim().split("\n").map((l) => l.split("\t"));
  const s = rows[0].indexOf("seconds");
  return rows.map((r) => r.filter((_, i) => i !== s));
}

wfTest("the workflow predicts each sample exactly as predict-slide run by hand does", async () => {
  const f = await getFixture();
  for (const s of SAMPLES) {
    const dir = join(f.out, s);
    for (const name of PER_SAMPLE) assertEquals(await exists(join(dir, name)), true, `${s}/${name}`);
    // The aux CSV at spots only (19 699 columns a tile is what --no-aux-csv avoids).
    assertEquals(
      await exists(join(dir, "aux_count_pred.csv")),
      MODE[s] === "spots",
      `${s}/aux_count_pred.csv`,
    );
    const png = await Deno.readFile(join(dir, "gene_map.png"));
    assertEquals(Array.from(png.subarray(0, 4)), [0x89, 0x50, 0x4e, 0x47], `${s}/gene_map.png is a PNG`);
    // The same command by hand.
    const v = f.samples[s];
    const byHand = join(f.dir, "by-hand", s);
    const where = v.spots
      ? ["--spots", v.spots, "--crop-size", "64"]
      : ["--tile", "--tile-px", "400", "--no-aux-csv"];
    const r = await run(Deno.execPath(), [
      "task",
      "-q",
      "--config",
      join(ROOT, "deno.json"),
      "he2gene",
      "predict-slide",
      v.slide,
      ...where,
      "--weights",
      f.weights,
      "--tta",
      "single",
      "--tune",
      "off",
      "--h5ad",
      "--out",
      byHand,
    ]);
    assertEquals(r.code, 0, r.out);
    await assertSameNpz(join(dir, "predictions.npz"), join(byHand, "predictions.npz"));
    for (const csv of ["target_count_pred.csv", "tumor_pred.csv"]) {
      assertEquals(await Deno.readTextFile(join(dir, csv)), await Deno.readTextFile(join(byHand, csv)), csv);
    }
  }
});

wfTest(
  "the cohort summary, AnnData and report cover every sample, and a rerun has nothing to do",
  async () => {
    const f = await getFixture();
    const npz = Object.fromEntries(
      await Promise.all(
        SAMPLES.map(async (s) => [s, await readNpz(join(f.out, s, "predictions.npz"))] as const),
      ),
    );
    // summary.tsv: one row per sample; the figures are those of the sample's predictions.
    const rows = (await Deno.readTextFile(join(f.out, "cohort/summary.tsv"))).trim().split("\n")
      .map((l) => l.split("\t"));
    assertEquals(rows[0], [
      "sample",
      "slide",
      "mode",
      "n",
      "tumor_fraction",
      "mean_FASN",
      "mean_ERBB2",
      "seconds",
    ]);
    assertEquals(rows.slice(1).map((r) => r[0]), [...SAMPLES]);
    for (const r of rows.slice(1)) {
      const s = r[0] as (typeof SAMPLES)[number], z = npz[s];
      const P = z.names.shape[0];
      assertEquals([r[1], r[2], r[3]], [f.samples[s].slide, MODE[s], String(P)]);
      const prob = z.tumor_prob.data as Float32Array;
      const close = (got: string, want: number, what: string) => {
        if (!(Math.abs(Number(got) - want) <= 1e-5 * Math.max(1, Math.abs(want)))) {
          throw new Error(`${s} ${what}: summary has ${got}, the predictions give ${want}`);
        }
      };
      close(r[4], prob.filter((p) => p > 0.5).length / P, "tumor_fraction");
      const target = z.target.data as Float32Array, G = z.target.shape[1];
      ["FASN", "ERBB2"].forEach((g, k) => {
        const j = (z.target_genes.data as string[]).indexOf(g);
        let sum = 0;
        for (let i = 0; i < P; i++) sum += target[i * G + j];
        close(r[5 + k], sum / P, `mean_${g}`);
      });
      if (!(Number(r[7]) > 0)) throw new Error(`${s}: seconds ${r[7]}`);
    }
    // report.html: every sample and its gene map (linked beside the report).
    const html = await Deno.readTextFile(join(f.out, "cohort/report.html"));
    for (const s of SAMPLES) {
      assertEquals(
        html.includes(`src="../${s}/gene_map.png"`),
        true,
        `report shows ${s}`,
      );
    }
    // cohort.h5ad: all spots and tiles, obs['sample'], obsm['spatial'] (target genes only by default).
    if (anndataOk) {
      const py = await run(PYTHON, [
        "-c",
        `import anndata, numpy as np\n` +
        `a = anndata.read_h5ad(${JSON.stringify(join(f.out, "cohort/cohort.h5ad"))})\n` +
        `zs = [np.load(${JSON.stringify(f.out)} + "/" + s + "/predictions.npz") for s in ${
          JSON.stringify(SAMPLES)
        }]\n` +
        `assert list(a.var_names) == list(zs[0]["target_genes"]), list(a.var_names)\n` +
        `assert np.array_equal(a.X, np.concatenate([z["target"] for z in zs]))\n` +
        `assert np.array_equal(a.obsm["spatial"], np.concatenate([z["pixel"] for z in zs]))\n` +
        `assert np.array_equal(a.obsm["grid"], np.concatenate([z["grid"] for z in zs]))\n` +
        `assert list(a.obs["spot"]) == [str(n) for z in zs for n in z["names"]]\n` +
        `print(a.n_obs, ",".join(f"{s}={n}" for s, n in a.obs["sample"].value_counts(sort=False).items()))`,
      ]);
      const P = SAMPLES.map((s) => npz[s].names.shape[0]);
      assertEquals(py.out.trim(), `${P[0] + P[1] + P[2]} C2=${P[0]},C3=${P[1]},CMU1=${P[2]}`, py.out);
    }
    // Everything done: a dry run has nothing to do.
    const again = await snakemake(f.workdir, [
      "-n",
      "--cores",
      "2",
      "--config",
      ...f.config,
      "outdir=results",
    ]);
    assertEquals(again.code, 0, again.out);
    assertEquals(again.out.includes("Nothing to be done"), true, again.out);
  },
);

/** How long a SIGTERMed workflow may take to stop before its group is SIGKILLed. */
const TERM_GRACE_MS = 60_000;

/**
 * Start the workflow in a process group of its own; kill the group when a sample's predictions appear.
 * Snakemake 7.21 sometimes deadlocks in its SIGTERM handler (every thread in a futex wait, no children
 * left, for minutes): a group that has not stopped `TERM_GRACE_MS` after a SIGTERM is SIGKILLed, and
 * `escalated` says so (its lock then stays, as after a SIGKILL).
 */
async function killWhenPredicted(
  workdir: string,
  args: string[],
  signal: "SIGTERM" | "SIGKILL",
  out: string,
): Promise<{ killedAfter: string; escalated: boolean }> {
  const before = new Set<string>();
  for (const s of SAMPLES) if (await exists(join(out, s, "predictions.npz"))) before.add(s);
  const child = new Deno.Command("setsid", {
    args: ["snakemake", "-s", SNAKEFILE, ...args],
    cwd: workdir,
    stdout: "null",
    stderr: "null",
  }).spawn();
  let done = false;
  const status = child.status.then((s) => (done = true, s));
  let killedAfter = "";
  while (!done) {
    const now = [];
    for (const s of SAMPLES) if (!before.has(s) && await exists(join(out, s, "predictions.npz"))) now.push(s);
    if (now.length) {
      Deno.kill(-child.pid, signal); // setsid made the workflow the leader of its own group
      killedAfter = now.join(",");
      break;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  let escalated = false;
  if (killedAfter && signal === "SIGTERM") {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const stopped = await Promise.race([
      status.then(() => true),
      new Promise<boolean>((r) => timer = setTimeout(() => r(false), TERM_GRACE_MS)),
    ]);
    clearTimeout(timer);
    if (!stopped) {
      console.warn(`snakemake did not stop ${TERM_GRACE_MS / 1000} s after SIGTERM: SIGKILL of its group`);
      Deno.kill(-child.pid, "SIGKILL");
      escalated = true;
    }
  }
  const st = await status;
  if (!killedAfter) throw new Error(`the workflow ended (exit ${st.code}) before it could be killed`);
  return { killedAfter, escalated };
}

wfTest(
  "a run killed by SIGTERM, then SIGKILL, of its process group resumes to the same outputs",
  async () => {
    const f = await getFixture();
    const workdir = join(f.dir, "killed");
    await Deno.mkdir(workdir);
    const out = join(workdir, "results");
    const args = ["--cores", "2", "--resources", "gpu=1", "--config", ...f.config, "outdir=results"];
    // SIGTERM once the first sample is predicted: Snakemake stops its running jobs and removes their outputs.
    const term = await killWhenPredicted(workdir, args, "SIGTERM", out);
    if (term.escalated) {
      // Snakemake hung after the SIGTERM and was SIGKILLed: its lock stays, as below.
      const unlock = await snakemake(workdir, ["--unlock", ...args]);
      assertEquals(unlock.code, 0, unlock.out);
    }
    // The rerun is SIGKILLed in turn once another sample is predicted: jobs die mid-write, the lock stays.
    await killWhenPredicted(workdir, ["--rerun-incomplete", ...args], "SIGKILL", out);
    // After a SIGKILL Snakemake's lock remains: --unlock, then the rerun finishes the incomplete jobs.
    const unlock = await snakemake(workdir, ["--unlock", ...args]);
    assertEquals(unlock.code, 0, unlock.out);
    const resumed = await snakemake(workdir, ["--rerun-incomplete", ...args]);
    assertEquals(resumed.code, 0, resumed.out);
    for (const s of SAMPLES) {
      await assertSameNpz(join(out, s, "predictions.npz"), join(f.out, s, "predictions.npz"));
      const left = [...Deno.readDirSync(join(out, s))].map((e) => e.name).filter((n) => n.includes(".tmp-"));
      assertEquals(left, [], `${s}: temporary files left`);
    }
    assertEquals(
      await summaryWithoutSeconds(join(out, "cohort/summary.tsv")),
      await summaryWithoutSeconds(join(f.out, "cohort/summary.tsv")),
    );
    assertEquals(
      await Deno.readFile(join(out, "cohort/cohort.h5ad")),
      await Deno.readFile(join(f.out, "cohort/cohort.h5ad")),
      "cohort.h5ad",
    );
    const idle = await snakemake(workdir, ["-n", ...args]);
    assertEquals(idle.out.includes("Nothing to be done"), true, idle.out);
  },
);

wfTest(
  "a broken slide fails its own job with the CLI's message; with --keep-going the others finish",
  async () => {
    const f = await getFixture();
    const workdir = join(f.dir, "broken");
    await Deno.mkdir(workdir);
    const bad = join(workdir, "broken.svs");
    await Deno.writeTextFile(bad, "not a slide");
    const sheet = join(workdir, "samples.tsv");
    await Deno.writeTextFile(
      sheet,
      `sample\tslide\tspots\nbad\t${bad}\t\nC2\t${f.samples.C2.slide}\t${f.samples.C2.spots}\n`,
    );
    // The configuration from a file this time (JSON is YAML), outdir on the command line.
    const config = Object.fromEntries(
      f.config.map((c) => [c.slice(0, c.indexOf("=")), c.slice(c.indexOf("=") + 1)]),
    );
    const file = join(workdir, "config.yaml");
    await Deno.writeTextFile(file, JSON.stringify({ ...config, samples: sheet }, null, 1));
    const r = await snakemake(workdir, [
      "--cores",
      "2",
      "--keep-going",
      "--configfile",
      file,
      "--config",
      "outdir=results",
    ]);
    assertEquals(r.code !== 0, true, r.out);
    const message = `Cannot open ${bad}`;
    assertEquals(r.out.includes(message), true, r.out);
    assertEquals(r.out.includes("Error in rule predict_tiles"), true, r.out);
    assertEquals((await Deno.readTextFile(join(workdir, "results/bad/predict.log"))).includes(message), true);
    assertEquals(await exists(join(workdir, "results/bad/predictions.npz")), false);
    await assertSameNpz(join(workdir, "results/C2/predictions.npz"), join(f.out, "C2/predictions.npz"));
    assertEquals(await exists(join(workdir, "results/C2/gene_map.png")), true);
  },
);

wfTest("the SLURM profile asks sbatch for --gres=gpu:1 for prediction jobs only", async () => {
  const f = await getFixture();
  const workdir = join(f.dir, "slurm");
  await Deno.mkdir(workdir);
  const profile = join(ROOT, "workflow/profiles/slurm");
  const args = ["--profile", profile, "--config", ...f.config, "outdir=results"];
  // A dry run reads the profile and shows each job's resources.
  const dry = await snakemake(workdir, ["-n", ...args]);
  assertEquals(dry.code, 0, dry.out);
  assertEquals(dry.out.match(/gpu=1, slurm_extra=--gres=gpu:1/g)?.length, 3, dry.out);
  // Stand-ins for sbatch (records its arguments, runs the job script at once) and sacct (its exit status).
  const bin = join(workdir, "bin");
  await Deno.mkdir(bin);
  await Deno.writeTextFile(
    join(bin, "sbatch"),
    `#!/usr/bin/env bash\nd=$(dirname "$0"); n=$(( $(cat "$d/n" 2>/dev/null || echo 100) + 1 )); echo $n > "$d/n"\n` +
      `printf '%s\\n' "$*" >> "$d/calls"; bash "\${@: -1}" > "$d/$n.out" 2>&1; echo $? > "$d/$n.rc"; echo $n\n`,
  );
  await Deno.writeTextFile(
    join(bin, "sacct"),
    `#!/usr/bin/env bash\nrc=$(cat "$(dirname "$0")/$2.rc" 2>/dev/null) || exit 0\n` +
      `[ "$rc" = 0 ] && echo COMPLETED || echo FAILED\n`,
  );
  await Deno.chmod(join(bin, "sbatch"), 0o755);
  await Deno.chmod(join(bin, "sacct"), 0o755);
  // CI=true: Snakemake polls cluster jobs every second instead of every ten.
  const env = { PATH: `${bin}:${Deno.env.get("PATH")}`, CI: "true" };
  const target = "results/CMU1/gene_map.png"; // as Snakemake names it: relative to its working directory
  const r = await snakemake(workdir, [target, ...args], env);
  assertEquals(r.code, 0, r.out);
  assertEquals(await exists(join(workdir, target)), true);
  const calls = (await Deno.readTextFile(join(bin, "calls"))).trim().split("\n");
  assertEquals(calls.length, 2, calls.join("\n"));
  const predict = calls.find((c) => c.includes("--job-name=he2gene.predict_tiles."))!;
  const map = calls.find((c) => c.includes("--job-name=he2gene.gene_map."))!;
  for (const flag of ["--parsable", "--gres=gpu:1", "--cpus-per-task=4", "--mem=8000", "--time=240"]) {
    assertEquals(predict.split(" ").includes(flag), true, `${flag} in ${predict}`);
  }
  assertEquals(map.includes("--gres"), false, map);
  assertEquals(map.split(" ").includes("--cpus-per-task=1"), true, map);
});

Deno.test({
  name: "cv trains one tiny model per held-out section and writes scores.tsv and their mean",
  ignore: !(haveSnakemake && her2st && hvg),
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-workflow-cv-" });
    made.push(dir);
    const sections = ["C2", "C3", "C4"];
    const args = [
      "cv",
      "--cores",
      "2",
      "--resources",
      "gpu=1",
      "--config",
      "outdir=results",
      "cv_dataset=her2st",
      `cv_root=${join(her2st!, "..")}`,
      `cv_sections=${sections.join(",")}`,
      `cv_genes=${hvg}`,
      "cv_train_args=--backbone tiny --epochs 1 --crop-size 64 --image-size 64 --batch-size 32 --lr 1e-3 --n-target 50",
      "tune=off",
      `he2gene=${HE2GENE}`,
    ];
    const r = await snakemake(dir, args);
    assertEquals(r.code, 0, r.out);
    const out = join(dir, "results/cv");
    const read = async (p: string) =>
      (await Deno.readTextFile(p)).trim().split("\n").map((l) => l.split("\t"));
    const scores = await read(join(out, "scores.tsv"));
    assertEquals(scores[0], [
      "section",
      "spots",
      "hvg_r",
      "top50_r",
      "tumor_auc",
      "mse",
      "mse_baseline",
      "hvg_mse",
      "hvg_mse_baseline",
    ]);
    assertEquals(scores.slice(1).map((r) => r[0]), sections);
    for (const [i, row] of scores.slice(1).entries()) {
      const section = sections[i], val = sections[(i + 1) % 3];
      // The fold held its section out: it is the test set, the next section validates, the third trains.
      const test = await readNpz(join(out, section, "train/test_truth.npz"));
      const valNames = (await readNpz(join(out, section, "train/val_truth.npz"))).names.data as string[];
      assertEquals((test.names.data as string[]).every((n) => n.startsWith(`${section}_`)), true);
      assertEquals(valNames.every((n) => n.startsWith(`${val}_`)), true);
      assertEquals(row[1], String(test.names.shape[0]));
      const [hvgR, topR, auc, mse, base, hvgMse, hvgBase] = row.slice(2).map(Number);
      for (const v of [hvgR, topR]) if (!(Math.abs(v) <= 1)) throw new Error(`${section}: r ${v}`);
      if (!(auc >= 0 && auc <= 1)) throw new Error(`${section}: tumour AUC ${auc}`);
      for (const v of [mse, base, hvgMse, hvgBase]) if (!(v > 0)) throw new Error(`${section}: MSE ${v}`);
    }
    // The mean row is the mean of the folds.
    const mean = await read(join(out, "scores_mean.tsv"));
    assertEquals(mean[0], ["folds", ...scores[0]]);
    assertEquals(mean[1].slice(0, 2), ["3", "mean"]);
    for (let j = 1; j < scores[0].length; j++) {
      const want = scores.slice(1).reduce((a, r) => a + Number(r[j]), 0) / 3;
      const got = Number(mean[1][j + 1]);
      if (!(Math.abs(got - want) <= 1e-5 * Math.max(1, Math.abs(want)))) {
        throw new Error(`mean ${scores[0][j]}: ${got}, the folds give ${want}`);
      }
    }
    const idle = await snakemake(dir, ["-n", ...args]);
    assertEquals(idle.out.includes("Nothing to be done"), true, idle.out);
  },
});
