/**
 * The pipelines between the model and the CLI — prediction on patches and on slides (at spots or over the
 * tissue), training and evaluation — as library functions: bytes or objects in memory in, typed results
 * out, progress and warnings through callbacks, cancellation through an `AbortSignal`, outputs encoded by
 * pure functions. No `Deno.*`: the same code runs in a browser.
 *
 * @example
 * ```ts
 * import { createEngine } from "../mod.ts";
 * import { loadCheckpoint, patchCsvs, predictPatches } from "./mod.ts";
 * const engine = await createEngine();
 * const { model, targetGenes, auxGenes } = loadCheckpoint(engine, ckptBytes, "model_base.pt");
 * const p = await predictPatches(engine, model, [{ name: "C2_25_13", bytes: tifBytes }], {
 *   tta: "tta", batchSize: 4, targetGenes, auxGenes, onProgress: (done, n) => console.log(done, n),
 * });
 * console.log(patchCsvs(p)["target_count_pred.csv"]);
 * ```
 * @module
 */
export {
  checkpointTensors,
  ENCODER_META_KEY,
  type EncoderRecord,
  encoderRecord,
  headKindOf,
  headsCheckpoint,
  headsFromTensors,
  loadCheckpoint,
  type LoadedModel,
  modelCheckpoint,
  modelFromTensors,
  parseCheckpoint,
} from "./checkpoint.ts";
export {
  type EvaluateResult,
  type EvaluationHead,
  type EvaluationTable,
  type HeadMetrics,
  type MseSummary,
  scorePredictions,
  toJson,
} from "./evaluate.ts";
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
  MAX_TILES,
  MIN_TILE_PX,
  predictSlide,
  type PredictSlideOptions,
  type RegionThumbnail,
  SLIDE_STAGES,
  type SlideCsvs,
  slideCsvs,
  slideGeoJson,
  slideH5ad,
  slideNpz,
  type SlidePatch,
  type SlidePredictions,
  slideThumbnail,
  SPATIAL_IMAGE_PX,
  type SpatialImages,
  spatialImages,
  spotPatches,
  tilePatches,
} from "./predict_slide.ts";
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
export {
  type EmbedOptions,
  embedPatches,
  embedSlide,
  featuresNpz,
  type PatchFeatures,
  type SlideFeatures,
} from "./embed.ts";
export {
  type CheckpointEntries,
  type EpochLog,
  memoryTrainStore,
  neighbours,
  predictTable,
  scoreTable,
  type SpotTable,
  TrainingInterrupted,
  trainSpots,
  type TrainSpotsOptions,
  type TrainStore,
} from "./train.ts";
export {
  DEFAULT_HEADS_TRAIN,
  encodeImages,
  type FeatureTable,
  fitRidgeHeads,
  predictFeatureTable,
  trainHeads,
  type TrainHeadsOptions,
} from "./train_heads.ts";
