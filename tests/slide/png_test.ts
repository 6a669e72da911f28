/**
 * PNG writer and gene maps: our PNGs decode with fast-png and with PIL (/usr/bin/python3, skipped without
 * it) to the pixels we wrote; the viridis table matches matplotlib's (skipped without matplotlib).
 */
import { join } from "node:path";
import { decode } from "fast-png";
import { drawText, encodePng, geneMapPng, textWidth, VIRIDIS, viridis, zScores } from "../../slide/png.ts";
import { assertClose, assertEquals, assertThrows, rand } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";

/** Run python; null when python or one of `modules` is missing. */
async function python(script: string, args: string[], modules: string[]): Promise<Uint8Array | null> {
  try {
    const probe = await new Deno.Command(PYTHON, { args: ["-c", `import ${modules.join(", ")}`] }).output();
    if (!probe.success) return null;
  } catch {
    return null;
  }
  const r = await new Deno.Command(PYTHON, {
    args: ["-c", script, ...args],
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!r.success) throw new Error(`python failed:\n${new TextDecoder().decode(r.stderr)}`);
  return r.stdout;
}

function randomRgb(w: number, h: number, seed: number): Uint8Array {
  return Uint8Array.from(rand(w * h * 3, seed, 0, 256), (v) => Math.floor(v));
}

Deno.test("encodePng round-trips through fast-png on odd sizes, RGB 8-bit", () => {
  for (const [w, h] of [[1, 1], [7, 3], [33, 17], [129, 2]]) {
    const rgb = randomRgb(w, h, w * 100 + h);
    const img = decode(encodePng(w, h, rgb));
    assertEquals([img.width, img.height, img.channels, img.depth], [w, h, 3, 8]);
    assertEquals(Array.from(img.data as Uint8Array), Array.from(rgb), `${w}×${h} pixels`);
  }
});

Deno.test("encodePng output decodes with PIL to the same pixels", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-png-" });
  const w = 45, h = 23;
  const rgb = randomRgb(w, h, 7);
  await Deno.writeFile(join(dir, "a.png"), encodePng(w, h, rgb));
  const map = geneMapPng({
    spots: Array.from({ length: 30 }, (_, i) => ({ x: i % 6, y: Math.floor(i / 6) })),
    values: rand(30, 8),
    title: "ERBB2",
    size: 64,
  });
  await Deno.writeFile(join(dir, "map.png"), map);
  const out = await python(
    `import sys; from PIL import Image
for p in sys.argv[1:]:
    im = Image.open(p); im.load(); assert im.mode == "RGB", im.mode
    sys.stdout.buffer.write(im.tobytes())`,
    [join(dir, "a.png"), join(dir, "map.png")],
    ["PIL"],
  );
  await Deno.remove(dir, { recursive: true });
  if (out === null) {
    console.warn("skipped: /usr/bin/python3 with PIL is absent");
    return;
  }
  assertEquals(Array.from(out.subarray(0, rgb.length)), Array.from(rgb), "PIL pixels");
  const m = decode(map);
  assertEquals(
    Array.from(out.subarray(rgb.length)),
    Array.from(m.data as Uint8Array),
    "gene map: PIL = fast-png",
  );
});

Deno.test("encodePng names a size mismatch", () => {
  assertThrows(
    () => encodePng(2, 2, new Uint8Array(11)),
    RangeError,
    "2×2 RGB needs 12 bytes, current value has 11",
  );
  assertThrows(() => encodePng(0, 2, new Uint8Array(0)), RangeError, "current value is 0×2");
});

