/**
 * The prediction options `predict-patches` and `predict-slide` share. The views and test-time augmentation
 * themselves live in `pipeline/views.ts` (re-exported here for the CLI files that still import them).
 *
 * @module
 */
import { UsageError } from "./errors.ts";
import { type Tta, TTAS } from "../pipeline/views.ts";

export {
  assertFinitePredictions,
  GRID_WINDOWS,
  MACENKO_DEFAULT_TARGET,
  predictViews,
  type StainTarget,
  type Tta,
  TTAS,
  viewBoxes,
  viewCount,
  type ViewPredictions,
} from "../pipeline/views.ts";

/** The options `predict-patches` and `predict-slide` share, in `node:util` `parseArgs` form. */
export const PREDICT_OPTIONS = {
  weights: { type: "string" },
  "encoder-weights": { type: "string" },
  out: { type: "string", default: "./output" },
  "batch-size": { type: "string", default: "4" },
  tta: { type: "string", default: "tta" },
  "target-genes": { type: "string" },
  "aux-genes": { type: "string" },
  quiet: { type: "boolean", default: false },
  tune: { type: "string", default: "cached" },
  compress: { type: "boolean", default: false },
} as const;

/** Check the shared options: `--weights` given, `--tta` known, `--batch-size` a positive integer. */
export function predictArgs(
  v: { weights?: string; tta?: string; "batch-size"?: string },
): { weights: string; tta: Tta; batchSize: number } {
  if (!v.weights) {
    throw new UsageError("--weights CKPT is required (model_base.pt, model_spat.pt or .safetensors)");
  }
  const tta = v.tta as Tta;
  if (!TTAS.includes(tta)) {
    throw new UsageError(`--tta must be one of ${TTAS.join(", ")}, current value is ${v.tta}`);
  }
  const batchSize = Number(v["batch-size"]);
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`--batch-size must be a positive integer, current value is ${v["batch-size"]}`);
  }
  return { weights: v.weights, tta, batchSize };
}
