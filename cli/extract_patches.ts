/**
 * `he2gene extract-patches SLIDE --spots FILE --out DIR`: cut one patch per spot, named
 * `{section}_{x}_{y}.tif` (array coordinates) and written as uncompressed RGB TIFF byte-for-byte in the
 * layout of HE2Gene's demo patches, so the original tools read ours and ours read theirs.
 *
 * Spot files: a her2st / ST `*_selection.tsv` (`x y new_x new_y pixel_x pixel_y selected`; rows with
 * selected = 0 are skipped), a Visium `tissue_positions(_list).csv` (in-tissue spots), or a CSV with
 * `x,y,pixel_x,pixel_y`. A spot file that lists a spot twice (two rows at one array position, or one
 * Visium barcode on two rows) is refused naming the rows, as is one without spots to use, with the reason
 * (empty, a header only, no spot selected / in tissue). Patches: `--crop-size` px (default 150) with
 * top-left = ⌊px⌋ − size/2 as the original, or `--crop-um` microns (needs the slide's resolution: the
 * file's, `--mpp`, or a Visium image's scale factors). Optional `--stain macenko|reinhard`.
 *
 * Visium straight from Space Ranger: on `tissue_hires_image.png` / `tissue_lowres_image.png`, the
 * full-resolution positions of `tissue_positions(_list).csv` are scaled by `tissue_{hires,lowres}_scalef`
 * of `scalefactors_json.json` (found beside the image, or `--scalefactors FILE`), and `--crop-size` is in
 * full-resolution pixels (the patch side in the image is `crop-size × scalef`, rounded), so the patches cover
 * what they cover on the full-resolution image (see {@linkcode spotLayout}).
 *
 * All or nothing: the patches are written into a temporary folder and moved into `--out` once every one
 * is written, so a failure (a full disk, Ctrl-C) leaves `--out` as it was and no folder the run made.
 * `--section` and the array coordinates become file names: path separators, `..` and `.` are refused.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, dirname, join, resolve } from "node:path";
import { createEngine, type Engine } from "../engine/engine.ts";
import { decodeImage, type RgbImage } from "../slide/decode.ts";
import {
  fitReinhard,
  MACENKO_DEFAULT_TARGET,
  normalizeStainImages,
  type StainMethod,
} from "../slide/stain.ts";
import { encodeRgbTiff } from "../slide/tiff_write.ts";
import { openSlide, type Slide, type SlideMpp } from "../slide/wsi.ts";
import { type VisiumImage, visiumImage, visiumImageKind } from "../slide/datasets/visium.ts";
import { makeDirs, removeCreatedDirs, renameAll } from "../slide/npz.ts";
import { checkInputs, checkInterrupt, unsafeFileNamePart, UsageError } from "./errors.ts";
import { Progress } from "./progress.ts";
import { parseSpots, spotFileFormat, type SpotRow } from "../slide/spots.ts";

export { parseSpots, spotFileFormat, type SpotRow };

/**
 * The error for a slide without microns per pixel when `what` (`100 µm tiles`, `50 µm patches`) needs
 * them: pass `pxFlag` (a size in pixels) or `--mpp`.
 */
export function noResolution(path: string, what: string, pxFlag: string): Error {
  return new Error(
    `${path} does not record its resolution, so ${what} have no size in pixels: pass ${pxFlag} or --mpp`,
  );
}

/** Spots placed on a slide: see {@linkcode spotLayout}. */
export interface SpotLayout {
  /** The spots, `px` / `py` in the slide's level-0 pixels. */
  spots: SpotRow[];
  /** Patch side in the slide's level-0 pixels. */
  size: number;
  /** µm per level-0 pixel: `--mpp`, the file's, else a Visium image's scale factors; null when none says. */
  mpp: SlideMpp | null;
  /** The Visium image the positions were scaled onto (null: the positions are the slide's pixels). */
  visium: VisiumImage | null;
  /** One line for the console on how the spots were placed, or null. */
  note: string | null;
}

/**
 * Place a spot file's spots (`file.spots`, parsed from `file.text`) on a slide (opened with `--mpp`
 * applied) and size their patches: `cropUm` µm (needs the resolution), else `cropSize` px (default 150).
 * Visium positions
 * (full-resolution pixels) on Space Ranger's `tissue_hires_image.png` / `tissue_lowres_image.png` are
 * multiplied by its scale factor from `scalefactors_json.json` (beside the image, or `o.scalefactors`), and
 * `cropSize` is then in full-resolution pixels too: the patch side in the image is `round(cropSize ×
 * scalef)`. Such an image with Visium positions and no scale-factor file is an error (its spots would land
 * at the wrong places); spot files in the image's pixels (her2st, `pixel_x` CSV) are never scaled.
 *
 * @example
 * ```ts ignore
 * const slide = await openSlide("spatial/tissue_lowres_image.png");
 * const path = "spatial/tissue_positions_list.csv", text = await readSpotFile(path);
 * const l = await spotLayout(slide, { path, text, spots: parseSpots(text, path) }, {});
 * // l.spots[i].px = pxl_col_in_fullres × 0.045, l.size = round(150 × 0.045) = 7
 * ```
 */
