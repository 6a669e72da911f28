/**
 * Slide I/O and stain normalisation throughput, ours against the usual Python tools on the same files.
 *
 * Rows (wall time, median of the repetitions after one warm-up unless the row says otherwise):
 * 1. `svs read`: megapixels/s reading all of level 0 of `CMU-1-Small-Region.svs` (2220 × 2967, JPEG tiles)
 *    in 512 × 512 regions, with a fresh `openSlide` per repetition so the tile cache starts cold.
 *    Python: `openslide.OpenSlide` + `read_region(...).convert("RGB")` per region, fresh handle per rep.
 * 2. `jpeg decode`: megapixels/s decoding her2st's C2 H&E JPEG (9274 × 9911) from bytes already in memory
 *    (`decodeJpegRgb`, libjpeg-turbo in WebAssembly, as `openSlide` decodes a JPEG). Python:
 *    `PIL.Image.open(BytesIO(...)).load()` (libjpeg-turbo, native).
 * 3. `extract C2`: patches/s cutting all 187 spots of her2st C2 as `extract-patches` does: `openSlide` (the
 *    whole JPEG is decoded), `readRegion` 150 × 150 per spot, `encodeRgbTiff`, `writeAtomic` into a temp
 *    folder. Python: PIL open + load, `crop` + `save(".tif")` per spot. Decoding dominates both.
 * 4. `macenko`: patches/s normalising 1000 patches of 150 × 150 (cut from the SVS at a 50 px stride,
 *    keeping those at least a quarter tissue) to `MACENKO_DEFAULT_TARGET` on the GPU: `uploadImages`
 *    (packing included) + `applyMacenko` + readback + unpacking to RGB bytes. Python: numpy Macenko per image, as torchstain's `NumpyMacenkoNormalizer`
 *    (the same code as `tests/fixtures/stain/make_reference.py`), uint8 RGB in and out.
 *
 * Rows 2 and 3 decode 92 megapixels (about a second each): they run `min(reps, 2)` repetitions, and
 * row 2's runs are row 3's warm-up (Python, at a fraction of a second per decode, warms up once per row). `quick`: rows 1 and 4 only, with 200 patches for row 4.
 *
 * Python runs as `/usr/bin/python3` (needs `--allow-run=/usr/bin/python3`) on a script this file writes
 * to a temp folder; it measures inside Python, so interpreter start-up and imports are excluded, and
 * prints JSON. Without python3, openslide, PIL or numpy the Python columns are left empty with a note
 * (`apt-get install -y python3-openslide python3-pil python3-numpy`); without `../shared/data` the row
 * is skipped with a note. All of these tools are single-threaded here except the GPU (llvmpipe: one
 * thread per core), and the machine may be shared: the figures are noisy.
 *
 * Run alone: `deno run -A bench/slide.ts [--quick] [--reps N] [--json]`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createEngine, type Engine } from "../mod.ts";
import { decodeJpegRgb } from "../slide/jpeg.ts";
import { uploadImages } from "../slide/resize.ts";
import { applyMacenko, MACENKO_DEFAULT_TARGET } from "../slide/stain.ts";
import { encodeRgbTiff } from "../slide/tiff_write.ts";
import { openSlide } from "../slide/wsi.ts";
import { writeAtomic } from "../slide/npz.ts";
import { exists } from "../slide/datasets/types.ts";
import { parseSpots, type SpotRow } from "../slide/spots.ts";

/** One row of the table. */
export interface SlideRow {
  name: string;
  /** What one repetition does. */
  work: string;
  unit: "MP/s" | "patches/s";
  /** Megapixels or patches per repetition. */
  amount: number;
  oursMs: number;
  oursRate: number;
  oursReps: number;
  /** The Python tool the row compares with. */
  python: string;
  pythonMs?: number;
  pythonRate?: number;
  pythonReps?: number;
  /** Ours ÷ Python in throughput (> 1: he2gene is faster). */
  ratio?: number;
  /** Why a row or its Python column is missing, or what to know when reading it. */
  note?: string;
}

/** Options of {@linkcode benchSlide}. */
export interface SlideBenchOptions {
  quick: boolean;
  reps: number;
  log: (s: string) => void;
  /** The shared data folder (default `../shared/data` beside the project root). */
  dataDir?: string;
  /** The Python interpreter (default `/usr/bin/python3`). */
  python?: string;
}

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/**
 * The shared data folder the slide suites read when `--data` is not given: `../shared/data` beside the
 * project, else beside or under the current folder (the compiled binary runs from a temporary copy of the
 * sources, where "beside the project" means nothing). The first that exists; else the first candidate.
 */
