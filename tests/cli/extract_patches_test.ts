import { join } from "node:path";
import { parseSpots, runExtractPatches } from "../../cli/extract_patches.ts";
import { decodeImage, encodePng, openSlide } from "../../slide/mod.ts";
import { assertEquals, assertRejects, assertThrows, sharedData } from "../helpers.ts";
import { visiumSpatial } from "./visium_fixture.ts";

const her2st = sharedData("her2st/data");
const demo = sharedData("he2gene/exps/D2_6_22.tif");

Deno.test({
  name: "extract-patches on a her2st section writes patches in the original's exact TIFF layout",
  ignore: !her2st || !demo,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const out = await Deno.makeTempDir({ prefix: "he2gene-extract-" });
    try {
      const dir = join(her2st!, "ST-imgs/C/C2");
      const jpg = [...Deno.readDirSync(dir)].find((f) => f.name.endsWith(".jpg"))!.name;
      await runExtractPatches([
        join(dir, jpg),
        "--spots",
        join(her2st!, "ST-spotfiles/C2_selection.tsv"),
        "--out",
        out,
        "--quiet",
      ]);
      const files = [...Deno.readDirSync(out)].map((f) => f.name).sort();
      const spots = parseSpots(await Deno.readTextFile(join(her2st!, "ST-spotfiles/C2_selection.tsv")), "C2");
      assertEquals(files.length, spots.length);
      assertEquals(files.includes("C2_25_13.tif"), true);
      // Same bytes as HE2Gene's demo patch up to the pixel data (header, IFD, BitsPerSample).
      const ref = await Deno.readFile(demo!);
      const ours = await Deno.readFile(join(out, "C2_25_13.tif"));
      assertEquals(ours.length, ref.length);
      assertEquals(Array.from(ours.subarray(0, 140)), Array.from(ref.subarray(0, 140)));
      const img = decodeImage(ours, "C2_25_13.tif");
      assertEquals([img.width, img.height], [150, 150]);
    } finally {
      await Deno.remove(out, { recursive: true });
    }
  },
});

Deno.test("spot files: her2st selection (selected = 0 skipped), CSV, Visium; bad values name the line", () => {
  const st = parseSpots(
    "x\ty\tnew_x\tnew_y\tpixel_x\tpixel_y\tselected\n25\t13\t24.9\t13.0\t6930.58\t3510.24\t1\n1\t2\t1\t2\t5\t6\t0\n",
    "s.tsv",
  );
  assertEquals(st, [{ x: 25, y: 13, px: 6930.58, py: 3510.24 }]);
  assertEquals(parseSpots("x,y,pixel_x,pixel_y\n3,4,100.5,200\n", "s.csv"), [{
    x: 3,
    y: 4,
    px: 100.5,
    py: 200,
  }]);
  assertEquals(parseSpots("AAAC-1,1,50,102,7000,6000\nAAAG-1,0,51,103,7010,6010\n", "tp.csv"), [{
    x: 102,
    y: 50,
    px: 6000,
    py: 7000,
  }]);
  assertThrows(() => parseSpots("x,y,pixel_x,pixel_y\n3,4,abc,200\n", "bad.csv"), Error, "bad.csv, line 2");
});

