/**
 * `he2gene train`: HE2Gene-Base or HE2Gene-Spat on a spatial dataset (her2st, HBCIS, Visium), with the
 * original's hyper-parameters as defaults. Patches are cut from the slides once (`--crop-size` px around
 * each spot, top-left = ⌊px⌋ − crop/2 as the original) and kept in memory; see cli/train_loop.ts for the
 * loop, checkpoints and resume. At the end the best model predicts the validation spots and
 * `val_predictions.npz` + `val_truth.npz` are written for `he2gene evaluate`. With `--test-sections`, those
 * sections are held out of training, validation and the choice of target genes, and the best model's
 * predictions of their spots, their truth and the mean-expression baseline's predictions (each gene's mean
 * over the training spots) are written too: `test_predictions.npz`, `test_truth.npz`, `test_baseline.npz`
 * (leave-one-section-out cross-validation, as the workflow's `cv` target runs it).
 *
 * Every option is checked before anything is read (numbers: exit 2 naming the option). `--out` is locked
 * for the run (`--out/.lock`: pid, host, start time; created atomically): a second run into it exits 1
 * naming the first. The run touches its lock every 10 s; a lock on this host untouched for 2 minutes (its
 * run was killed or crashed) is taken over with a warning, and one from another host is refused with the
 * advice to delete it. A fresh run into a folder holding a previous run needs `--resume` or `--force`. Ctrl-C
 * saves a resumable checkpoint (during training) and exits 130; the lock goes in every case.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { join } from "node:path";
import { createEngine } from "../engine/engine.ts";
import { BACKBONES, torchvisionResNet, type Variant } from "../model/mod.ts";
import { DEFAULT_TRAIN } from "../model/train.ts";
import { HEAD_KINDS, type HeadKind } from "../model/encoder_heads.ts";
import { DEFAULT_HEADS_TRAIN } from "../pipeline/train_heads.ts";
import { type EncoderName, ENCODERS } from "./embed.ts";
import { fineTuneOnEncoder, trainOnEncoder } from "./train_encoder.ts";
import { decodeImage, type RgbImage } from "../slide/decode.ts";
import {
  fitMacenko,
  fitReinhard,
  MACENKO_DEFAULT_TARGET,
  normalizeStainImages,
  type StainMethod,
} from "../slide/stain.ts";
import type { Section } from "../slide/datasets/mod.ts";
import { readGeneList, selectTargetGenes } from "../slide/genes.ts";
import { makeDirs, removeCreatedDirs } from "../slide/npz.ts";
import { openSlide } from "../slide/wsi.ts";
import { readCheckpoint } from "./checkpoint.ts";
import { parseTuneMode, prepareTuning, type TuneMode } from "./tune.ts";
import { checkInputs, Interrupted, UsageError } from "./errors.ts";
import { predictTable, type SpotTable, trainModel, writeRunPredictions } from "./train_loop.ts";
import { loadDataset, sectionList, spotTruth } from "./truth.ts";

/** The usage text (every option with its default). */
export const TRAIN_USAGE = `train --dataset her2st|hbcis|visium --root DIR [options]

  --train-sections A,B   sections to train on (default: all but the validation and test ones)
  --val-sections C       validation sections (default: a seeded 90/10 random split of the training spots)
  --test-sections D      held-out sections: neither trained nor validated on; the best model predicts them
                         (test_predictions.npz, test_truth.npz, and test_baseline.npz: the training mean)
  --variant base|spat    HE2Gene-Base, or -Spat with the spatial constraint (default base)
  --backbone NAME        resnet50 | resnet18 | tiny (default resnet50)
  --init CKPT            start from HE2Gene's .pt / our .safetensors (full model) — fine-tuning
  --init-backbone FILE   start the backbone from a torchvision ResNet state dict (ImageNet layout, e.g.
                         resnet50-0676ba61.pth), as the original's pretrained=True: the architecture is the
                         file's (--backbone, if given, must agree), heads freshly initialised as PyTorch's
                         nn.Linear (no bias from the training means)
  --batch-size N         default 256 (base) / 32 (spat), as the original
  --lr 1e-5 --weight-decay 1e-4 --step-size 10 --gamma 0.5 --clip 1.0
  --epochs 100 --patience 10 (early stopping on validation target MSE)
  --aux 20               weight of the auxiliary-gene MSE. The original's Base script uses 20 and its Spat
                         script defaults to 100; we use 20 for both so that the two variants differ only by
                         the spatial term (pass --aux 100 to reproduce the Spat script).
  --tmr 1 --spat 0.01    tumour BCE weight; spatial-constraint weight (spat only)
  --n-target 250         target genes = top-N by mean count on the training spots, or --target-genes FILE
  --crop-size 150 --image-size 224
  --stain none           stain normalisation of every patch, once, on the GPU (macenko | reinhard | none);
  --stain-ref IMAGE      reference image for reinhard (macenko uses torchstain's reference unless given)
  --norm-from-data       normalise with the training patches' channel mean/std instead of HE2Gene's
  --seed 0 --out ./runs/he2gene
  --resume               continue the run in --out from its checkpoint (also after Ctrl-C)
  --force                replace the previous run in --out (without it, a fresh run there is refused)
  --checkpoint           activation checkpointing: keep only each residual block's input and recompute the
                         block in backward — the same numbers in a fraction of the memory, ~1/3 more time
                         (HE2Gene-Spat at batch 32 at 224 px: 32 spots + their neighbours, ~290 images)
  --tune cached          kernel variants: cached (this adapter's table from \`he2gene tune\`, else built-in
                         defaults) | auto (tune first when there is none) | off (built-in defaults)
  --compress             deflate the arrays of the val_*.npz / test_*.npz files (as np.savez_compressed;
                         default stored, as np.savez)
  --quiet

Heads on a frozen encoder (features computed once, cached in --out/features/<key>.npz, reused by a second
run or --resume; the checkpoints hold the heads and the encoder's record, not its weights):
  --encoder resnet50|he2gene|timm   the encoder, as \`embed\` reads it (with --weights, --config)
  --weights FILE         its weights (timm: the Hugging Face folder or its model.safetensors)
  --config FILE          timm's config.json (default: beside the weights)
  --freeze-encoder       train HE2Gene's three heads on the encoder's features (or --unfreeze-last K)
  --head linear          linear | mlp (one hidden layer shared by the three heads, ReLU) | ridge (gene heads in
                         closed form, lambda chosen on the validation spots; the tumour head by Adam)
  --hidden 512           the mlp's hidden width
  --unfreeze-last K      instead of --freeze-encoder: fine-tune the encoder's last K blocks (ResNet bottleneck
                         blocks, their batch norms in training mode; ViT blocks + final norm) with HE2Gene's
                         linear heads, on the patches (flips/rotations as HE2Gene's training; the whole
                         patch resized bilinear to the encoder's input, also when predicting); the
                         checkpoints hold the heads and the trained blocks, not the frozen weights
  With --encoder, --lr defaults to 1e-3 for heads on frozen features and 1e-4 with --unfreeze-last (1e-5
  is the original's for fine-tuning a whole ResNet; fresh heads need a larger step); --variant spat,
  --backbone, --init, --init-backbone, --image-size, --checkpoint and --norm-from-data do not apply (the
  encoder decides its input and normalisation).

Numbers: --batch-size, --epochs, --patience, --step-size, --n-target, --crop-size are positive integers,
--image-size an integer ≥ 32, --seed an integer in [0, 2^32); --lr, --gamma, --clip > 0; --weight-decay,
--aux, --tmr, --spat ≥ 0. --out is locked while a run uses it (--out/.lock).`;

