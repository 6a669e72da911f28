/**
 * Spatial-transcriptomics datasets read into one shape ({@linkcode SpatialDataset}: sections with a slide
 * path and spots with pixel / array positions, counts and labels): her2st, ST-Net's HBCIS, 10x Visium.
 *
 * @example
 * ```ts ignore
 * import { readHer2st, readVisium } from "./mod.ts";
 * const her2st = await readHer2st("../shared/data/her2st");
 * const visium = await readVisium("../shared/data/visium", { image: "lowres" });
 * for (const w of her2st.warnings) console.warn(w.message);
 * ```
 * @module
 */
export {
  DatasetError,
  type DatasetWarning,
  imageSize,
  type Section,
  type SpatialDataset,
  type Spot,
} from "./types.ts";
export { type Her2stOptions, readHer2st } from "./her2st.ts";
export { type HbcisOptions, readGenes, readHbcis } from "./hbcis.ts";
export {
  readH5,
  readMex,
  readScalefactors,
  readVisium,
  VISIUM_SPOT_UM,
  type VisiumCounts,
  type VisiumImage,
  visiumImage,
  visiumImageKind,
  type VisiumOptions,
  type VisiumScalefactors,
} from "./visium.ts";
