/**
 * `he2gene info SLIDE`: the levels and the microns per pixel (x, y) with where they came from, for TIFFs
 * that give them in each way, a Visium image (its scale factors), `--mpp`, and a slide that gives none.
 * Needs no GPU.
 */
import { join } from "node:path";
import { encodeRgbTiff } from "../../slide/tiff_write.ts";
import { runCli } from "../bad_inputs/harness.ts";
import { assertEquals, sharedData } from "../helpers.ts";

function assertIncludes(text: string, part: string): void {
  if (!text.includes(part)) throw new Error(`expected ${JSON.stringify(part)} in:\n${text}`);
}

async function withTemp(fn: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-info-" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

const rgb = (w: number, h: number) => new Uint8Array(w * h * 3).fill(200);

Deno.test("info SLIDE prints mpp x and y, where it came from, and the levels", async () => {
  await withTemp(async (dir) => {
    const tif = join(dir, "S.tif");
    await Deno.writeFile(
      tif,
      encodeRgbTiff(40, 30, rgb(40, 30), { resolution: { x: 40000, y: 20000, unit: 3 } }),
    );
    const r = await runCli(["info", tif]);
    assertEquals([r.code, r.stderr], [0, ""]);
    assertEquals(r.stdout.split("\n"), [
      `slide:  ${tif} (TIFF, 1 level)`,
      "mpp:    x 0.25, y 0.5 µm per level-0 pixel, from the TIFF XResolution / YResolution " +
      "(40000 / 20000 pixels per centimetre)",
      "levels:",
      "  level  width × height  downsample  tile",
      "  0      40 × 30         1           -",
    ]);
    // --json: the same facts for programs.
    const j = await runCli(["info", tif, "--json"]);
    assertEquals(JSON.parse(j.stdout), {
      path: tif,
      format: "tiff",
      mpp: {
        x: 0.25,
        y: 0.5,
        source: "tiff",
        detail: "the TIFF XResolution / YResolution (40000 / 20000 pixels per centimetre)",
      },
      levels: [{ width: 40, height: 30, downsample: 1 }],
    });
    // --mpp overrides the file.
    const given = await runCli(["info", tif, "--mpp", "0.5"]);
    assertIncludes(given.stdout, "mpp:    x 0.5, y 0.5 µm per level-0 pixel, from --mpp 0.5");
    // OME-XML, where the TIFF tags say nothing.
    const ome = join(dir, "O.ome.tif");
    const xml = '<OME><Image><Pixels PhysicalSizeX="0.2" PhysicalSizeXUnit="µm" PhysicalSizeY="200" ' +
      'PhysicalSizeYUnit="nm"/></Image></OME>';
    await Deno.writeFile(ome, encodeRgbTiff(8, 8, rgb(8, 8), { description: xml }));
    assertIncludes(
      (await runCli(["info", ome])).stdout,
      "mpp:    x 0.2, y 0.2 µm per level-0 pixel, from OME-XML PhysicalSizeX / PhysicalSizeY (0.2 µm / 200 nm)",
    );
    // None: say so, and what to pass instead.
    const bare = join(dir, "B.tif");
    await Deno.writeFile(bare, encodeRgbTiff(8, 8, rgb(8, 8)));
    const b = await runCli(["info", bare]);
    assertEquals(b.code, 0);
    assertIncludes(
      b.stdout,
      "mpp:    not recorded in the file: pass --mpp, or sizes in pixels (--tile-px, --crop-size)",
    );
    assertEquals(JSON.parse((await runCli(["info", bare, "--json"])).stdout).mpp, null);
  });
});

Deno.test("info SLIDE on real slides: an Aperio SVS, a 4-level pyramid, a Visium lowres image", async () => {
  const svs = sharedData("wsi/CMU-1-Small-Region.svs");
  if (svs) {
    const r = await runCli(["info", svs]);
    assertEquals(r.code, 0);
    assertIncludes(r.stdout, "(TIFF, 1 level)");
    assertIncludes(
      r.stdout,
      "mpp:    x 0.499, y 0.499 µm per level-0 pixel, from the Aperio ImageDescription (MPP = 0.4990)",
    );
    assertIncludes(r.stdout, "  0      2220 × 2967     1           240 × 240");
  }
  const pyramid = sharedData("wsi/small_HE_levels.tiff");
  if (pyramid) {
    const r = await runCli(["info", pyramid, "--json"]);
    const j = JSON.parse(r.stdout);
    assertEquals(
      j.levels.map((
        l: { width: number; height: number; downsample: number },
      ) => [l.width, l.height, l.downsample]),
      [
        [300, 250, 1],
        [150, 125, 2],
        [75, 62, 4],
        [37, 31, 300 / 37],
      ],
    );
    assertEquals(j.mpp.source, "tiff");
  }
  const low = sharedData("visium/tissue_lowres_image.png");
  if (low) {
    const r = await runCli(["info", low]);
    assertEquals(r.code, 0);
    const mpp = 55 / 89.42751063343188 / 0.045004502;
    assertIncludes(
      r.stdout,
      `mpp:    x ${Number(mpp.toPrecision(6))}, y ${Number(mpp.toPrecision(6))} µm per level-0 pixel, from `,
    );
    assertIncludes(
      r.stdout,
      "scalefactors_json.json (spot_diameter_fullres 89.4275 px = 55 µm, tissue_lowres_scalef 0.045004502)",
    );
    assertIncludes(
      r.stdout,
      "visium: Space Ranger's lowres image: full-resolution positions × tissue_lowres_scalef 0.045004502",
    );
  }
});

Deno.test("info: --mpp without SLIDE and a bad --mpp are usage errors; a missing slide is bad input", async () => {
  assertEquals((await runCli(["info", "--mpp", "0.5"])).code, 2);
  assertEquals((await runCli(["info", "s.svs", "--mpp", "-1"])).code, 2);
  assertEquals((await runCli(["info", "a.svs", "b.svs"])).code, 2);
  const missing = await runCli(["info", "/nonexistent/slide.svs"]);
  assertEquals(missing.code, 1);
  assertIncludes(missing.stderr, "/nonexistent/slide.svs");
});
