/**
 * `he2gene embed (DIR | SLIDE --spots FILE | SLIDE --tile) --encoder resnet50|he2gene --weights FILE --out OUT`:
 * one feature vector per patch from an image encoder, in `OUT/features.npz` (`features` [N, D] float32,
 * `names` [N]; for a slide also `pixel` [N, 2] level-0 centres and `grid` [N, 2] array positions or tile
 * columns and rows), written under a temporary name and renamed at the end. A slide's patches are laid out
 * and read as `predict-slide` does (`slideLayout`), in batches, the next read while the GPU encodes.
 *
 * - `resnet50` (any torchvision ResNet): a torchvision state dict in its ImageNet layout (`conv1.weight`,
 *   `bn1.*`, `layer1.0.…`, `fc.*` — `fc` is ignored); the 2048 globally pooled values of ResNet-50, inputs
 *   normalised with ImageNet's mean and std, as torchvision's model with `fc = nn.Identity()` in eval mode.
 * - `he2gene`: an HE2Gene checkpoint (`model_base.pt`, `model_spat.pt`, our `.safetensors`); its backbone's
 *   pooled features (the heads' input), normalised as HE2Gene is.
 *
 * Patches are named and read as `predict-patches` does; each is resized to 224 × 224 with PIL's bilinear
 * (a timm ViT: timm's eval transform from its config, see pipeline/embed.ts `encoderInput`).
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { createEngine } from "../engine/engine.ts";
import { type Encoder, ResNetEncoder, torchvisionResNet } from "../model/encoder.ts";
import { ViTEncoder } from "../model/vit.ts";
import type { HostTensor } from "../model/he2gene.ts";
import {
  embedPatches,
  embedSlide,
  featuresNpz,
  type PatchFeatures,
  type SlideFeatures,
} from "../pipeline/embed.ts";
import { MIN_TILE_PX } from "../pipeline/predict_slide.ts";
import { openSlide } from "../slide/wsi.ts";
import { positiveNumber, slideLayout } from "./predict_slide.ts";
import { prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import { readCheckpoint } from "./checkpoint.ts";
import { ENCODER_META_KEY, encoderRecord } from "../pipeline/checkpoint.ts";
import { Progress } from "./progress.ts";
import { checkInputs, interruptSignal, UsageError } from "./errors.ts";
import { parseTuneMode, prepareTuning } from "./tune.ts";
import { listPatches } from "./predict_patches.ts";

/** The encoders `--encoder` names. */
export const ENCODERS = ["resnet50", "he2gene", "timm"] as const;
export type EncoderName = typeof ENCODERS[number];
const ENCODER_LIST = `${ENCODERS.slice(0, -1).join(", ")} or ${ENCODERS.at(-1)}`;

export const EMBED_USAGE =
  "embed (DIR | SLIDE --spots FILE | SLIDE --tile) --encoder resnet50|he2gene|timm --weights FILE\n" +
  "      [--config FILE] [--pool token|avg|token+avg] [--out ./features] [--batch-size 8] [--compress] [--tune cached|auto|off] [--quiet]\n" +
  "      slide options as predict-slide: [--section NAME] [--crop-size 150 | --crop-um UM] [--tile-px PX |\n" +
  "      --tile-um 100] [--min-tissue 0.5] [--max-tiles N] [--mpp MPP] [--scalefactors FILE]\n\n" +
  "  DIR          patches named {section}_{x}_{y}.{tif,png,jpg} (as predict-patches)\n" +
  "  SLIDE        SVS / TIFF / JPEG / PNG, read in batches as predict-slide: at --spots (her2st\n" +
  "               *_selection.tsv, Visium tissue_positions(_list).csv, CSV x,y,pixel_x,pixel_y) or --tile\n" +
  "               over the tissue; features.npz then also holds pixel [N, 2] and grid [N, 2]\n" +
  "  --encoder    resnet50: a torchvision ResNet state dict (ImageNet layout, e.g. resnet50-0676ba61.pth or\n" +
  "               resnet50-11ad3fa6.pth from torchvision; fc is ignored), ImageNet normalisation;\n" +
  "               he2gene: an HE2Gene checkpoint (model_base.pt, model_spat.pt, our .safetensors), its\n" +
  "               backbone's pooled features, HE2Gene's normalisation;\n" +
  "               timm: a timm Vision Transformer from a Hugging Face folder (config.json with architecture,\n" +
  "               model_args, pretrained_cfg; model.safetensors or pytorch_model.bin): its pooled features\n" +
  "               (forward_head(pre_logits=True)), the config's input size, mean and std\n" +
  "  --weights    the encoder's weights (.pth / .pt / .safetensors / .bin), or with timm the model's folder\n" +
  "  --config     timm's config.json (default: the one in the folder, or beside the weights file)\n" +
  "  --pool       timm: override the config's global_pool — token (class token), avg (mean of the patch\n" +
  "               tokens) or token+avg (both side by side, 2D: Virchow/Virchow2's embedding, whose config\n" +
  '               says global_pool "")\n' +
  "  --out        output folder (default ./features): features.npz with features [N, D] float32, names [N]\n" +
  "  --batch-size patches per GPU batch (default 8)\n" +
  "  --compress   deflate features.npz's arrays (as np.savez_compressed)";

