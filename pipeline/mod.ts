/**
 * The pipelines between the model and the CLI: bytes in, typed results out, progress through callbacks.
 *
 * @module
 */
export {
  patchCsvs,
  patchesH5ad,
  type PatchImage,
  patchNpz,
  type PatchPredictions,
  predictPatches,
  type PredictPatchesOptions,
} from "./predict_patches.ts";
export {
  GRID_WINDOWS,
  predictViews,
  type StainTarget,
  type Tta,
  TTAS,
  viewBoxes,
  viewCount,
  type ViewPredictions,
} from "./views.ts";
export { type EmbedOptions, embedPatches, featuresNpz, type PatchFeatures } from "./embed.ts";