export async function spotLayout(
  slide: Slide,
  file: { path: string; text: string; spots: SpotRow[] },
  o: { cropSize?: number; cropUm?: number; scalefactors?: string },
): Promise<SpotLayout> {
  const { path: spotsPath, spots } = file;
  const fullres = spotFileFormat(file.text) === "visium";
  const visium = await visiumImage(slide.path, { scalefactors: o.scalefactors });
  const kind = visiumImageKind(slide.path);
  if (fullres && kind && !visium) {
    throw new Error(
      `${spotsPath} gives full-resolution positions and ${slide.path} is Space Ranger's ${kind} image: the ` +
        `scale between them is tissue_${kind}_scalef in scalefactors_json.json, which is not beside the ` +
        `image; pass --scalefactors FILE`,
    );
  }
  const scaled = fullres && visium !== null;
  const scale = scaled ? visium.scale : 1;
  const mpp = slide.resolution ?? visium?.mpp ?? null;
  const cropSize = o.cropSize ?? 150;
  let size: number;
  if (o.cropUm !== undefined) {
    if (!mpp) throw noResolution(slide.path, `${o.cropUm} µm patches`, "--crop-size");
    size = Math.round(o.cropUm / mpp.x);
  } else {
    size = Math.round(cropSize * scale);
  }
  if (!Number.isInteger(size) || size < 1) {
    throw new RangeError(
      o.cropUm !== undefined
        ? `--crop-um ${o.cropUm} is ${size} px at ${mpp!.x} µm/px (from ${mpp!.detail}); use a larger ` +
          `--crop-um`
        : scaled
        ? `--crop-size ${cropSize} full-resolution px is ${size} px of ${slide.path} (× ${scale}); use a ` +
          `larger --crop-size`
        : `The crop size must be a positive integer, current value is ${size}`,
    );
  }
  let note: string | null = null;
  if (scaled) {
    const k = `tissue_${visium!.kind}_scalef`;
    const spot = visium!.spotDiameter === null ? "" : `; a spot is ${visium!.spotDiameter.toFixed(1)} px`;
    note = `Visium ${visium!.kind} image: full-resolution positions × ${k} ${scale} (` +
      `${visium!.scalefactors.file}); patches of ${size} px` +
      `${o.cropUm === undefined ? ` (${cropSize} full-resolution px)` : ` (${o.cropUm} µm)`}${spot}`;
  }
  return {
    spots: !scaled ? spots : spots.map((s) => ({ ...s, px: s.px * scale, py: s.py * scale })),
    size,
    mpp,
    visium: scaled ? visium : null,
    note,
  };
}

/**
 * Read and parse a spot file; a folder, a missing or unreadable file is refused naming the path.
 *
 * @example
 * ```ts
 * const spots = await readSpots("C2_selection.tsv");
 * ```
 */
export async function readSpots(path: string): Promise<SpotRow[]> {
  return parseSpots(await readSpotFile(path), path);
}

/** The text of a spot file; a folder, a missing or unreadable file is refused naming the path. */
export async function readSpotFile(path: string): Promise<string> {
  try {
    if ((await Deno.stat(path)).isDirectory) {
      throw new Error(`Cannot read the spot file ${path}: it is a folder, not a file`);
    }
    return await Deno.readTextFile(path);
  } catch (e) {
    if ((e as Error).message.startsWith("Cannot read the spot file")) throw e;
    // Deno's message ends with the call and path ("… (os error 2): stat 'x'"); the path is said once.
    const why = (e as Error).message.replace(/: \w+ '.*'$/, "");
    throw new Error(`Cannot read the spot file ${path}: ${why}`);
  }
}

/** Why `--section` cannot start patch names, or null: see {@linkcode unsafeFileNamePart}, and no "." */
function badSection(section: string): string | null {
  return unsafeFileNamePart(section) ??
    (section.includes(".")
      ? 'it holds "." (a patch name ends at its first ".", so predict-patches would read another name)'
      : null);
}