/** Read `weights` as the `--encoder` named. */
export async function loadEncoder(
  engine: Parameters<typeof ResNetEncoder.fromTorchvision>[0],
  encoder: EncoderName,
  weights: string,
  config?: string,
  warn: (s: string) => void = () => {},
  pool?: string,
): Promise<Encoder> {
  if (encoder === "timm") return await loadTimm(engine, weights, config, warn, pool);
  const { tensors, metadata } = await readCheckpoint(weights);
  if (metadata[ENCODER_META_KEY] !== undefined) {
    // `train --encoder`'s heads checkpoint: the encoder's weights are not in it.
    const rec = encoderRecord(metadata, weights);
    throw new Error(
      `Cannot read ${weights} as an encoder: it holds heads trained on a ${rec.name} encoder, not the ` +
        `encoder's weights; embed with the encoder's own (--encoder ${rec.kind} --weights ${rec.weights.path})`,
    );
  }
  return buildEncoder(engine, encoder, tensors, undefined, weights);
}

/** An encoder of `kind` from its weights in memory (`config`: timm's, parsed; `file` names them in errors). */
export function buildEncoder(
  engine: Parameters<typeof ResNetEncoder.fromTorchvision>[0],
  kind: EncoderName,
  tensors: Map<string, HostTensor>,
  config: unknown,
  file: string,
): Encoder {
  if (kind === "timm") return ViTEncoder.fromTimm(engine, config, tensors, file);
  return kind === "resnet50"
    ? ResNetEncoder.fromTorchvision(engine, torchvisionResNet(tensors, file))
    : ResNetEncoder.fromHE2Gene(engine, tensors, file);
}

/**
 * A timm ViT from a Hugging Face folder (or a weights file with `config`): `model.safetensors` preferred to
 * `pytorch_model.bin`; `config.json` from `config`, else the folder's / the file's neighbour.
 */
async function loadTimm(
  engine: Parameters<typeof ResNetEncoder.fromTorchvision>[0],
  weights: string,
  config: string | undefined,
  warn: (s: string) => void,
  pool?: string,
): Promise<Encoder> {
  let file = weights;
  if ((await Deno.stat(weights)).isDirectory) {
    const found = ["model.safetensors", "pytorch_model.bin"].map((f) => join(weights, f))
      .find((f) => existsFile(f));
    if (!found) {
      throw new Error(`Cannot find the weights in ${weights}: no model.safetensors or pytorch_model.bin`);
    }
    file = found;
  }
  const cfgPath = config ?? join(dirname(file), "config.json");
  let cfgText: string;
  try {
    cfgText = await Deno.readTextFile(cfgPath);
  } catch (e) {
    throw new Error(
      `Cannot read timm's config ${cfgPath}${config ? "" : " (give it with --config)"}: ${
        (e as Error).message
      }`,
    );
  }
  let cfg: unknown;
  try {
    cfg = JSON.parse(cfgText);
  } catch (e) {
    throw new Error(`Cannot read ${cfgPath}: not JSON (${(e as Error).message})`);
  }
  if (pool !== undefined && cfg && typeof cfg === "object") {
    // --pool overrides the config's global_pool (token+avg is ours: timm has no such value).
    const c = cfg as { model_args?: Record<string, unknown> };
    c.model_args = { ...c.model_args, global_pool: pool };
  }
  const { tensors } = await readCheckpoint(file);
  const enc = ViTEncoder.fromTimm(engine, cfg, tensors, file);
  const pre = enc.config.preprocess;
  if (pre.interpolation !== "bilinear" && pre.interpolation !== "bicubic") {
    warn(
      `warning: ${cfgPath} asks for ${pre.interpolation} resizing; he2gene resizes with PIL's bicubic ` +
        `instead (bilinear and bicubic only), so features will differ slightly from timm's`,
    );
  }
  if (pre.cropMode !== undefined && pre.cropMode !== "center" && pre.cropMode !== "squash") {
    warn(`warning: ${cfgPath} has crop_mode ${pre.cropMode}; he2gene crops as crop_mode center`);
  }
  return enc;
}