Deno.test("viridis endpoints are #440154 and #fde725, and the table equals matplotlib's", async () => {
  assertEquals(viridis(0), [0x44, 0x01, 0x54]);
  assertEquals(viridis(1), [0xfd, 0xe7, 0x25]);
  assertEquals(viridis(-5), viridis(0));
  assertEquals(viridis(7), viridis(1));
  assertEquals(viridis(0.5), [0x21, 0x91, 0x8c]); // matplotlib: cmap(0.5) = entry 128
  const out = await python(
    `import sys, numpy as np
from matplotlib import cm
lut = cm.get_cmap("viridis")(np.linspace(0, 1, 256))[:, :3]
sys.stdout.buffer.write(np.round(lut * 255).astype(np.uint8).tobytes())`,
    [],
    ["numpy", "matplotlib"],
  );
  if (out === null) {
    console.warn("skipped: /usr/bin/python3 with matplotlib is absent");
    return;
  }
  assertEquals(Array.from(VIRIDIS), Array.from(out));
});

Deno.test("geneMapPng colours spots by clipped z-score, draws the bar, rings tumour spots", () => {
  // 3 spots in a row, values chosen so z = (−√1.5, 0, +√1.5)·… : use many spots to reach |z| ≥ 3.
  const n = 20;
  const spots = Array.from({ length: n }, (_, i) => ({ x: i % 5, y: Math.floor(i / 5) }));
  const values = new Float32Array(n); // 19 zeros and one 1: its z = √19 ≈ 4.36 > 3 → yellow
  values[7] = 1;
  const tumor = Array.from({ length: n }, (_, i) => i === 0);
  const size = 100;
  const png = decode(geneMapPng({ spots, values, size, tumor }));
  const at = (x: number, y: number) => {
    const i = 3 * (y * png.width + x);
    return Array.from((png.data as Uint8Array).subarray(i, i + 3));
  };
  // Spot centres: span 4 in x, spacing 1 → radius 0.45, scale = 100 / (4 + 0.9); centred.
  const scale = size / 4.9;
  const ox = 12 + (size - 4 * scale) / 2, oy = 12 + (size - 3 * scale) / 2;
  const centre = (
    i: number,
  ) => [Math.floor(ox + (i % 5) * scale), Math.floor(oy + Math.floor(i / 5) * scale)];
  const z = zScores(values);
  assertEquals(z[7] > 3, true);
  const [hx, hy] = centre(7);
  assertEquals(at(hx, hy), viridis(1), "z > 3 → yellow");
  const [lx, ly] = centre(3);
  assertEquals(at(lx, ly), viridis((z[3] + 3) / 6), "z of a zero spot");
  // Tumour ring: red just outside the disc of spot 0 (radius 0.45·scale ≈ 9.2 px, ring ≈ 1.8 px).
  const [tx, ty] = centre(0);
  assertEquals(at(tx + 10, ty), [228, 26, 28], "tumour ring");
  // Background between spots, and the colour bar's ends.
  assertEquals(at(0, 0), [255, 255, 255]);
  const bx = 12 + size + 16;
  assertEquals(at(bx + 3, 12), viridis(1), "bar top = +3");
  assertEquals(at(bx + 3, 12 + size - 1), viridis(0), "bar bottom = −3");
});

Deno.test("geneMapPng: NaN values are grey, constant values sit at z = 0, pixel coordinates work", () => {
  const spots = [{ x: 1000, y: 2000 }, { x: 1200, y: 2000 }];
  const png = decode(geneMapPng({ spots, values: new Float32Array([NaN, 5]), size: 50, radius: 5 }));
  const data = png.data as Uint8Array;
  const colours = new Set<string>();
  for (let i = 0; i < data.length; i += 3) colours.add(`${data[i]},${data[i + 1]},${data[i + 2]}`);
  assertEquals(colours.has("190,190,190"), true, "grey NaN spot");
  assertEquals(colours.has(viridis(0.5).join(",")), true, "single finite value → z = 0");
  assertClose(zScores([2, 2, 2]), [0, 0, 0], { rtol: 0, atol: 0 });
  assertThrows(
    () => geneMapPng({ spots, values: new Float32Array(3) }),
    RangeError,
    "2 spots, but 3 values",
  );
});