/** A number option: finite, ≥ `min` (or > `min` when `above`), an integer when `integer`. */
interface NumberRule {
  min: number;
  above?: boolean;
  integer?: boolean;
  max?: number;
  /** Why the bound (shown in the message). */
  why?: string;
}

/** Every numeric option of `train` and its rule: checked before anything is read. */
const NUMBER_RULES: Record<string, NumberRule> = {
  "batch-size": { min: 1, integer: true },
  lr: { min: 0, above: true },
  "weight-decay": { min: 0 },
  "step-size": { min: 1, integer: true },
  gamma: { min: 0, above: true },
  clip: { min: 0, above: true, why: "the gradient-norm bound; 0 would stop all updates" },
  epochs: { min: 1, integer: true },
  patience: { min: 1, integer: true },
  aux: { min: 0 },
  tmr: { min: 0 },
  spat: { min: 0 },
  "n-target": { min: 1, integer: true },
  "crop-size": { min: 1, integer: true },
  "image-size": { min: 32, integer: true, why: "the backbone downsamples by 32" },
  seed: { min: 0, integer: true, max: 2 ** 32 - 1 },
  hidden: { min: 1, integer: true },
};

/**
 * The default learning rate of `--unfreeze-last`: between the original's 1e-5 (a whole pretrained ResNet)
 * and 1e-3 (heads alone on fixed features), as the last blocks are pretrained and the heads fresh.
 */
const FINETUNE_LR = 1e-4;