function existsFile(path: string): boolean {
  try {
    return Deno.statSync(path).isFile;
  } catch {
    return false;
  }
}

/** CLI entry: parse arguments and run. */
export async function runEmbed(args: string[]): Promise<void> {
  const { values: v, positionals } = parseArgs({
    args,
    options: {
      encoder: { type: "string" },
      weights: { type: "string" },
      config: { type: "string" },
      pool: { type: "string" },
      out: { type: "string", default: "features" },
      "batch-size": { type: "string", default: "8" },
      compress: { type: "boolean", default: false },
      tune: { type: "string" },
      quiet: { type: "boolean", default: false },
      spots: { type: "string" },
      tile: { type: "boolean", default: false },
      section: { type: "string" },
      "crop-size": { type: "string" },
      "crop-um": { type: "string" },
      "tile-px": { type: "string" },
      "tile-um": { type: "string" },
      "min-tissue": { type: "string" },
      "max-tiles": { type: "string" },
      mpp: { type: "string" },
      scalefactors: { type: "string" },
    },
    allowPositionals: true,
    strict: true,
  });
  const onSlide = v.spots !== undefined || v.tile;
  if (positionals.length !== 1) {
    throw new UsageError(
      onSlide ? "expected one SLIDE" : "expected one patch folder (DIR) or a SLIDE with --spots / --tile",
    );
  }
  const encoder = v.encoder;
  if (encoder === undefined) throw new UsageError(`--encoder is required (${ENCODER_LIST})`);
  if (!(ENCODERS as readonly string[]).includes(encoder)) {
    throw new UsageError(`--encoder must be ${ENCODER_LIST}, current value is ${encoder}`);
  }
  if (v.weights === undefined) throw new UsageError("--weights is required (the encoder's weights)");
  const batchSize = Number(v["batch-size"]);
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`--batch-size must be an integer ≥ 1, current value is ${v["batch-size"]}`);
  }
  if (v.spots !== undefined && v.tile) throw new UsageError("give either --spots FILE or --tile, not both");
  const slideOnly = [
    "section",
    "crop-size",
    "crop-um",
    "tile-px",
    "tile-um",
    "min-tissue",
    "max-tiles",
    "mpp",
    "scalefactors",
  ] as const;
  const stray = slideOnly.find((k) => v[k] !== undefined);
  if (!onSlide && stray) throw new UsageError(`--${stray} applies to a slide (with --spots FILE or --tile)`);
  if (v.tile && (v["crop-size"] || v["crop-um"])) {
    throw new UsageError("--crop-size / --crop-um apply to --spots; tiles are --tile-px / --tile-um squares");
  }
  if (v.spots && (v["tile-px"] || v["tile-um"] || v["min-tissue"] || v["max-tiles"])) {
    throw new UsageError("--tile-px / --tile-um / --min-tissue / --max-tiles apply to --tile");
  }
  const minTissue = v["min-tissue"] === undefined ? undefined : Number(v["min-tissue"]);
  if (minTissue !== undefined && !(minTissue >= 0 && minTissue <= 1)) {
    throw new UsageError(`--min-tissue must be in [0, 1], current value is ${v["min-tissue"]}`);
  }
  const layout = {
    spots: v.spots,
    section: v.section,
    cropSize: positiveNumber(v["crop-size"], "--crop-size", true),
    cropUm: positiveNumber(v["crop-um"], "--crop-um"),
    tilePx: positiveNumber(v["tile-px"], "--tile-px", true),
    tileUm: positiveNumber(v["tile-um"], "--tile-um"),
    minTissue,
    maxTiles: positiveNumber(v["max-tiles"], "--max-tiles", true),
    scalefactors: v.scalefactors,
    quiet: v.quiet,
  };
  const mpp = positiveNumber(v.mpp, "--mpp");
  if (layout.tilePx !== undefined && layout.tilePx < MIN_TILE_PX) {
    throw new UsageError(
      `--tile-px must be at least ${MIN_TILE_PX} (pixels of the slide's level 0), current value is ${layout.tilePx}`,
    );
  }
  if (v.config !== undefined && encoder !== "timm") throw new UsageError("--config is for --encoder timm");
  if (v.pool !== undefined && encoder !== "timm") throw new UsageError("--pool is for --encoder timm");
  if (v.pool !== undefined && !["token", "avg", "token+avg"].includes(v.pool)) {
    throw new UsageError(`--pool must be token, avg or token+avg, current value is ${v.pool}`);
  }
  const tune = parseTuneMode(v.tune);
  const input = positionals[0], out = v.out!, quiet = v.quiet;
  await checkInputs([
    [onSlide ? "the slide" : "the patch folder", input, onSlide ? "file" : "folder"],
    ["--weights", v.weights, encoder === "timm" ? "file or folder" : "file"],
    ["--config", v.config, "file"],
    ["--spots", v.spots, "file"],
  ]);
  const t0 = performance.now();
  const bar = (n: number, what: string) => {
    const b = new Progress(what, n, quiet);
    let shown = 0;
    return {
      onProgress: (done: number) => {
        b.tick(done - shown);
        shown = done;
      },
      done: () => b.done(),
    };
  };
  let f: PatchFeatures | SlideFeatures;
  if (onSlide) {
    const slide = await openSlide(
      input,
      mpp ? { mpp: { x: mpp, y: mpp, source: "option", detail: `--mpp ${mpp}` } } : {},
    );
    try {
      const { patches, patchPx } = await slideLayout(slide, input, layout);
      await prepareOutputDir(out);
      f = await withEncoder(
        encoder as EncoderName,
        v.weights,
        { config: v.config, pool: v.pool },
        tune,
        quiet,
        async (engine, enc) => {
          if (!quiet) {
            console.error(`${patches.length} ${v.tile ? "tiles" : "spots"} of ${patchPx} px → ${enc.name}`);
          }
          const p = bar(patches.length, v.tile ? "tiles" : "spots");
          const r = await embedSlide(engine, enc, slide, patches, {
            batchSize,
            signal: interruptSignal(),
            onProgress: p.onProgress,
          });
          p.done();
          return r;
        },
      );
    } finally {
      slide.close();
    }
  } else {
    const files = await listPatches(input);
    await prepareOutputDir(out);
    f = await withEncoder(
      encoder as EncoderName,
      v.weights,
      { config: v.config, pool: v.pool },
      tune,
      quiet,
      async (engine, enc) => {
        const pathOf = new Map(files.map(({ name, file }) => [name, join(input, file)]));
        const images = files.map(({ name }) => ({
          name,
          bytes: async () => {
            try {
              return await Deno.readFile(pathOf.get(name)!);
            } catch (e) {
              throw new Error(`Cannot read patch ${pathOf.get(name)}: ${(e as Error).message}`);
            }
          },
        }));
        const p = bar(files.length, "patches");
        const r = await embedPatches(engine, enc, images, {
          batchSize,
          signal: interruptSignal(),
          onProgress: p.onProgress,
          onWarning: (_, m) => !quiet && console.error(`warning: ${m}`),
          label: (name) => pathOf.get(name)!,
        });
        p.done();
        return r;
      },
    );
  }
  await writeFilesAtomic(out, [["features.npz", featuresNpz(f, { compress: v.compress })]], {
    signal: interruptSignal(),
  });
  console.log(
    `${f.names.length} ${
      onSlide ? (v.tile ? "tiles" : "spots") : "patches"
    }, ${f.dim} features each (${f.encoder}) in ${((performance.now() - t0) / 1000).toFixed(1)} s → ${
      join(out, "features.npz")
    }`,
  );
}

/** Run `fn` with an engine (tuning table applied) and the encoder, releasing both afterwards. */
async function withEncoder<T>(
  encoder: EncoderName,
  weights: string,
  o: { config?: string; pool?: string },
  tune: ReturnType<typeof parseTuneMode>,
  quiet: boolean | undefined,
  fn: (engine: Awaited<ReturnType<typeof createEngine>>, enc: Encoder) => Promise<T>,
): Promise<T> {
  const engine = await createEngine();
  try {
    const said = await prepareTuning(engine, tune, (s) => !quiet && console.error(s));
    if (!quiet) console.error(said);
    const warn = (s: string) => !quiet && console.error(s);
    const enc = await loadEncoder(engine, encoder, weights, o.config, warn, o.pool);
    try {
      return await fn(engine, enc);
    } finally {
      enc.dispose();
    }
  } finally {
    engine.destroy();
  }
}
