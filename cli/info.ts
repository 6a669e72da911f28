/**
 * `he2gene info`: the adapter, backend, limits and features; `he2gene info SLIDE`: a slide's levels and its
 * microns per pixel, with where they came from.
 * @module
 */
import { createEngine } from "../mod.ts";
import { openSlide, type SlideMpp } from "../slide/wsi.ts";
import { visiumImage } from "../slide/datasets/visium.ts";

const SHOWN_LIMITS = [
  "maxBufferSize",
  "maxStorageBufferBindingSize",
  "minStorageBufferOffsetAlignment",
  "maxComputeWorkgroupStorageSize",
  "maxComputeInvocationsPerWorkgroup",
  "maxComputeWorkgroupsPerDimension",
  "maxStorageBuffersPerShaderStage",
] as const;

/** Print what `createEngine()` finds on this machine. */
export async function runInfo(options: { json: boolean }): Promise<void> {
  const engine = await createEngine();
  const limits = Object.fromEntries(
    SHOWN_LIMITS.map((k) => [k, (engine.limits as unknown as Record<string, number>)[k]]),
  );
  const info = { adapter: engine.adapterInfo, limits };
  if (options.json) {
    console.log(JSON.stringify(info, null, 2));
  } else {
    const a = engine.adapterInfo;
    console.log(`adapter:  ${a.name}${a.software ? " (software adapter: expect CPU speed)" : ""}`);
    console.log(`backend:  ${a.backend}`);
    console.log(`features: ${a.features.join(", ") || "(none)"}`);
    for (const [k, v] of Object.entries(limits)) console.log(`${k.padEnd(34)} ${v}`);
  }
  engine.destroy();
}

/** A number without float noise: 6 significant digits. */
const short = (v: number) => String(Number(v.toPrecision(6)));

/**
 * Print a slide's format, microns per pixel (x and y, and their source: `--mpp`, the Aperio description,
 * the TIFF resolution tags, OME-XML, or a Visium image's scale factors, in that order) and pyramid levels
 * (size, downsample, tile size). Needs no GPU.
 *
 * @example
 * ```ts ignore
 * await runSlideInfo("CMU-1-Small-Region.svs", { json: false });
 * // mpp:    x 0.499, y 0.499 µm per level-0 pixel, from the Aperio ImageDescription (MPP = 0.4990)
 * ```
 */
export async function runSlideInfo(
  path: string,
  o: { json: boolean; mpp?: number; scalefactors?: string },
): Promise<void> {
  const slide = await openSlide(
    path,
    o.mpp ? { mpp: { x: o.mpp, y: o.mpp, source: "option", detail: `--mpp ${o.mpp}` } } : {},
  );
  try {
    const visium = await visiumImage(path, { scalefactors: o.scalefactors });
    const mpp: SlideMpp | null = slide.resolution ?? visium?.mpp ?? null;
    if (o.json) {
      const info = {
        path,
        format: slide.format,
        mpp,
        levels: slide.levels,
        ...(visium
          ? {
            visium: {
              image: visium.kind,
              scalefactors: visium.scalefactors,
              spot_diameter_px: visium.spotDiameter,
            },
          }
          : {}),
      };
      console.log(JSON.stringify(info, null, 2));
      return;
    }
    const n = slide.levels.length;
    console.log(`slide:  ${path} (${slide.format.toUpperCase()}, ${n} level${n === 1 ? "" : "s"})`);
    console.log(
      mpp
        ? `mpp:    x ${short(mpp.x)}, y ${short(mpp.y)} µm per level-0 pixel, from ${mpp.detail}`
        : "mpp:    not recorded in the file: pass --mpp, or sizes in pixels (--tile-px, --crop-size)",
    );
    if (visium) {
      console.log(
        `visium: Space Ranger's ${visium.kind} image: full-resolution positions × ` +
          `tissue_${visium.kind}_scalef ${visium.scale}` +
          `${visium.spotDiameter === null ? "" : `; a spot is ${short(visium.spotDiameter)} px across`}`,
      );
    }
    const rows = slide.levels.map((l, k) => [
      String(k),
      `${l.width} × ${l.height}`,
      short(l.downsample),
      l.tileWidth ? `${l.tileWidth} × ${l.tileHeight}` : "-",
    ]);
    const head = ["level", "width × height", "downsample", "tile"];
    const w = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    console.log("levels:");
    for (const r of [head, ...rows]) console.log("  " + r.map((c, i) => c.padEnd(w[i])).join("  ").trimEnd());
  } finally {
    slide.close();
  }
}
