/**
 * Images: decoding (TIFF / PNG / JPEG → 8-bit RGB, as PIL's `.convert("RGB")`), PIL-exact bilinear
 * resizing on the CPU and the GPU with HE2Gene's normalisation, crops, and dihedral test-time
 * augmentation.
 *
 * @example
 * ```ts
 * import { createEngine } from "../mod.ts";
 * import { decodeImage, resizeNormalize, uploadImages } from "./mod.ts";
 * const engine = await createEngine();
 * const img = decodeImage(await Deno.readFile("D2_6_22.tif"), "D2_6_22.tif");
 * const x = resizeNormalize(uploadImages(engine, [img])); // [1, 3, 224, 224], normalised
 * ```
 * @module
 */
export { assembleBatch, type BatchOptions } from "./batch.ts";
export { decodeImage, ImageDecodeError, type RgbImage, sniff } from "./decode.ts";
export { centerBox, type CropBox, cropCpu } from "./resample.ts";
export {
  dihedral,
  DIHEDRAL_NAMES,
  dihedralCpu,
  HE2GENE_MEAN,
  HE2GENE_STD,
  normalizeCpu,
  resizeNormalize,
  resizeNormalizeCpu,
  type ResizeOptions,
  uploadImages,
} from "./resize.ts";
export {
  decodeNpy,
  decodeNpz,
  encodeNpy,
  encodeNpz,
  type NpyArray,
  type NpyDtype,
  NpyError,
  readNpy,
  readNpz,
  toNumbers,
} from "./npy.ts";
export * from "./datasets/mod.ts";
export {
  type GeneSelection,
  GRID_OFFSETS,
  gridNeighbours,
  log1pNormalize,
  type SelectGenesOptions,
  selectTargetGenes,
} from "./genes.ts";
export {
  type GeoJsonClass,
  type GeoJsonFeature,
  type GeoJsonPredictions,
  NORMAL_CLASS,
  predictionFeature,
  predictionsGeoJson,
  TUMOR_CLASS,
  TUMOR_THRESHOLD,
} from "./geojson.ts";
export { cropPatch, type SyntheticSection, syntheticSection } from "./synthetic.ts";
export { encodePng, type GeneMapOptions, geneMapPng, VIRIDIS, viridis, zScores } from "./png.ts";
export {
  type MppSource,
  openSlide,
  type OpenSlideOptions,
  type Region,
  type Slide,
  SlideError,
  type SlideLevel,
  type SlideMpp,
} from "./wsi.ts";
export {
  applyMacenko,
  applyReinhard,
  fitMacenko,
  fitReinhard,
  MACENKO_DEFAULT_TARGET,
  macenkoCpu,
  type MacenkoOptions,
  type MacenkoTarget,
  normalizeStain,
  normalizeStainImages,
  reinhardCpu,
  type ReinhardOptions,
  type ReinhardTarget,
  type StainMethod,
  type StainResult,
} from "./stain.ts";
export {
  type SlideThumbnail,
  type Tile,
  tileNeighbours,
  type TileOptions,
  type TissueMask,
  tissueMask,
  tissueTiles,
} from "./tissue.ts";
export { canonicalSpotNames, parseSpots, spotFileFormat, type SpotRow } from "./spots.ts";
export { encodeRgbTiff, type RgbTiffOptions } from "./tiff_write.ts";