/**
 * The folder the patches are written into before they are moved into `out`: when `out` does not exist, a
 * new hidden sibling (`.NAME.partial-XXXX`, renamed to `out` at the end; `created`: the parent folders made
 * for it, removed again on a failure); when it exists, a hidden folder inside it (`.he2gene-partial-XXXX`:
 * the same file system as `out` even when `out` is a link to another disk, so each move is a rename).
 */
async function makeStage(out: string): Promise<{ stage: string; created: string[]; outExisted: boolean }> {
  let outInfo: Deno.FileInfo | null = null;
  try {
    outInfo = await Deno.stat(out);
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) {
      throw new Error(`Cannot write to the output folder ${out}: ${(e as Error).message}`);
    }
  }
  if (outInfo && !outInfo.isDirectory) {
    throw new Error(`Cannot write to the output folder ${out}: it is a file, not a folder`);
  }
  let created: string[] = [];
  try {
    if (outInfo) {
      const stage = await Deno.makeTempDir({ dir: out, prefix: ".he2gene-partial-" });
      return { stage, created, outExisted: true };
    }
    const parent = dirname(resolve(out));
    created = await makeDirs(parent);
    const stage = await Deno.makeTempDir({ dir: parent, prefix: `.${basename(resolve(out))}.partial-` });
    return { stage, created, outExisted: false };
  } catch (e) {
    await removeCreatedDirs(created);
    throw new Error(`Cannot write to the output folder ${out}: ${(e as Error).message}`);
  }
}

/**
 * Move the patches of `stage` into `out`, all or nothing: when `out` did not exist the stage becomes it
 * (one rename); otherwise each patch is moved in, replacing a file of the same name (an earlier run's),
 * and a failure undoes the moves (see {@linkcode renameAll}).
 */
async function commitStage(stage: string, out: string, outExisted: boolean, names: string[]): Promise<void> {
  if (!outExisted) {
    try {
      await Deno.rename(stage, out);
      return;
    } catch (e) {
      // `out` was made meanwhile: move the files in instead.
      if (!(await Deno.stat(out).then((s) => s.isDirectory, () => false))) throw e;
    }
  }
  await renameAll(
    names.map((n) => [join(stage, n), join(out, n)]),
    (to) => join(stage, `.replaced-${basename(to)}`),
  );
}

