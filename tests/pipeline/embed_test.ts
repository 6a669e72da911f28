/**
 * `embed` on a slide: features at spots equal `embed` on the patches `extract-patches` cuts for the same
 * spots (the same pixels, read in batches from the slide), and the npz places them (`pixel`, `grid`); the
 * slide options are checked before anything is read.
 */
import { join } from "node:path";
import { runCli } from "../bad_inputs/harness.ts";
import { readNpz } from "../../slide/npy.ts";
import { parseSpots } from "../../slide/spots.ts";
import { assertEquals, sharedData, tinyCheckpoint } from "../helpers.ts";

const her2st = sharedData("her2st/data");

Deno.test({
  name: "embed SLIDE --spots equals embed on extract-patches' patches, with pixel and grid",
  ignore: !her2st,
  sanitizeOps: false,
  sanitizeResources: false,
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-embed-slide-" });
    try {
      const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
      const img = join(her2st!, "ST-imgs/C/C2");
      const jpg = join(img, [...Deno.readDirSync(img)].find((f) => f.name.endsWith(".jpg"))!.name);
      const spotFile = join(her2st!, "ST-spotfiles/C2_selection.tsv");
      const spots = parseSpots(await Deno.readTextFile(spotFile), spotFile).filter((_, i) => i % 50 === 0);
      const csv = join(dir, "C2_spots.csv");
      await Deno.writeTextFile(
        csv,
        "x,y,pixel_x,pixel_y\n" + spots.map((s) => `${s.x},${s.y},${s.px},${s.py}`).join("\n") + "\n",
      );
      const common = ["--encoder", "he2gene", "--weights", weights, "--batch-size", "3", "--quiet"];
      const r1 = await runCli([
        "embed",
        jpg,
        "--spots",
        csv,
        "--section",
        "C2",
        ...common,
        "--out",
        join(dir, "a"),
      ]);
      assertEquals(r1.code, 0, r1.stderr);
      const r2 = await runCli([
        "extract-patches",
        jpg,
        "--spots",
        csv,
        "--section",
        "C2",
        "--out",
        join(dir, "p"),
        "--quiet",
      ]);
      assertEquals(r2.code, 0, r2.stderr);
      const r3 = await runCli(["embed", join(dir, "p"), ...common, "--out", join(dir, "b")]);
      assertEquals(r3.code, 0, r3.stderr);
      const a = await readNpz(join(dir, "a", "features.npz")),
        b = await readNpz(join(dir, "b", "features.npz"));
      // Patch folders list by name; the slide keeps the spot file's order.
      const names = a.names.data as string[], order = (b.names.data as string[]).map((n) => names.indexOf(n));
      assertEquals([...names].sort(), b.names.data);
      const D = a.features.shape[1],
        fa = a.features.data as Float32Array,
        fb = b.features.data as Float32Array;
      order.forEach((i, j) => assertEquals(fa.subarray(i * D, (i + 1) * D), fb.subarray(j * D, (j + 1) * D)));
      assertEquals(names, spots.map((s) => `C2_${s.x}_${s.y}`));
      assertEquals(Array.from(a.pixel.data as Float64Array), spots.flatMap((s) => [s.px, s.py]));
      assertEquals(Array.from(a.grid.data as Int32Array), spots.flatMap((s) => [s.x, s.y]));
      assertEquals(b.pixel, undefined);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("embed's slide options are refused on a patch folder and checked against each other (exit 2)", async () => {
  for (
    const [args, msg] of [
      [
        ["embed", "dir", "--encoder", "he2gene", "--weights", "w", "--tile-px", "64"],
        "--tile-px applies to a slide",
      ],
      [
        ["embed", "s.svs", "--encoder", "he2gene", "--weights", "w", "--spots", "f", "--tile"],
        "give either --spots FILE or --tile, not both",
      ],
      [
        ["embed", "s.svs", "--encoder", "he2gene", "--weights", "w", "--tile", "--crop-size", "150"],
        "--crop-size / --crop-um apply to --spots",
      ],
      [
        ["embed", "s.svs", "--encoder", "he2gene", "--weights", "w", "--tile", "--tile-px", "8"],
        "--tile-px must be at least 32",
      ],
    ] as const
  ) {
    const r = await runCli([...args]);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    assertEquals(r.stderr.includes(msg), true, r.stderr);
  }
});