Deno.test("drawText draws the 5 × 7 glyphs and clips at the edges", () => {
  const img = { width: 12, height: 7, rgb: new Uint8Array(12 * 7 * 3).fill(255) };
  drawText(img, "10", 0, 0);
  assertEquals(textWidth("10"), 11);
  const row = (y: number) =>
    Array.from({ length: 11 }, (_, x) => img.rgb[3 * (y * 12 + x)] === 0 ? "#" : ".").join("");
  assertEquals(row(0), "..#....###.");
  assertEquals(row(6), ".###...###.");
  drawText(img, "WIDE TEXT", 5, 3); // off the canvas: clipped, no throw
});

Deno.test("drawText has small letters and µ, and turned upwards reads from the bottom", () => {
  const ink = (text: string, o: { vertical?: boolean } = {}) => {
    const [w, h] = o.vertical ? [7, textWidth(text)] : [textWidth(text), 7];
    const img = { width: w, height: h, rgb: new Uint8Array(w * h * 3).fill(255) };
    drawText(img, text, 0, 0, o);
    return Array.from(
      { length: h },
      (_, y) => Array.from({ length: w }, (_, x) => (img.rgb[3 * (y * w + x)] === 0 ? "#" : ".")).join(""),
    );
  };
  assertEquals(ink("a").join("|"), ".....|.....|.###.|....#|.####|#...#|.####");
  assertEquals(ink("m") === ink("M"), false);
  assertEquals(ink("µm").join("").includes("#"), true);
  assertEquals(ink("é"), ink("?"), "no glyph: drawn as ?");
  // "1" turned a quarter left: its rows become columns, its first column the bottom row.
  const one = ink("1"), turned = ink("1", { vertical: true });
  for (let x = 0; x < 5; x++) {
    for (let y = 0; y < 7; y++) assertEquals(turned[4 - x][y], one[y][x], `(${x}, ${y})`);
  }
});

Deno.test("geneMapPng labels its colour bar and explains the red rings in a legend under the map", () => {
  const n = 20, size = 200;
  const spots = Array.from({ length: n }, (_, i) => ({ x: i % 5, y: Math.floor(i / 5) }));
  const values = Float32Array.from({ length: n }, (_, i) => i);
  const tumor = Array.from({ length: n }, (_, i) => i < 3);
  const plain = decode(geneMapPng({ spots, values, size }));
  const ringed = decode(
    geneMapPng({ spots, values, size, tumor, tumorLegend: "tumour predicted (p > 0.5)" }),
  );
  assertEquals(ringed.height - plain.height, 15, "a legend row under the map");
  const at = (png: ReturnType<typeof decode>, x: number, y: number) => {
    const i = 3 * (y * png.width + x);
    return Array.from((png.data as Uint8Array).subarray(i, i + 3));
  };
  // The legend's ringed disc and its text, below the map (top 12, map size 200).
  const below = Array.from({ length: 15 * 40 }, (_, k) => at(ringed, k % 40, 12 + size + Math.floor(k / 40)));
  assertEquals(below.some((c) => c.join() === "228,26,28"), true, "the ring in the legend");
  assertEquals(below.some((c) => c.join() === "0,0,0"), true, "the legend's text");
  // The bar's label, turned upwards beside the ticks (bar at 12 + size + 16, ticks 20 px right of it, the
  // label 16 px further): as long as "z-score of log1p expression" turned upwards.
  const x0 = 12 + size + 16 + 16 + 4 + 16;
  const rows = Array.from(
    { length: size },
    (_, y) => Array.from({ length: 7 }, (_, dx) => at(plain, x0 + dx, 12 + y).join()).includes("0,0,0"),
  );
  const labelled = decode(geneMapPng({ spots, values, size, barLabel: "z-score of log1p expression" }));
  const rowsL = Array.from(
    { length: size },
    (_, y) => Array.from({ length: 7 }, (_, dx) => at(labelled, x0 + dx, 12 + y).join()).includes("0,0,0"),
  );
  const extent = (r: boolean[]) => r.lastIndexOf(true) - r.indexOf(true) + 1;
  assertEquals(extent(rows), textWidth("z-score"), "the default label: z-score");
  assertEquals(extent(rowsL), textWidth("z-score of log1p expression"));
});
