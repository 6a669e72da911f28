/**
 * `he2gene extract-patches SLIDE --spots FILE --out DIR`: cut one patch per spot, named
 * `{section}_{x}_{y}.tif` (array coordinates) and written as uncompressed RGB TIFF byte-for-byte in the
 * layout of HE2Gene's demo patches, so the original tools read ours and ours read theirs.
 *
 * Spot files: a her2st / ST `*_selection.tsv` (`x y new_x new_y pixel_x pixel_y selected`; rows with
 * selected = 0 are skipped), a Visium `tissue_positions(_list).csv` (in-tissue spots), or a CSV with
 * `x,y,pixel_x,pixel_y`. Patches: `--crop-size` px (default 150) with top-left = ⌊px⌋ − size/2 as the
 * original, or `--crop-um` microns (needs the slide's resolution). Optional `--stain macenko|reinhard`.
 *
 * @module
 */
import { parseArgs } from "node:util";
import { basename, join } from "node:path";
import { createEngine } from "../engine/engine.ts";
import { decodeImage, type RgbImage } from "../slide/decode.ts";
import {
  fitReinhard,
  MACENKO_DEFAULT_TARGET,
  normalizeStainImages,
  type StainMethod,
} from "../slide/stain.ts";
import { encodeRgbTiff } from "../slide/tiff_write.ts";
import { openSlide } from "../slide/wsi.ts";
import { writeAtomic } from "../slide/npz.ts";
import { UsageError } from "./errors.ts";
import { Progress } from "./progress.ts";

/** A spot to cut: array coordinates and the level-0 pixel centre. */
export interface SpotRow {
  x: number;
  y: number;
  px: number;
  py: number;
}

/** Parse a spot file (see the module doc). Errors name the file and line. */
export function parseSpots(text: string, file: string): SpotRow[] {
  const lines = text.split(/\r?\n/).filter((l) => l.trim().length > 0);
  if (lines.length === 0) throw new Error(`Cannot read spots from ${file}: the file is empty`);
  const sep = lines[0].includes("\t") ? "\t" : ",";
  const head = lines[0].split(sep).map((s) => s.trim().replace(/^"|"$/g, ""));
  const col = (names: string[]) => names.map((n) => head.indexOf(n)).find((i) => i >= 0) ?? -1;
  const rows: SpotRow[] = [];
  const num = (s: string, line: number, what: string) => {
    const v = Number(s);
    if (!Number.isFinite(v)) {
      throw new Error(`Cannot read spots from ${file}, line ${line}: ${what} "${s}" is not a number`);
    }
    return v;
  };
  if (col(["pixel_x"]) >= 0) {
    // her2st selection file or x,y,pixel_x,pixel_y CSV.
    const [ix, iy, ipx, ipy, isel] = [
      col(["x"]),
      col(["y"]),
      col(["pixel_x"]),
      col(["pixel_y"]),
      col(["selected"]),
    ];
    if (ix < 0 || iy < 0 || ipy < 0) {
      throw new Error(
        `Cannot read spots from ${file}: expected columns x, y, pixel_x, pixel_y; found ${head.join(", ")}`,
      );
    }
    lines.slice(1).forEach((l, k) => {
      const f = l.split(sep);
      if (isel >= 0 && Number(f[isel]) === 0) return;
      rows.push({
        x: Math.round(num(f[ix], k + 2, "x")),
        y: Math.round(num(f[iy], k + 2, "y")),
        px: num(f[ipx], k + 2, "pixel_x"),
        py: num(f[ipy], k + 2, "pixel_y"),
      });
    });
    return rows;
  }
  // Visium: barcode, in_tissue, array_row, array_col, pxl_row_in_fullres, pxl_col_in_fullres (header optional).
  const body = head.includes("barcode") ? lines.slice(1) : lines;
  body.forEach((l, k) => {
    const f = l.split(",");
    if (f.length < 6) {
      throw new Error(
        `Cannot read spots from ${file}, line ${k + 1}: expected 6 Visium columns or x,y,pixel_x,pixel_y`,
      );
    }
    if (Number(f[1]) !== 1) return;
    rows.push({
      x: num(f[3], k + 1, "array_col"),
      y: num(f[2], k + 1, "array_row"),
      px: num(f[5], k + 1, "pxl_col_in_fullres"),
      py: num(f[4], k + 1, "pxl_row_in_fullres"),
    });
  });
  return rows;
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
  const slidePath = positionals[0];
  const spots = parseSpots(await Deno.readTextFile(v.spots), v.spots);
  const section = v.section ?? basename(v.spots).split(/[_.]/)[0];
  const slide = await openSlide(slidePath);
  const t0 = performance.now();
  try {
    let size = v["crop-size"] ? Number(v["crop-size"]) : 150;
    if (v["crop-um"]) {
      if (!slide.mpp) {
        throw new Error(
          `--crop-um needs the resolution of ${slidePath}, which it does not record; use --crop-size`,
        );
      }
      size = Math.round(Number(v["crop-um"]) / slide.mpp);
    }
    if (!Number.isInteger(size) || size < 1) {
      throw new UsageError(`the crop size must be a positive integer, current value is ${size}`);
    }
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
    await Deno.mkdir(v.out, { recursive: true });
    const keep = spots.filter((s) => !outside.includes(s));
    const engine = stain === "none" ? null : await createEngine();
    const target = stain === "reinhard"
      ? fitReinhard(decodeImage(await Deno.readFile(v["stain-ref"]!), v["stain-ref"]!))
      : MACENKO_DEFAULT_TARGET;
    const bar = new Progress("patches", keep.length, v.quiet);
    let edge = 0;
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
        const s = part[i];
        await writeAtomic(
          join(v.out, `${section}_${s.x}_${s.y}.tif`),
          encodeRgbTiff(size, size, imgs[i].data),
        );
      }
      bar.tick(part.length);
    }
    bar.done();
    engine?.destroy();
    console.log(
      `${keep.length} patches of ${size}×${size} px from ${slidePath} → ${v.out}/${section}_{x}_{y}.tif` +
        `${edge ? ` (${edge} reach past the image edge: filled white)` : ""} in ${
          ((performance.now() - t0) / 1000).toFixed(1)
        } s`,
    );
  } finally {
    slide.close();
  }
}