Deno.test({
  name: "spots that all fall outside the slide are a clear error",
  ignore: !her2st,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(join(tmp, "X_spots.csv"), "x,y,pixel_x,pixel_y\n1,1,1e7,1e7\n");
      const png = sharedData("visium/tissue_lowres_image.png")!;
      await assertRejects(
        () =>
          runExtractPatches([png, "--spots", join(tmp, "X_spots.csv"), "--out", join(tmp, "o"), "--quiet"]),
        Error,
        "falls outside",
      );
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

const visium = sharedData("visium");

Deno.test({
  name: "extract-patches on Visium's lowres image scales tissue_positions by tissue_lowres_scalef",
  ignore: !visium,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "he2gene-extract-visium-" });
    try {
      const { spatial, spots, scalef } = await visiumSpatial(visium!, tmp);
      const image = join(spatial, "tissue_lowres_image.png");
      const out = join(tmp, "patches");
      // The scale factors are found beside the image (Space Ranger's spatial/ folder).
      await runExtractPatches([
        image,
        "--spots",
        join(spatial, "tissue_positions.csv"),
        "--out",
        out,
        "--quiet",
      ]);
      const files = [...Deno.readDirSync(out)].map((f) => f.name).sort();
      assertEquals(files, spots.map((s) => `tissue_${s.col}_${s.row}.tif`).sort());
      assertEquals(spots.length, 100);
      // Straight from the shared folder: tissue_positions_list.csv (no header) beside the image, same patches.
      const direct = join(tmp, "direct");
      await runExtractPatches([
        join(visium!, "tissue_lowres_image.png"),
        "--spots",
        join(visium!, "tissue_positions_list.csv"),
        "--out",
        direct,
        "--quiet",
      ]);
      assertEquals([...Deno.readDirSync(direct)].map((f) => f.name).sort(), files);
      for (const f of files) {
        assertEquals(await Deno.readFile(join(direct, f)), await Deno.readFile(join(out, f)), f);
      }
      const side = Math.round(150 * scalef); // 150 full-resolution px → 7 px of the lowres image
      assertEquals(side, 7);
      const slide = await openSlide(image);
      try {
        for (const s of spots) {
          const patch = decodeImage(await Deno.readFile(join(out, `tissue_${s.col}_${s.row}.tif`)), "patch");
          assertEquals([patch.width, patch.height], [side, side]);
          // The patch is the image's side × side window centred within a pixel of the scaled position.
          const [cx, cy] = [s.fx * scalef, s.fy * scalef];
          let found = false;
          for (let y = Math.ceil(cy - side / 2 - 1); y <= cy - side / 2 + 1 && !found; y++) {
            for (let x = Math.ceil(cx - side / 2 - 1); x <= cx - side / 2 + 1 && !found; x++) {
              const r = await slide.readRegion(0, x, y, side, side);
              found = r.data.every((v, i) => v === patch.data[i]);
            }
          }
          if (!found) throw new Error(`tissue_${s.col}_${s.row}: no window within 1 px of (${cx}, ${cy})`);
        }
      } finally {
        slide.close();
      }
      // --crop-um: 100 µm at 55 µm / spot_diameter_fullres / scalef per pixel.
      const um = join(tmp, "um");
      await runExtractPatches([
        image,
        "--spots",
        join(spatial, "tissue_positions.csv"),
        "--out",
        um,
        "--crop-um",
        "200",
        "--quiet",
      ]);
      const mpp = 55 / 89.42751063343188 / scalef;
      const first = decodeImage(await Deno.readFile(join(um, files[0])), "patch");
      assertEquals(first.width, Math.round(200 / mpp));
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});

Deno.test({
  name: "extract-patches: a lowres image without its scale factors, and --crop-um without mpp, are refused",
  ignore: !visium,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const tmp = await Deno.makeTempDir({ prefix: "he2gene-extract-visium-bad-" });
    try {
      const { spatial } = await visiumSpatial(visium!, tmp, 5);
      const positions = join(spatial, "tissue_positions.csv");
      const sf = join(tmp, "scalefactors_json.json");
      await Deno.rename(join(spatial, "scalefactors_json.json"), sf);
      const image = join(spatial, "tissue_lowres_image.png");
      const out = join(tmp, "out");
      await assertRejects(
        () => runExtractPatches([image, "--spots", positions, "--out", out, "--quiet"]),
        Error,
        `${image} is Space Ranger's lowres image: the scale between them is tissue_lowres_scalef in ` +
          "scalefactors_json.json, which is not beside the image; pass --scalefactors FILE",
      );
      await assertRejects(() => Deno.stat(out), Deno.errors.NotFound); // nothing written
      // --scalefactors names it.
      await runExtractPatches([image, "--spots", positions, "--out", out, "--scalefactors", sf, "--quiet"]);
      assertEquals([...Deno.readDirSync(out)].length, 5);
      // A slide that records no resolution: today's wording, with the pixel option to use instead.
      const png = join(tmp, "S.png");
      await Deno.writeFile(png, encodePng(50, 50, new Uint8Array(50 * 50 * 3).fill(180)));
      const csv = join(tmp, "S_spots.csv");
      await Deno.writeTextFile(csv, "x,y,pixel_x,pixel_y\n1,1,25,25\n");
      await assertRejects(
        () =>
          runExtractPatches([png, "--spots", csv, "--out", join(tmp, "o2"), "--crop-um", "50", "--quiet"]),
        Error,
        `${png} does not record its resolution, so 50 µm patches have no size in pixels: pass --crop-size or --mpp`,
      );
      // --mpp gives it: 50 µm at 2 µm/px = 25 px.
      await runExtractPatches([
        png,
        "--spots",
        csv,
        "--out",
        join(tmp, "o2"),
        "--crop-um",
        "50",
        "--mpp",
        "2",
        "--quiet",
      ]);
      assertEquals(decodeImage(await Deno.readFile(join(tmp, "o2", "S_1_1.tif")), "p").width, 25);
    } finally {
      await Deno.remove(tmp, { recursive: true });
    }
  },
});