/** The encoder options: together, and not with those of HE2Gene's own backbone. */
function checkEncoderOptions(v: Record<string, string | boolean | undefined>, args: string[]): void {
  const given = (k: string) => args.some((a) => a === `--${k}` || a.startsWith(`--${k}=`));
  if (v.encoder === undefined) {
    const stray = ["weights", "config", "freeze-encoder", "unfreeze-last", "head", "hidden"].find(given);
    if (stray) throw new UsageError(`--${stray} applies to training on an encoder (--encoder NAME)`);
    return;
  }
  if (!(ENCODERS as readonly string[]).includes(v.encoder as string)) {
    throw new UsageError(`--encoder must be ${ENCODERS.join(", ")}, current value is ${v.encoder}`);
  }
  if (v.weights === undefined) throw new UsageError("--encoder needs --weights FILE (the encoder's weights)");
  const unfreeze = v["unfreeze-last"] !== undefined;
  if (!v["freeze-encoder"] === !unfreeze) {
    throw new UsageError(
      "--encoder needs one of --freeze-encoder (heads on the encoder's cached features) or " +
        "--unfreeze-last K (its last K blocks fine-tuned with the heads)",
    );
  }
  if (unfreeze) {
    const k = Number(v["unfreeze-last"]);
    if (!(Number.isInteger(k) && k >= 1)) {
      throw new UsageError(`--unfreeze-last must be an integer ≥ 1, current value is ${v["unfreeze-last"]}`);
    }
    if ((v.head ?? "linear") !== "linear") {
      throw new UsageError(
        "--unfreeze-last trains HE2Gene's linear heads with the blocks: --head linear only",
      );
    }
  }
  if (v.config !== undefined && v.encoder !== "timm") throw new UsageError("--config is for --encoder timm");
  if (v.head !== undefined && !(HEAD_KINDS as readonly string[]).includes(v.head as string)) {
    throw new UsageError(`--head must be ${HEAD_KINDS.join(", ")}, current value is ${v.head}`);
  }
  if (v.hidden !== undefined && v.head !== "mlp") throw new UsageError("--hidden is the width of --head mlp");
  const other = ["backbone", "init", "init-backbone", "image-size", "checkpoint", "norm-from-data"].find(
    given,
  );
  if (other) throw new UsageError(`--${other} does not apply with --encoder (the encoder decides its input)`);
  if (v.variant === "spat") throw new UsageError("--variant spat does not apply with --encoder (heads only)");
}

/** Parse and check a numeric option (a UsageError naming it otherwise); `dflt` when absent. */
function num(v: string | undefined, name: string, dflt: number): number {
  if (v === undefined) return dflt;
  const r = NUMBER_RULES[name];
  const n = v.trim() === "" ? NaN : Number(v);
  const ok = Number.isFinite(n) && (r.above ? n > r.min : n >= r.min) &&
    (!r.integer || Number.isInteger(n)) &&
    (r.max === undefined || n <= r.max);
  if (!ok) {
    const what = r.integer
      ? r.min === 1
        ? "a positive integer"
        : `an integer ≥ ${r.min}${r.max !== undefined ? ` and ≤ ${r.max}` : ""}`
      : r.above
      ? `a number > ${r.min}`
      : `a number ≥ ${r.min}`;
    throw new UsageError(`--${name} must be ${what}${r.why ? ` (${r.why})` : ""}, current value is ${v}`);
  }
  return n;
}

/**
 * This machine's name without --allow-sys (which `Deno.hostname()` needs and the task does not grant):
 * `/etc/hostname`, else `$HOSTNAME` / `%COMPUTERNAME%`.
 */
export function hostName(): string {
  try {
    const h = Deno.readTextFileSync("/etc/hostname").trim();
    if (h) return h;
  } catch { /* next */ }
  try {
    const h = Deno.env.get("HOSTNAME") ?? Deno.env.get("COMPUTERNAME");
    if (h) return h;
  } catch { /* no env permission */ }
  return "unknown-host";
}

/** What a lock file `--out/.lock` holds. */
export interface RunLock {
  pid: number;
  host: string;
  /** ISO time the run started. */
  started: string;
}

/**
 * How a run shows it is alive: it touches its lock file every `heartbeatMs`; a lock on this host whose
 * file was not touched for `staleMs` belongs to a run that is gone (killed, crashed, the machine rebooted).
 * A heartbeat, not a pid check, because Deno reaches `/proc` only with --allow-all and signals (kill -0)
 * only with --allow-run, neither of which the task grants; it also works on macOS and Windows.
 */
export interface LockTiming {
  heartbeatMs: number;
  staleMs: number;
}

/** The defaults: touched every 10 s, stale after 2 minutes (a long synchronous stall cannot reach it). */
export const LOCK_TIMING: LockTiming = { heartbeatMs: 10_000, staleMs: 120_000 };

/**
 * Whether the run that wrote `lock` still runs: `dead` when it is on this host and its lock file was last
 * touched more than `staleMs` ago (`ageMs`); `unknown` on another host (its clock and heartbeat cannot be
 * trusted from here).
 */
export function lockHolder(lock: RunLock, ageMs: number, timing = LOCK_TIMING): "alive" | "dead" | "unknown" {
  if (lock.host !== hostName()) return "unknown";
  return ageMs > timing.staleMs ? "dead" : "alive";
}

const describeLock = (l: RunLock) => `pid ${l.pid} on ${l.host}, started ${l.started}`;

/** Create `path` holding `text`, failing with AlreadyExists if it exists (createNew: atomic). */
async function createFile(path: string, text: string): Promise<void> {
  const f = await Deno.open(path, { write: true, createNew: true });
  try {
    const b = new TextEncoder().encode(text);
    for (let off = 0; off < b.length;) off += await f.write(b.subarray(off));
  } catch (e) {
    f.close();
    await Deno.remove(path).catch(() => {}); // no half-written lock (a full disk, say)
    throw e;
  }
  f.close();
}