/** CLI entry. */
export async function runExtractPatches(args: string[]): Promise<void> {
  const { values: v, positionals } = parseArgs({
    args,
    options: {
      spots: { type: "string" },
      out: { type: "string" },
      section: { type: "string" },
      "crop-size": { type: "string" },
      "crop-um": { type: "string" },
      mpp: { type: "string" },
      scalefactors: { type: "string" },
      stain: { type: "string", default: "none" },
      "stain-ref": { type: "string" },
      quiet: { type: "boolean", default: false },
    },
    allowPositionals: true,
    strict: true,
  });
  if (positionals.length !== 1) throw new UsageError("expected one SLIDE");
  if (!v.spots || !v.out) throw new UsageError("--spots FILE and --out DIR are required");
  const stain = v.stain as StainMethod;
  if (!["none", "macenko", "reinhard"].includes(stain)) {
    throw new UsageError(`--stain must be macenko, reinhard or none`);
  }
  if (stain === "reinhard" && !v["stain-ref"]) {
    throw new UsageError("--stain reinhard needs --stain-ref IMAGE");
  }
  if (v.section !== undefined) {
    const why = badSection(v.section);
    if (why) throw new UsageError(`--section "${v.section}" cannot start a file name: ${why}`);
  }
  const cropSize = v["crop-size"] === undefined ? undefined : Number(v["crop-size"]);
  if (cropSize !== undefined && !(Number.isInteger(cropSize) && cropSize >= 1)) {
    throw new UsageError(`the crop size must be a positive integer, current value is ${v["crop-size"]}`);
  }
  const positive = (flag: string, s: string | undefined) => {
    if (s === undefined) return undefined;
    const n = Number(s);
    if (!(Number.isFinite(n) && n > 0)) {
      throw new UsageError(`${flag} must be a positive number, current value is ${s}`);
    }
    return n;
  };
  const cropUm = positive("--crop-um", v["crop-um"]);
  const mpp = positive("--mpp", v.mpp);
  const slidePath = positionals[0];
  const out = v.out;
  await checkInputs([
    ["the slide", slidePath, "file"],
    ["--spots", v.spots, "file"],
    ["--stain-ref", v["stain-ref"], "file"],
  ]);
  const spotText = await readSpotFile(v.spots);
  const spotRows = parseSpots(spotText, v.spots);
  const section = v.section ?? basename(v.spots).split(/[_.]/)[0];
  // Everything that can fail on the inputs fails before anything is written.
  const target = stain === "reinhard"
    ? fitReinhard(decodeImage(await Deno.readFile(v["stain-ref"]!), v["stain-ref"]!))
    : MACENKO_DEFAULT_TARGET;
  const slide = await openSlide(
    slidePath,
    mpp ? { mpp: { x: mpp, y: mpp, source: "option", detail: `--mpp ${mpp}` } } : {},
  );
  const t0 = performance.now();
  let engine: Engine | null = null;
  try {
    const layout = await spotLayout(slide, { path: v.spots, text: spotText, spots: spotRows }, {
      cropSize,
      cropUm,
      scalefactors: v.scalefactors,
    });
    if (layout.note && !v.quiet) console.error(layout.note);
    const { spots, size } = layout;
    const [W, H] = [slide.levels[0].width, slide.levels[0].height];
    const outside = spots.filter((s) => s.px < 0 || s.py < 0 || s.px >= W || s.py >= H);
    if (outside.length === spots.length) {
      throw new Error(
        `Every spot of ${v.spots} falls outside ${slidePath} (${W}×${H}): wrong slide or pixel scale?`,
      );
    }
    if (outside.length && !v.quiet) {
      console.error(`warning: ${outside.length} spots fall outside the image (${W}×${H}) and are skipped`);
    }
    const keep = spots.filter((s) => !outside.includes(s));
    // The file names: {section}_{x}_{y}.tif, x and y integers (a "." would end the name early).
    const names: string[] = [];
    const seen = new Map<string, SpotRow>();
    for (const s of keep) {
      if (!Number.isInteger(s.x) || !Number.isInteger(s.y)) {
        throw new Error(
          `Cannot name the patch of the spot at pixel (${s.px}, ${s.py}) in ${v.spots}: its array ` +
            `coordinates (${s.x}, ${s.y}) are not integers`,
        );
      }
      const name = `${section}_${s.x}_${s.y}.tif`;
      const bad = unsafeFileNamePart(name);
      if (bad) throw new Error(`Cannot use the patch name "${name}" (from ${v.spots}): ${bad}`);
      const other = seen.get(name);
      if (other) {
        throw new Error(
          `Two spots of ${v.spots} have the array coordinates (${s.x}, ${s.y}) (pixels (${other.px}, ` +
            `${other.py}) and (${s.px}, ${s.py})): both would be written to ${name}`,
        );
      }
      seen.set(name, s);
      names.push(name);
    }
    engine = stain === "none" ? null : await createEngine();
    checkInterrupt();
    // The patches go into a temporary folder beside --out and are moved in once all are written, so a
    // failure (a full disk, Ctrl-C) leaves --out as it was and no folder the run made.
    const { stage, created, outExisted } = await makeStage(out);
    let edge = 0;
    try {
      const bar = new Progress("patches", keep.length, v.quiet);
      const batch = 256;
      for (let b0 = 0; b0 < keep.length; b0 += batch) {
        const part = keep.slice(b0, b0 + batch);
        const imgs: RgbImage[] = [];
        for (const s of part) {
          const r = await slide.readRegion(
            0,
            Math.floor(s.px) - Math.floor(size / 2),
            Math.floor(s.py) - Math.floor(size / 2),
            size,
            size,
          );
          if (r.outside) edge++;
          imgs.push({ width: r.width, height: r.height, channels: 3, data: r.data, warnings: [] });
        }
        if (engine) await normalizeStainImages(engine, imgs, stain, target);
        for (let i = 0; i < part.length; i++) {
          checkInterrupt();
          const file = join(stage, names[b0 + i]);
          try {
            await Deno.writeFile(file, encodeRgbTiff(size, size, imgs[i].data));
          } catch (e) {
            throw new Error(`Cannot write the patches into ${out}: ${(e as Error).message}`);
          }
        }
        bar.tick(part.length);
      }
      bar.done();
      checkInterrupt();
      try {
        await commitStage(stage, out, outExisted, names);
      } catch (e) {
        throw new Error(`Cannot move the patches into ${out}: ${(e as Error).message}`);
      }
    } catch (e) {
      await Deno.remove(stage, { recursive: true }).catch(() => {});
      await removeCreatedDirs(created);
      throw e;
    }
    await Deno.remove(stage, { recursive: true }).catch(() => {}); // the replaced files, if any
    console.log(
      `${keep.length} patches of ${size}×${size} px from ${slidePath} → ${out}/${section}_{x}_{y}.tif` +
        `${edge ? ` (${edge} reach past the image edge: filled white)` : ""} in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
    );
  } finally {
    engine?.destroy();
    slide.close();
  }
}
