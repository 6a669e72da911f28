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
export {
  type AxisCoeffs,
  bilinearCoeffs,
  centerBox,
  type CropBox,
  cropCpu,
  PRECISION_BITS,
  resizeCpu,
  type ResizeCpuOptions,
} from "./resample.ts";
export {
  dihedral,
  DIHEDRAL_NAMES,
  dihedralCpu,
  dihedralEach,
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
  encodeZip,
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
export {
  drawBarLabel,
  drawText,
  encodePng,
  type GeneMapOptions,
  geneMapPng,
  textWidth,
  VIRIDIS,
  viridis,
  zScores,
} from "./png.ts";
export {
  aperioMpp,
  type MppSource,
  omeMpp,
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
