import { join } from "node:path";
import { parseSpots, runExtractPatches } from "../../cli/extract_patches.ts";
import { decodeImage } from "../../slide/mod.ts";
import { assertEquals, assertRejects, assertThrows, sharedData } from "../helpers.ts";

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