/** Read a lock file; null when it is gone. Waits briefly for one that was created but not yet written. */
async function readLock(path: string): Promise<{ raw: string; lock: RunLock | null } | null> {
  for (let attempt = 0;; attempt++) {
    let raw: string;
    try {
      raw = await Deno.readTextFile(path);
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) return null;
      throw e;
    }
    try {
      const l = JSON.parse(raw);
      if (typeof l.pid === "number" && typeof l.host === "string") return { raw, lock: l };
    } catch { /* being written, or not ours */ }
    if (attempt >= 10) return { raw, lock: null };
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * Take the lock on a run folder: `dir/.lock` created atomically (createNew) with our pid, host and start
 * time, and touched every `timing.heartbeatMs` while we hold it. A lock held by a live run (touched within
 * `timing.staleMs`), or by a run on another host, is refused naming that run; a stale lock on this host
 * (its run was killed or crashed) is taken over with a warning. Returns the release function (stops the
 * heartbeat, removes the lock if it is still ours).
 */
export async function lockRunFolder(
  dir: string,
  warn: (s: string) => void,
  timing: LockTiming = LOCK_TIMING,
): Promise<() => void> {
  const path = join(dir, ".lock");
  const mine: RunLock = { pid: Deno.pid, host: hostName(), started: new Date().toISOString() };
  const text = JSON.stringify(mine) + "\n";
  const ageMs = async () => {
    try {
      const m = (await Deno.stat(path)).mtime;
      return m ? Date.now() - m.getTime() : 0;
    } catch {
      return 0;
    }
  };
  for (let attempt = 0; attempt < 5; attempt++) {
    try {
      await createFile(path, text);
      return heartbeat(path, text, timing.heartbeatMs);
    } catch (e) {
      if (!(e instanceof Deno.errors.AlreadyExists)) {
        throw new Error(`Cannot lock ${dir} (${path}): ${(e as Error).message}`);
      }
    }
    const held = await readLock(path);
    if (held === null) continue; // released meanwhile
    if (held.lock === null) {
      throw new Error(
        `Cannot train into ${dir}: it holds a lock file ${path} that is not a he2gene lock ` +
          `(${JSON.stringify(held.raw.slice(0, 80))}); if no train run uses ${dir}, delete ${path}`,
      );
    }
    const age = await ageMs();
    const state = lockHolder(held.lock, age, timing);
    if (state === "alive") {
      throw new Error(
        `Cannot train into ${dir}: another train run is using it (${
          describeLock(held.lock)
        }; lock ${path}, ` +
          `touched ${(age / 1000).toFixed(0)} s ago). Wait for it to finish, stop it, or choose another ` +
          `--out (a lock its run has not touched for ${timing.staleMs / 1000} s is taken over)`,
      );
    }
    if (state === "unknown") {
      throw new Error(
        `Cannot train into ${dir}: it is locked by a train run on another host (${
          describeLock(held.lock)
        }; lock ${path}), which cannot be checked from here. If that run is no longer running, delete ${path}`,
      );
    }
    // Stale: its run is gone. One run at a time takes it over (the takeover marker is atomic too).
    const marker = `${path}.takeover`;
    try {
      await createFile(marker, text);
    } catch (e) {
      if (e instanceof Deno.errors.AlreadyExists) {
        throw new Error(
          `Cannot train into ${dir}: another run is taking over its stale lock ${path}; if none is, delete ` +
            `${marker} and ${path}`,
        );
      }
      throw e;
    }
    try {
      const again = await readLock(path);
      if (again?.raw === held.raw) {
        await Deno.remove(path);
        warn(
          `warning: took over the lock ${path} of a train run that is no longer running ` +
            `(${describeLock(held.lock)}; not touched for ${(age / 1000).toFixed(0)} s); its checkpoint, ` +
            `if any, is kept`,
        );
      }
    } finally {
      await Deno.remove(marker).catch(() => {});
    }
  }
  throw new Error(`Cannot lock ${dir}: ${path} keeps changing; another run is starting there`);
}

/** Touch the lock every `ms` (a timer that does not keep the process alive); returns the release. */
function heartbeat(path: string, text: string, ms: number): () => void {
  const timer = setInterval(() => {
    const now = new Date();
    Deno.utime(path, now, now).catch(() => {}); // gone: released, or deleted by the user
  }, ms);
  Deno.unrefTimer(timer);
  return () => {
    clearInterval(timer);
    try {
      if (Deno.readTextFileSync(path) === text) Deno.removeSync(path);
    } catch { /* gone already */ }
  };
}

/** The files of a finished or interrupted run in `--out`. */
const RUN_FILES = [
  "checkpoint.safetensors",
  "best.safetensors",
  "log.jsonl",
  "val_predictions.npz",
  "val_truth.npz",
  "test_predictions.npz",
  "test_truth.npz",
  "test_baseline.npz",
];

/** Files of an earlier run in `dir` (an empty log.jsonl, left by a run that failed at once, is none). */
async function previousRun(dir: string): Promise<string[]> {
  const found: string[] = [];
  for (const f of RUN_FILES) {
    try {
      const st = await Deno.stat(join(dir, f));
      if (f !== "log.jsonl" || st.size > 0) found.push(f);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
  }
  return found;
}

/** Cut every spot's patch from its section's slide (level 0), white outside the image. */
async function cutPatches(sec: Section, crop: number, check: () => void): Promise<RgbImage[]> {
  const slide = await openSlide(sec.slidePath);
  try {
    const s = sec.imageScale ?? 1;
    const out: RgbImage[] = [];
    for (const spot of sec.spots) {
      check();
      const cx = Math.floor(spot.pixel[0] * s), cy = Math.floor(spot.pixel[1] * s);
      const r = await slide.readRegion(0, cx - Math.floor(crop / 2), cy - Math.floor(crop / 2), crop, crop);
      out.push({ width: r.width, height: r.height, channels: 3, data: r.data, warnings: [] });
    }
    return out;
  } finally {
    slide.close();
  }
}

/** CLI entry. */
export async function runTrain(args: string[]): Promise<void> {
  const { values: v } = parseArgs({
    args,
    options: {
      dataset: { type: "string" },
      root: { type: "string" },
      "train-sections": { type: "string" },
      "val-sections": { type: "string" },
      "test-sections": { type: "string" },
      variant: { type: "string", default: "base" },
      backbone: { type: "string" },
      init: { type: "string" },
      "init-backbone": { type: "string" },
      "batch-size": { type: "string" },
      lr: { type: "string" },
      "weight-decay": { type: "string" },
      "step-size": { type: "string" },
      gamma: { type: "string" },
      clip: { type: "string" },
      epochs: { type: "string", default: "100" },
      patience: { type: "string", default: "10" },
      aux: { type: "string", default: "20" },
      tmr: { type: "string", default: "1" },
      spat: { type: "string", default: "0.01" },
      "n-target": { type: "string", default: "250" },
      "target-genes": { type: "string" },
      "crop-size": { type: "string", default: "150" },
      "image-size": { type: "string", default: "224" },
      stain: { type: "string", default: "none" },
      "stain-ref": { type: "string" },
      "norm-from-data": { type: "boolean", default: false },
      seed: { type: "string", default: "0" },
      out: { type: "string", default: "./runs/he2gene" },
      resume: { type: "boolean", default: false },
      force: { type: "boolean", default: false },
      quiet: { type: "boolean", default: false },
      checkpoint: { type: "boolean", default: false },
      tune: { type: "string", default: "cached" },
      compress: { type: "boolean", default: false },
      encoder: { type: "string" },
      weights: { type: "string" },
      config: { type: "string" },
      "freeze-encoder": { type: "boolean", default: false },
      "unfreeze-last": { type: "string" },
      head: { type: "string" },
      hidden: { type: "string" },
    },
    strict: true,
  });
  // Every option is checked before anything is read or created.
  if (!v.dataset || !v.root) throw new UsageError("--dataset and --root are required");
  const tuneMode = parseTuneMode(v.tune);
  if (!["her2st", "hbcis", "visium"].includes(v.dataset)) {
    throw new UsageError(`--dataset must be her2st, hbcis or visium, current value is ${v.dataset}`);
  }
  const variant = v.variant as Variant;
  if (variant !== "base" && variant !== "spat") {
    throw new UsageError(`--variant must be base or spat, current value is ${v.variant}`);
  }
  const backbone = BACKBONES[v.backbone ?? "resnet50"];
  if (!backbone) {
    throw new UsageError(
      `--backbone must be one of ${Object.keys(BACKBONES).join(", ")}, current value is ${v.backbone}`,
    );
  }
  const stain = v.stain as StainMethod;
  if (!["none", "macenko", "reinhard"].includes(stain)) {
    throw new UsageError(`--stain must be macenko, reinhard or none, current value is ${v.stain}`);
  }
  if (stain === "reinhard" && !v["stain-ref"]) {
    throw new UsageError("--stain reinhard needs --stain-ref IMAGE");
  }
  if (!v.out?.trim()) throw new UsageError("--out must name a folder, current value is empty");
  const held = sectionList(v["test-sections"]);
  for (const flag of ["train-sections", "val-sections"] as const) {
    const both = sectionList(v[flag]).filter((s) => held.includes(s));
    if (both.length) {
      throw new UsageError(
        `--test-sections are held out of training and validation, but ${both.join(", ")} ` +
          `${both.length === 1 ? "is" : "are"} also in --${flag}`,
      );
    }
  }
  if (v.init && v["init-backbone"]) {
    throw new UsageError(
      "--init (a whole HE2Gene model) and --init-backbone (backbone weights only) exclude each other: give one",
    );
  }
  if (v.resume && v.force) {
    throw new UsageError("--resume continues the run in --out and --force replaces it: give one of them");
  }
  checkEncoderOptions(v, args);
  const onEncoder = v.encoder !== undefined;
  const hidden = num(v.hidden, "hidden", 512);
  const o = {
    seed: num(v.seed, "seed", 0),
    crop: num(v["crop-size"], "crop-size", 150),
    nTarget: num(v["n-target"], "n-target", 250),
    batchSize: num(v["batch-size"], "batch-size", variant === "spat" ? 32 : 256),
    imageSize: num(v["image-size"], "image-size", 224),
    epochs: num(v.epochs, "epochs", 100),
    patience: num(v.patience, "patience", 10),
    train: {
      ...DEFAULT_TRAIN,
      lr: num(
        v.lr,
        "lr",
        !onEncoder
          ? DEFAULT_TRAIN.lr
          : v["unfreeze-last"] !== undefined
          ? FINETUNE_LR
          : DEFAULT_HEADS_TRAIN.lr,
      ),
      weightDecay: num(v["weight-decay"], "weight-decay", DEFAULT_TRAIN.weightDecay),
      stepSize: num(v["step-size"], "step-size", DEFAULT_TRAIN.stepSize),
      gamma: num(v.gamma, "gamma", DEFAULT_TRAIN.gamma),
      clipNorm: num(v.clip, "clip", DEFAULT_TRAIN.clipNorm),
      auxWeight: num(v.aux, "aux", 20),
      tmrWeight: num(v.tmr, "tmr", 1),
      spatWeight: num(v.spat, "spat", 0.01),
    },
  };
  if (variant !== "spat") o.train.spatWeight = 0;
  const say = (s: string) => v.quiet || console.error(s);
  const listFile = v["target-genes"];
  const list = listFile ? await readGeneList(listFile, "--target-genes") : undefined;
  // (--root is named by the dataset reader, after the run folder's lock and previous-run checks.)
  await checkInputs([
    ["--init", v.init, "file"],
    ["--init-backbone", v["init-backbone"], "file"],
    ["--stain-ref", v["stain-ref"], "file"],
    ["--weights", v.weights, v.encoder === "timm" ? "file or folder" : "file"],
    ["--config", v.config, "file"],
  ]);

  // Ctrl-C: stop at the next safe point (a spot read, a training step), save what can be resumed, exit 130;
  // a second Ctrl-C quits at once (the last checkpoint written is kept: checkpoints are written atomically).
  let sigint = false;
  let release = () => {};
  const onSigint = () => {
    if (sigint) {
      release();
      console.error("\nCtrl-C again: quitting at once; the last checkpoint written is kept");
      Deno.exit(130);
    }
    sigint = true;
    console.error(
      "\nInterrupting: stopping after the current step to save a checkpoint (Ctrl-C again to quit at once)…",
    );
  };
  let listening = false;
  try {
    Deno.addSignalListener("SIGINT", onSigint);
    listening = true;
  } catch { /* no signals here */ }
  const check = () => {
    if (sigint) throw new Interrupted("stopped before training started; nothing was written");
  };

  const out = v.out!;
  let created: string[] = [];
  let ok = false;
  try {
    created = await makeDirs(out).catch((e) => {
      throw new Error(`Cannot train into ${out}: ${(e as Error).message}`);
    });
    release = await lockRunFolder(out, say);
    const earlier = await previousRun(out);
    if (v.resume && !earlier.includes("checkpoint.safetensors")) {
      throw new Error(
        `Cannot resume: ${out} holds no checkpoint.safetensors${
          earlier.length ? ` (only ${earlier.join(", ")})` : ""
        }; start a fresh run without --resume`,
      );
    }
    if (!v.resume && !v.force && earlier.length > 0) {
      throw new Error(
        `Cannot train into ${out}: it holds a previous run (${earlier.join(", ")}); pass --resume to ` +
          `continue it, --force to replace it, or choose another --out`,
      );
    }
    await train(
      { ...v, tuneMode, hidden } as TrainValues,
      o,
      list,
      say,
      check,
      () => sigint,
      earlier,
    );
    ok = true;
  } finally {
    release();
    if (listening) Deno.removeSignalListener("SIGINT", onSigint);
    if (!ok) {
      await removeCreatedDirs(created); // leave no empty folder this run created
    }
  }
}

/** The option values {@linkcode runTrain} passes on. */
interface TrainValues {
  dataset: string;
  root: string;
  "train-sections"?: string;
  "val-sections"?: string;
  "test-sections"?: string;
  variant: Variant;
  /** As given (undefined: resnet50, or --init-backbone's architecture). */
  backbone?: string;
  init?: string;
  "init-backbone"?: string;
  "target-genes"?: string;
  stain: StainMethod;
  "stain-ref"?: string;
  "norm-from-data": boolean;
  out: string;
  resume: boolean;
  force: boolean;
  quiet: boolean;
  checkpoint: boolean;
  compress: boolean;
  /** `--tune`, checked. */
  tuneMode: TuneMode;
  encoder?: EncoderName;
  weights?: string;
  config?: string;
  head?: HeadKind;
  hidden: number;
  "unfreeze-last"?: string;
}

/** The run itself, under the folder's lock. */
async function train(
  v: TrainValues,
  o: {
    seed: number;
    crop: number;
    nTarget: number;
    batchSize: number;
    imageSize: number;
    epochs: number;
    patience: number;
    train: typeof DEFAULT_TRAIN;
  },
  list: string[] | undefined,
  say: (s: string) => void,
  check: () => void,
  interrupted: () => boolean,
  earlier: string[],
): Promise<void> {
  const variant = v.variant, stain = v.stain;
  const { seed, crop, batchSize, imageSize } = o;
  // --init-backbone: read (and its layout checked) before the data, so that a wrong file fails at once.
  const pretrained = v["init-backbone"]
    ? torchvisionResNet((await readCheckpoint(v["init-backbone"])).tensors, v["init-backbone"])
    : undefined;
  if (pretrained && v.backbone !== undefined && BACKBONES[v.backbone] !== pretrained.config) {
    throw new UsageError(
      `--init-backbone ${v["init-backbone"]} holds a ${pretrained.config.name}, but --backbone is ` +
        `${v.backbone}: drop --backbone (the file decides) or give the matching weights`,
    );
  }
  const backbone = pretrained?.config ?? BACKBONES[v.backbone ?? "resnet50"];
  if (pretrained) say(`backbone: ${pretrained.config.name} from ${v["init-backbone"]} (torchvision layout)`);
  const ds = await loadDataset(v.dataset, v.root);
  check();
  for (const w of ds.warnings ?? []) say(`warning: ${w.message}`);
  const ids = ds.sections.map((s) => s.id);
  const valIds = sectionList(v["val-sections"]);
  const testIds = sectionList(v["test-sections"]);
  const trainIds = v["train-sections"]?.split(",").map((s) => s.trim()) ??
    ids.filter((s) => !valIds.includes(s) && !testIds.includes(s));
  for (const s of [...valIds, ...trainIds, ...testIds]) {
    if (!ids.includes(s)) throw new Error(`Section ${s} is not in ${v.root} (sections: ${ids.join(", ")})`);
  }
  // Genes: enough targets and auxiliaries, before any patch is cut.
  const G = ds.genes.length;
  const listFile = v["target-genes"];
  if (G === 0) throw new Error(`Cannot train: the dataset in ${v.root} has no genes`);
  if (list) {
    const known = new Set(ds.genes);
    const found = list.filter((g) => known.has(g));
    if (found.length === 0) {
      throw new Error(
        `Cannot train: none of the ${list.length} genes of --target-genes ${listFile} is in the dataset ` +
          `(${list.slice(0, 5).join(", ")}${list.length > 5 ? ", …" : ""}; the dataset's genes are e.g. ${
            ds.genes.slice(0, 5).join(", ")
          })`,
      );
    }
    if (found.length >= G) {
      throw new Error(
        `Cannot train: --target-genes ${listFile} lists all ${G} genes of the dataset, which leaves no ` +
          `auxiliary genes (the auxiliary head needs at least one)`,
      );
    }
  } else if (o.nTarget >= G) {
    throw new Error(
      `Cannot train: --n-target ${o.nTarget} ${
        o.nTarget > G ? "is more than" : "takes all"
      } the ${G} genes ` +
        `of the dataset, which leaves no auxiliary genes: pass --n-target below ${G}`,
    );
  }

  // Patches, normalised expression, labels.
  say(`cutting ${crop}px patches from ${trainIds.length + valIds.length + testIds.length} section(s) …`);
  // The held-out spots apart, so that the seeded split below is the one of a run without them.
  const spots: { sec: Section; i: number; patch: RgbImage }[] = [];
  const testSpots: typeof spots = [];
  for (const sec of ds.sections) {
    const held = testIds.includes(sec.id);
    if (!held && !trainIds.includes(sec.id) && !valIds.includes(sec.id)) continue;
    const patches = await cutPatches(sec, crop, check);
    sec.spots.forEach((_, i) => (held ? testSpots : spots).push({ sec, i, patch: patches[i] }));
  }
  const isVal = (sp: { sec: Section }, k: number) =>
    valIds.length ? valIds.includes(sp.sec.id) : ((Math.imul(k + 1, 0x9e3779b1) >>> 0) ^ seed) % 10 === 0;
  const trainSpots = spots.filter((s, k) => !isVal(s, k)), valSpots = spots.filter((s, k) => isVal(s, k));
  if (trainSpots.length === 0 || valSpots.length === 0) {
    throw new Error("Cannot train: the training or validation set is empty");
  }
  const sel = selectTargetGenes(trainSpots.map((s) => s.sec.spots[s.i]), ds.genes, { n: o.nTarget, list });
  if (sel.missing.length) {
    say(
      `warning: ${sel.missing.length} listed target genes are absent from the data: ${
        sel.missing.slice(0, 5).join(", ")
      }…`,
    );
  }
  // The truth as `he2gene truth` writes it (cli/truth.ts), with the patches.
  const table = (rows: typeof spots): SpotTable => ({
    ...spotTruth(rows, sel),
    patches: rows.map((r) => r.patch),
  });
  const train = table(trainSpots), val = table(valSpots);
  const test = testSpots.length ? table(testSpots) : null;
  const unlabelled = [...train.tumor].filter((t) => t < 0).length;
  if (unlabelled) say(`note: ${unlabelled} training spots have no tumour label; the tumour loss skips them`);
  let mean: [number, number, number] | undefined, std: [number, number, number] | undefined;
  if (v["norm-from-data"]) {
    const s = [0, 0, 0], q = [0, 0, 0];
    let n = 0;
    for (const p of train.patches) {
      for (let i = 0; i < p.data.length; i += 3) {
        for (let c = 0; c < 3; c++) {
          const x = p.data[i + c] / 255;
          s[c] += x;
          q[c] += x * x;
        }
        n++;
      }
    }
    mean = s.map((x) => x / n) as [number, number, number];
    std = q.map((x, c) => Math.sqrt(x / n - mean![c] ** 2)) as [number, number, number];
    say(
      `normalising with the data's mean ${mean.map((x) => x.toFixed(4))} and std ${
        std.map((x) => x.toFixed(4))
      }`,
    );
  }

  check();
  const init = v.init ? (await readCheckpoint(v.init)).tensors : undefined;
  const engine = await createEngine();
  try {
    const said = await prepareTuning(engine, v.tuneMode, (s) => !v.quiet && console.error(s));
    if (!v.quiet) console.error(said);
    if (stain !== "none") {
      const target = v["stain-ref"]
        ? (stain === "macenko" ? fitMacenko : fitReinhard)(
          decodeImage(await Deno.readFile(v["stain-ref"]), v["stain-ref"]),
        )
        : MACENKO_DEFAULT_TARGET;
      let skipped = 0;
      for (const t of test ? [train, val, test] : [train, val]) {
        // Patches of one size are normalised together (in chunks that fit one storage binding).
        for (let i0 = 0; i0 < t.patches.length; i0 += 512) {
          check();
          const res = await normalizeStainImages(engine, t.patches.slice(i0, i0 + 512), stain, target);
          skipped += res.skipped.length;
        }
      }
      say(
        `stain-normalised the patches (${stain})${
          skipped ? `; ${skipped} with too little tissue left unchanged` : ""
        }`,
      );
    }
    check();
    if (v.force && earlier.length > 0) {
      // --force: the previous run's files go only now, once the new run is ready to start.
      for (const f of earlier) await Deno.remove(join(v.out, f));
      say(`--force: removed the previous run's ${earlier.join(", ")} from ${v.out}`);
    }
    if (v.encoder) {
      // What both ways of training on an encoder take.
      const run = {
        kind: v.encoder,
        weights: v.weights!,
        config: v.config,
        train,
        val,
        test,
        cfg: o.train,
        batchSize,
        epochs: o.epochs,
        patience: o.patience,
        seed,
        out: v.out,
        resume: v.resume,
        quiet: v.quiet,
        compress: v.compress,
        say,
        interrupted,
      };
      if (v["unfreeze-last"] !== undefined) {
        await fineTuneOnEncoder(engine, { ...run, k: Number(v["unfreeze-last"]) });
      } else {
        await trainOnEncoder(engine, {
          ...run,
          head: v.head ?? "linear",
          hidden: v.hidden,
          crop,
          stain: stain === "none" ? "none" : `${stain}${v["stain-ref"] ? ` ${v["stain-ref"]}` : ""}`,
          sections: ds.sections.map((s) => s.id).filter((s) =>
            [...trainIds, ...valIds, ...testIds].includes(s)
          ),
        });
      }
      return;
    }
    say(
      `training HE2Gene-${
        variant === "spat" ? "Spat" : "Base"
      } (${backbone.name}) on ${train.names.length} spots, ` +
        `validating on ${val.names.length}; ${train.targetGenes.length} target / ${train.auxGenes.length} aux genes; ` +
        `adapter ${engine.adapterInfo.name}`,
    );
    const { model, history, best } = await trainModel(engine, train, val, {
      config: { backbone, variant, targetGenes: train.targetGenes.length, auxGenes: train.auxGenes.length },
      train: o.train,
      batchSize,
      epochs: o.epochs,
      patience: o.patience,
      imageSize,
      seed,
      out: v.out,
      resume: v.resume,
      init,
      initBackbone: pretrained?.tensors,
      // A pretrained backbone gets PyTorch's fresh heads, as the original's pretrained=True.
      biasFromMeans: !init && !pretrained,
      interrupt: interrupted,
      quiet: v.quiet,
      checkpoint: v.checkpoint,
      mean,
      std,
    });
    try {
      if (interrupted()) {
        throw new Interrupted(
          `training had finished (checkpoint saved in ${v.out}) but val_predictions.npz and val_truth.npz ` +
            `${
              test ? "and the test_*.npz files " : ""
            }were not written: run again with --resume to write them`,
        );
      }
      // As in training (no augmentation), in batches of at most 64.
      const o = { batchSize: Math.min(batchSize, 64), imageSize, mean, std };
      await writeRunPredictions(v.out, {
        train,
        val,
        valPredictions: await predictTable(model, val, o),
        test,
        testPredictions: test ? await predictTable(model, test, o) : undefined,
        compress: v.compress,
      });
    } finally {
      model.dispose();
    }
    console.log(
      `${history.length} epochs; best epoch ${best.epoch} (validation target MSE ${
        best.valMse.toFixed(4)
      }). ` +
        `Files in ${v.out}: best.safetensors, checkpoint.safetensors, log.jsonl, val_predictions.npz, val_truth.npz` +
        `${
          test
            ? `, test_predictions.npz, test_truth.npz, test_baseline.npz (${test.names.length} held-out spots)`
            : ""
        }.\n` +
        `Score: deno task he2gene evaluate ${join(v.out, "val_predictions.npz")} --truth ${
          join(v.out, "val_truth.npz")
        } ` +
        `--genes ../shared/data/her2st/her_hvg_cut_1000.npy`,
    );
  } finally {
    engine.destroy();
  }
}