export function defaultDataDir(): string {
  const compiled = Deno.mainModule.includes("deno-compile-");
  const candidates = [
    ...(compiled ? [] : [join(ROOT, "..", "shared", "data")]),
    join(Deno.cwd(), "..", "shared", "data"),
    join(Deno.cwd(), "shared", "data"),
  ];
  for (const c of candidates) {
    try {
      if (Deno.statSync(c).isDirectory) return c;
    } catch {
      // not there (or not readable): try the next one
    }
  }
  return candidates[0];
}
const SVS = "wsi/CMU-1-Small-Region.svs";
const C2_DIR = "her2st/data/ST-imgs/C/C2";
const C2_SPOTS = "her2st/data/ST-spotfiles/C2_selection.tsv";
const REGION = 512;
const PATCH = 150;

function median(xs: number[]): number {
  const s = xs.filter((x) => Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const h = s.length >> 1;
  return s.length % 2 ? s[h] : (s[h - 1] + s[h]) / 2;
}

/** Run `fn` `warmup + reps` times; milliseconds of the timed ones. */
async function timeReps(warmup: number, reps: number, fn: () => Promise<void> | void): Promise<number[]> {
  const ms: number[] = [];
  for (let i = 0; i < warmup + reps; i++) {
    const t0 = performance.now();
    await fn();
    const t = performance.now() - t0;
    if (i >= warmup) ms.push(t);
  }
  return ms;
}

/** Regions covering a level in `size` squares, clipped at the right and bottom edges. */
function tiles(w: number, h: number, size: number): [number, number, number, number][] {
  const out: [number, number, number, number][] = [];
  for (let y = 0; y < h; y += size) {
    for (let x = 0; x < w; x += size) out.push([x, y, Math.min(size, w - x), Math.min(size, h - y)]);
  }
  return out;
}

// ------------------------------------------------------------------------------------------ Python

const PY_SCRIPT = String.raw`
import io, json, os, sys, time

cfg = json.load(open(sys.argv[1]))
task = cfg["task"]
now = time.perf_counter


def timed(warmup, reps, fn):
    ms = []
    for i in range(warmup + reps):
        t0 = now()
        fn()
        t = (now() - t0) * 1000
        if i >= warmup:
            ms.append(t)
    return ms


if task == "probe":
    have = {}
    for mod in ["numpy", "PIL", "openslide"]:
        try:
            m = __import__(mod)
            have[mod] = getattr(m, "__version__", "?")
            if mod == "openslide":
                have["libopenslide"] = getattr(m, "__library_version__", "?")
        except Exception as e:
            have[mod] = None
    print(json.dumps({"python": sys.version.split()[0], "have": have}))

elif task == "read":
    import openslide

    def run():
        s = openslide.OpenSlide(cfg["path"])
        for x, y, w, h in cfg["regions"]:
            s.read_region((x, y), 0, (w, h)).convert("RGB")
        s.close()

    print(json.dumps({"ms": timed(cfg["warmup"], cfg["reps"], run)}))

elif task == "decode":
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    data = open(cfg["path"], "rb").read()

    def run():
        im = Image.open(io.BytesIO(data))
        im.load()

    print(json.dumps({"ms": timed(cfg["warmup"], cfg["reps"], run)}))

elif task == "extract":
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    size, out = cfg["size"], cfg["out"]

    def run():
        im = Image.open(cfg["path"])
        im.load()
        for x, y, left, top in cfg["spots"]:
            im.crop((left, top, left + size, top + size)).save(os.path.join(out, "%s_%d_%d.tif" % (cfg["section"], x, y)))

    print(json.dumps({"ms": timed(cfg["warmup"], cfg["reps"], run)}))

elif task == "macenko":
    import numpy as np
    IO, ALPHA, BETA = 240, 1, 0.15
    n, s = cfg["count"], cfg["size"]
    patches = np.fromfile(cfg["path"], np.uint8).reshape(n, s, s, 3)
    HERef = np.array(cfg["stains"]).T
    maxCRef = np.array(cfg["maxC"])

    # torchstain's NumpyMacenkoNormalizer (as tests/fixtures/stain/make_reference.py), one image at a time.
    def normalize(I):
        h, w, c = I.shape
        I = I.reshape((-1, 3))
        OD = -np.log((I.astype(float) + 1) / IO)
        ODhat = OD[~np.any(OD < BETA, axis=1)]
        if len(ODhat) < max(3, int(np.ceil(0.01 * h * w))):
            return None
        _, eigvecs = np.linalg.eigh(np.cov(ODhat.T))
        That = ODhat.dot(eigvecs[:, 1:3])
        phi = np.arctan2(That[:, 1], That[:, 0])
        minPhi = np.percentile(phi, ALPHA)
        maxPhi = np.percentile(phi, 100 - ALPHA)
        vMin = eigvecs[:, 1:3].dot(np.array([(np.cos(minPhi), np.sin(minPhi))]).T)
        vMax = eigvecs[:, 1:3].dot(np.array([(np.cos(maxPhi), np.sin(maxPhi))]).T)
        if vMin[0] > vMax[0]:
            HE = np.array((vMin[:, 0], vMax[:, 0])).T
        else:
            HE = np.array((vMax[:, 0], vMin[:, 0])).T
        C = np.linalg.lstsq(HE, OD.T, rcond=None)[0]
        maxC = np.array([np.percentile(C[0, :], 99), np.percentile(C[1, :], 99)])
        C2 = C / (maxC / maxCRef)[:, np.newaxis]
        Inorm = IO * np.exp(-HERef.dot(C2))
        Inorm = np.round(np.clip(Inorm, 0, 255))
        return np.reshape(Inorm.T, (h, w, c)).astype(np.uint8)

    def run(k):
        skipped = 0
        for i in range(k):
            if normalize(patches[i]) is None:
                skipped += 1
        return skipped

    run(min(n, cfg["warmupPatches"]))
    ms = timed(0, cfg["reps"], lambda: run(n))
    print(json.dumps({"ms": ms}))
`;

interface PyEnv {
  exe: string;
  dir: string;
  script: string;
  have: Record<string, string | null>;
  version: string;
}

async function runPython(py: PyEnv, cfg: Record<string, unknown>): Promise<{ ms: number[] }> {
  const cfgPath = join(py.dir, `cfg-${cfg.task}.json`);
  await Deno.writeTextFile(cfgPath, JSON.stringify(cfg));
  const out = await new Deno.Command(py.exe, {
    args: [py.script, cfgPath],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const err = new TextDecoder().decode(out.stderr).trim();
  if (!out.success) throw new Error(`python ${cfg.task} failed: ${err.split("\n").slice(-3).join(" / ")}`);
  const lines = new TextDecoder().decode(out.stdout).trim().split("\n");
  return JSON.parse(lines[lines.length - 1]);
}

/** Find the interpreter and what it has; null (with the reason) when it cannot run. */
async function setupPython(exe: string, dir: string): Promise<PyEnv | string> {
  const perm = await Deno.permissions.query({ name: "run", command: exe });
  if (perm.state !== "granted") {
    return `no Python peer: this process may not run ${exe} (\`he2gene bench\` and the compiled binary run ` +
      `without --allow-run); \`deno task bench --suite slide\` may`;
  }
  if (!(await exists(exe))) return `no Python: ${exe} is absent`;
  const script = join(dir, "bench_slide.py");
  await Deno.writeTextFile(script, PY_SCRIPT);
  const py: PyEnv = { exe, dir, script, have: {}, version: "" };
  try {
    const r = await runPython(py, { task: "probe" }) as unknown as {
      python: string;
      have: Record<string, string | null>;
    };
    py.have = r.have;
    py.version = r.python;
  } catch (e) {
    return `no Python: ${(e as Error).message}`;
  }
  return py;
}

// ------------------------------------------------------------------------------------------- bench

/**
 * Run the four rows (two with `quick`); see the module doc. Rows whose data is missing come back with
 * `note` set and NaN timings.
 */
export async function benchSlide(engine: Engine, opts: SlideBenchOptions): Promise<SlideRow[]> {
  const data = opts.dataDir ?? defaultDataDir();
  const reps = Math.max(1, opts.reps);
  const log = opts.log;
  const rows: SlideRow[] = [];
  const skip = (r: Omit<SlideRow, "oursMs" | "oursRate" | "oursReps" | "amount">) =>
    rows.push({ ...r, amount: NaN, oursMs: NaN, oursRate: NaN, oursReps: 0 });

  // Ask without prompting: a bench run without --allow-write skips what needs a temp folder.
  let tmp: string | null = null;
  const tmpRoot = (await Deno.permissions.query({ name: "env", variable: "TMPDIR" })).state === "granted"
    ? Deno.env.get("TMPDIR") ?? "/tmp"
    : "/tmp";
  if ((await Deno.permissions.query({ name: "write", path: tmpRoot })).state === "granted") {
    try {
      tmp = await Deno.makeTempDir({ dir: tmpRoot, prefix: "he2gene-bench-slide-" });
    } catch (e) {
      log(`(no temp folder: ${(e as Error).message})`);
    }
  }
  const noTmp = `no temp folder: run with --allow-write=${tmpRoot}`;
  try {
    const py = tmp ? await setupPython(opts.python ?? "/usr/bin/python3", tmp) : `no Python (${noTmp})`;
    if (typeof py === "string") log(`(${py})`);
    else {
      log(
        `python ${py.version}: ` +
          Object.entries(py.have).map(([k, v]) => `${k} ${v ?? "missing"}`).join(", "),
      );
    }
    /** Time the Python side of a row, or say why not. */
    const python = async (
      row: SlideRow,
      needs: string[],
      cfg: Record<string, unknown>,
      toRate: (ms: number) => number,
    ) => {
      if (typeof py === "string") {
        row.note = py;
        return;
      }
      const missing = needs.filter((m) => !py.have[m]);
      if (missing.length) {
        row.note = `python: ${missing.join(", ")} missing (apt-get install -y python3-openslide)`;
        return;
      }
      try {
        const r = await runPython(py, cfg);
        row.pythonMs = median(r.ms);
        row.pythonReps = r.ms.length;
        row.pythonRate = toRate(row.pythonMs);
        row.ratio = row.oursRate / row.pythonRate;
      } catch (e) {
        row.note = (e as Error).message;
      }
    };

    // 1. SVS level 0 in 512² regions.
    const svs = join(data, SVS);
    if (!(await exists(svs))) {
      skip({ name: "svs read", work: SVS, unit: "MP/s", python: "openslide", note: `${svs} is absent` });
    } else {
      const s0 = await openSlide(svs);
      const [W, H] = [s0.levels[0].width, s0.levels[0].height];
      s0.close();
      const regions = tiles(W, H, REGION);
      const mp = (W * H) / 1e6;
      log(`… svs read: ${W}×${H} level 0, ${regions.length} regions of ≤ ${REGION}², ${reps} reps`);
      const ms = await timeReps(1, reps, async () => {
        const s = await openSlide(svs);
        for (const [x, y, w, h] of regions) await s.readRegion(0, x, y, w, h);
        s.close();
      });
      const row: SlideRow = {
        name: "svs read",
        work: `CMU-1-Small-Region level 0 ${W}×${H}, ${regions.length} regions ≤ ${REGION}²`,
        unit: "MP/s",
        amount: mp,
        oursMs: median(ms),
        oursRate: mp / (median(ms) / 1000),
        oursReps: ms.length,
        python: "openslide read_region",
      };
      await python(row, ["openslide", "PIL"], {
        task: "read",
        path: svs,
        regions,
        warmup: 1,
        reps,
      }, (t) => mp / (t / 1000));
      rows.push(row);
    }

    // 2 and 3. her2st C2: decode, then extract all spot patches.
    if (!opts.quick) {
      const dir = join(data, C2_DIR);
      const jpg = (await exists(dir))
        ? [...Deno.readDirSync(dir)].map((e) => e.name).filter((n) => /\.jpe?g$/i.test(n)).sort()[0]
        : undefined;
      const spotsPath = join(data, C2_SPOTS);
      if (!jpg) {
        const note = `no JPEG in ${dir}`;
        skip({ name: "jpeg decode", work: C2_DIR, unit: "MP/s", python: "PIL", note });
        skip({ name: "extract C2", work: C2_DIR, unit: "patches/s", python: "PIL", note });
      } else {
        const path = join(dir, jpg);
        const bytes = await Deno.readFile(path);
        const slowReps = Math.min(reps, 2);
        let mp = NaN;
        log(`… jpeg decode: ${jpg}, ${slowReps} reps`);
        const ms = await timeReps(0, slowReps, () => {
          const img = decodeJpegRgb(bytes, jpg);
          mp = (img.width * img.height) / 1e6;
        });
        const dec: SlideRow = {
          name: "jpeg decode",
          work: `her2st ${jpg} (${mp.toFixed(1)} MP), from memory`,
          unit: "MP/s",
          amount: mp,
          oursMs: median(ms),
          oursRate: mp / (median(ms) / 1000),
          oursReps: ms.length,
          python: "PIL Image.load",
        };
        await python(
          dec,
          ["PIL"],
          { task: "decode", path, warmup: 1, reps: slowReps },
          (t) => mp / (t / 1000),
        );
        if (dec.note === undefined) dec.note = "ours: no separate warm-up (one decode takes seconds)";
        rows.push(dec);

        if (!(await exists(spotsPath))) {
          skip({
            name: "extract C2",
            work: C2_SPOTS,
            unit: "patches/s",
            python: "PIL",
            note: `${spotsPath} is absent`,
          });
        } else if (!tmp) {
          skip({
            name: "extract C2",
            work: C2_SPOTS,
            unit: "patches/s",
            python: "PIL",
            note: noTmp,
          });
        } else {
          const spots: SpotRow[] = parseSpots(await Deno.readTextFile(spotsPath), spotsPath);
          const half = Math.floor(PATCH / 2);
          const outOurs = join(tmp, "ours");
          const outPy = join(tmp, "py");
          await Deno.mkdir(outOurs), await Deno.mkdir(outPy);
          log(`… extract C2: ${spots.length} patches of ${PATCH}², ${slowReps} reps`);
          const ems = await timeReps(0, slowReps, async () => {
            const slide = await openSlide(path);
            try {
              for (const s of spots) {
                const r = await slide.readRegion(
                  0,
                  Math.floor(s.px) - half,
                  Math.floor(s.py) - half,
                  PATCH,
                  PATCH,
                );
                await writeAtomic(join(outOurs, `C2_${s.x}_${s.y}.tif`), encodeRgbTiff(PATCH, PATCH, r.data));
              }
            } finally {
              slide.close();
            }
          });
          const n = spots.length;
          const ext: SlideRow = {
            name: "extract C2",
            work: `${n} spots of her2st C2, ${PATCH}² TIFFs (decode + crops + writes)`,
            unit: "patches/s",
            amount: n,
            oursMs: median(ems),
            oursRate: n / (median(ems) / 1000),
            oursReps: ems.length,
            python: "PIL crop + save",
          };
          await python(ext, ["PIL"], {
            task: "extract",
            path,
            size: PATCH,
            out: outPy,
            section: "C2",
            spots: spots.map((s) => [s.x, s.y, Math.floor(s.px) - half, Math.floor(s.py) - half]),
            warmup: 1,
            reps: slowReps,
          }, (t) => n / (t / 1000));
          if (ext.note === undefined) ext.note = "ours: warmed up by the decode row";
          rows.push(ext);
        }
      }
    }

    // 4. Macenko on the GPU.
    const count = opts.quick ? 200 : 1000;
    if (!(await exists(svs))) {
      skip({ name: "macenko", work: SVS, unit: "patches/s", python: "numpy", note: `${svs} is absent` });
    } else {
      const s = await openSlide(svs);
      const [W, H] = [s.levels[0].width, s.levels[0].height];
      const imgs: { width: number; height: number; data: Uint8Array }[] = [];
      // Patches at least a quarter tissue (all channels < 205, OD ≥ 0.15), in scan order, so that each one
      // gets a full fit (background patches are skipped cheaply on both sides).
      const stride = PATCH / 3;
      for (let y = 0; y + PATCH <= H && imgs.length < count; y += stride) {
        for (let x = 0; x + PATCH <= W && imgs.length < count; x += stride) {
          const r = await s.readRegion(0, x, y, PATCH, PATCH);
          let t = 0;
          for (let p = 0; p < PATCH * PATCH; p++) {
            if (r.data[3 * p] < 205 && r.data[3 * p + 1] < 205 && r.data[3 * p + 2] < 205) t++;
          }
          if (t >= 0.25 * PATCH * PATCH) imgs.push({ width: PATCH, height: PATCH, data: r.data });
        }
      }
      for (let i = 0; imgs.length < count && imgs.length > 0; i++) imgs.push(imgs[i]);
      s.close();
      const n = imgs.length;
      log(`… macenko: ${n} patches of ${PATCH}² on ${engine.adapterInfo.name}, ${reps} reps`);
      let skipped = 0;
      const out = new Uint8Array(n * PATCH * PATCH * 3);
      const ms = await timeReps(1, reps, async () => {
        const packed = uploadImages(engine, imgs);
        const res = await applyMacenko(packed, MACENKO_DEFAULT_TARGET);
        const v = await res.images.toArray();
        for (let p = 0; p < v.length; p++) {
          const u = v[p];
          out[3 * p] = u % 256;
          out[3 * p + 1] = Math.floor(u / 256) % 256;
          out[3 * p + 2] = Math.floor(u / 65536);
        }
        skipped = res.skipped.length;
        if (res.images !== packed) res.images.dispose();
        packed.dispose();
      });
      const row: SlideRow = {
        name: "macenko",
        work: `${n} patches ${PATCH}² (≥ 25% tissue) from the SVS, upload + GPU + readback`,
        unit: "patches/s",
        amount: n,
        oursMs: median(ms),
        oursRate: n / (median(ms) / 1000),
        oursReps: ms.length,
        python: "numpy per image",
      };
      if (tmp) {
        const raw = join(tmp, "patches.rgb");
        const all = new Uint8Array(n * PATCH * PATCH * 3);
        imgs.forEach((img, i) => all.set(img.data, i * PATCH * PATCH * 3));
        await Deno.writeFile(raw, all);
        await python(row, ["numpy"], {
          task: "macenko",
          path: raw,
          count: n,
          size: PATCH,
          stains: MACENKO_DEFAULT_TARGET.stains,
          maxC: MACENKO_DEFAULT_TARGET.maxC,
          warmupPatches: 20,
          reps: Math.min(reps, 2),
        }, (t) => n / (t / 1000));
      } else row.note = `no Python (${noTmp})`;
      if (skipped) {
        row.note = [row.note, `${skipped} patches with too little tissue copied`].filter(Boolean).join("; ");
      }
      rows.push(row);
    }
  } finally {
    if (tmp) await Deno.remove(tmp, { recursive: true }).catch(() => {});
  }
  return rows;
}

const f1 = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? "–" : x.toFixed(1));

/** Print rows as a table like the other suites. */
export function printSlideTable(rows: SlideRow[], log: (s: string) => void): void {
  const head = [
    "row",
    "unit",
    "ours ms",
    "ours rate",
    "reps",
    "python",
    "py ms",
    "py rate",
    "reps",
    "ours/py",
  ];
  const lines = rows.map((r) => [
    r.name,
    r.unit,
    f1(r.oursMs),
    f1(r.oursRate),
    r.oursReps ? String(r.oursReps) : "–",
    r.python,
    f1(r.pythonMs),
    f1(r.pythonRate),
    r.pythonReps ? String(r.pythonReps) : "–",
    r.ratio === undefined || !Number.isFinite(r.ratio) ? "–" : `${r.ratio.toFixed(2)}×`,
  ]);
  const widths = head.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i].length)));
  const left = new Set([0, 1, 5]);
  const fmt = (l: string[]) =>
    l.map((c, i) => (left.has(i) ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join("  ");
  log("\n" + fmt(head));
  log(widths.map((w) => "-".repeat(w)).join("  "));
  for (const l of lines) log(fmt(l));
  log("\nours/py = our throughput ÷ Python's (wall time; > 1 means he2gene is faster).");
  for (const r of rows) log(`${r.name}: ${r.work}${r.note ? ` — ${r.note}` : ""}`);
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      quick: { type: "boolean", default: false },
      reps: { type: "string" },
      json: { type: "boolean", default: false },
    },
    strict: true,
  });
  const log = (s: string) => (values.json ? console.error(s) : console.log(s));
  const e = await createEngine();
  log(`adapter: ${e.adapterInfo.name}${e.adapterInfo.software ? " (software)" : ""}`);
  const rows = await benchSlide(e, {
    quick: values.quick,
    reps: values.reps ? Number(values.reps) : values.quick ? 2 : 3,
    log,
  });
  if (values.json) console.log(JSON.stringify({ adapter: e.adapterInfo, slide: rows }, null, 2));
  else printSlideTable(rows, console.log);
  e.destroy();
}
