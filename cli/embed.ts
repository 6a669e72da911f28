/**
 * `he2gene embed DIR --encoder resnet50|he2gene --weights FILE --out OUT`: one feature vector per patch from
 * an image encoder, in `OUT/features.npz` (`features` [N, D] float32, `names` [N]), written under a
 * temporary name and renamed at the end.
 *
 * - `resnet50` (any torchvision ResNet): a torchvision state dict in its ImageNet layout (`conv1.weight`,
 *   `bn1.*`, `layer1.0.…`, `fc.*` — `fc` is ignored); the 2048 globally pooled values of ResNet-50, inputs
 *   normalised with ImageNet's mean and std, as torchvision's model with `fc = nn.Identity()` in eval mode.
 * - `he2gene`: an HE2Gene checkpoint (`model_base.pt`, `model_spat.pt`, our `.safetensors`); its backbone's
 *   pooled features (the heads' input), normalised as HE2Gene is.
 *
 * Patches are named and read as `predict-patches` does; each is resized to 224 × 224 with PIL's bilinear.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { dirname, join } from "node:path";
import { createEngine } from "../engine/engine.ts";
import { type Encoder, ResNetEncoder, torchvisionResNet } from "../model/encoder.ts";
import { ViTEncoder } from "../model/vit.ts";
import { embedPatches, featuresNpz, type PatchFeatures } from "../pipeline/embed.ts";
import { prepareOutputDir, writeFilesAtomic } from "../slide/npz.ts";
import { readCheckpoint } from "./checkpoint.ts";
import { Progress } from "./progress.ts";
import { checkInputs, interruptSignal, UsageError } from "./errors.ts";
import { parseTuneMode, prepareTuning } from "./tune.ts";
import { listPatches } from "./predict_patches.ts";

/** The encoders `--encoder` names. */
export const ENCODERS = ["resnet50", "he2gene", "timm"] as const;
export type EncoderName = typeof ENCODERS[number];

export const EMBED_USAGE =
  "embed DIR --encoder resnet50|he2gene|timm --weights FILE [--config FILE] [--out ./features] [--batch-size 8]\n" +
  "      [--compress] [--tune cached|auto|off] [--quiet]\n\n" +
  "  DIR          patches named {section}_{x}_{y}.{tif,png,jpg} (as predict-patches)\n" +
  "  --encoder    resnet50: a torchvision ResNet state dict (ImageNet layout, e.g. resnet50-0676ba61.pth or\n" +
  "               resnet50-11ad3fa6.pth from torchvision; fc is ignored), ImageNet normalisation;\n" +
  "               he2gene: an HE2Gene checkpoint (model_base.pt, model_spat.pt, our .safetensors), its\n" +
  "               backbone's pooled features, HE2Gene's normalisation;\n" +
  "               timm: a timm Vision Transformer from a Hugging Face folder (config.json with architecture,\n" +
  "               model_args, pretrained_cfg; model.safetensors or pytorch_model.bin): its pooled features\n" +
  "               (forward_head(pre_logits=True)), the config's input size, mean and std\n" +
  "  --weights    the encoder's weights (.pth / .pt / .safetensors / .bin), or with timm the model's folder\n" +
  "  --config     timm's config.json (default: the one in the folder, or beside the weights file)\n" +
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
): Promise<Encoder> {
  if (encoder === "timm") return await loadTimm(engine, weights, config, warn);
  const { tensors } = await readCheckpoint(weights);
  return encoder === "resnet50"
    ? ResNetEncoder.fromTorchvision(engine, torchvisionResNet(tensors, weights))
    : ResNetEncoder.fromHE2Gene(engine, tensors, weights);
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
  const { tensors } = await readCheckpoint(file);
  const enc = ViTEncoder.fromTimm(engine, cfg, tensors, file);
  const pre = enc.config.preprocess;
  if (pre.interpolation !== "bilinear") {
    warn(
      `warning: ${cfgPath} asks for ${pre.interpolation} resizing; he2gene resizes with PIL's bilinear only ` +
        `for now, so features will differ slightly from timm's`,
    );
  }
  if (pre.cropPct !== 1) {
    warn(`warning: ${cfgPath} has crop_pct ${pre.cropPct}; patches are resized whole (crop_pct 1)`);
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
  const { values, positionals } = parseArgs({
    args,
    options: {
      encoder: { type: "string" },
      weights: { type: "string" },
      config: { type: "string" },
      out: { type: "string", default: "features" },
      "batch-size": { type: "string", default: "8" },
      compress: { type: "boolean", default: false },
      tune: { type: "string" },
      quiet: { type: "boolean", default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError("expected one patch folder (DIR)");
  const encoder = values.encoder;
  if (encoder === undefined) throw new UsageError(`--encoder is required (${ENCODERS.join(" or ")})`);
  if (!(ENCODERS as readonly string[]).includes(encoder)) {
    throw new UsageError(`--encoder must be ${ENCODERS.join(" or ")}, current value is ${encoder}`);
  }
  if (values.weights === undefined) throw new UsageError("--weights is required (the encoder's weights)");
  const batchSize = Number(values["batch-size"]);
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`--batch-size must be an integer ≥ 1, current value is ${values["batch-size"]}`);
  }
  const tune = parseTuneMode(values.tune);
  const dir = positionals[0], out = values.out!, quiet = values.quiet;
  if (values.config !== undefined && encoder !== "timm") {
    throw new UsageError("--config is for --encoder timm");
  }
  await checkInputs([
    ["the patch folder", dir, "folder"],
    ["--weights", values.weights, encoder === "timm" ? "file or folder" : "file"],
    ["--config", values.config, "file"],
  ]);
  const files = await listPatches(dir);
  await prepareOutputDir(out);
  const t0 = performance.now();
  const engine = await createEngine();
  let f: PatchFeatures;
  try {
    const said = await prepareTuning(engine, tune, (s) => !quiet && console.error(s));
    if (!quiet) console.error(said);
    const enc = await loadEncoder(
      engine,
      encoder as EncoderName,
      values.weights,
      values.config,
      (s) => !quiet && console.error(s),
    );
    try {
      const pathOf = new Map(files.map(({ name, file }) => [name, join(dir, file)]));
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
      const bar = new Progress("patches", files.length, quiet);
      let shown = 0;
      f = await embedPatches(engine, enc, images, {
        batchSize,
        signal: interruptSignal(),
        onProgress: (done) => {
          bar.tick(done - shown);
          shown = done;
        },
        onWarning: (_, m) => !quiet && console.error(`warning: ${m}`),
        label: (name) => pathOf.get(name)!,
      });
      bar.done();
    } finally {
      enc.dispose();
    }
  } finally {
    engine.destroy();
  }
  await writeFilesAtomic(out, [["features.npz", featuresNpz(f, { compress: values.compress })]], {
    signal: interruptSignal(),
  });
  console.log(
    `${f.names.length} patches, ${f.dim} features each (${f.encoder}) in ${
      ((performance.now() - t0) / 1000).toFixed(1)
    } s → ${join(out, "features.npz")}`,
  );
}
