/**
 * `visualize`: gene maps over a her2st section with the truth beside them, and without a slide from
 * predict-patches' names; the PNG must decode (fast-png) at the size reported, with the spots coloured by
 * their z-scores.
 */
import { join } from "node:path";
import { decode } from "fast-png";
import {
  niceMm,
  runVisualize,
  scaleBarLabel,
  tumorColor,
  visualize,
  VISUALIZE_USAGE,
  zColor,
} from "../../cli/visualize.ts";
import { UsageError } from "../../cli/errors.ts";
import { encodeNpz } from "../../slide/npy.ts";
import { drawText, textWidth, zScores } from "../../slide/png.ts";
import { parseSpots } from "../../cli/extract_patches.ts";
import { assertEquals, assertRejects, sharedData } from "../helpers.ts";

const her2st = sharedData("her2st/data");

function pixelAt(png: ReturnType<typeof decode>, x: number, y: number): number[] {
  const i = (Math.floor(y) * png.width + Math.floor(x)) * png.channels;
  return Array.from(png.data.slice(i, i + 3) as ArrayLike<number>);
}

/** predictions.npz for `P` spots with 2 target genes and 1 aux gene, and a truth npz. */
async function fixture(dir: string, names: string[], pixel?: Float64Array) {
  const P = names.length;
  const target = new Float32Array(P * 2), aux = new Float32Array(P), tumor = new Float32Array(P);
  for (let i = 0; i < P; i++) {
    target[2 * i] = Math.sin(i) * 2 + 3;
    target[2 * i + 1] = (i % 7) / 7;
    aux[i] = i;
    tumor[i] = (i % 10) / 9;
  }
  const pred = join(dir, "predictions.npz");
  await Deno.writeFile(
    pred,
    encodeNpz({
      target: { dtype: "f4", shape: [P, 2], data: target },
      aux: { dtype: "f4", shape: [P, 1], data: aux },
      tumor_prob: { dtype: "f4", shape: [P], data: tumor },
      names: { dtype: "U", shape: [P], data: names },
      target_genes: { dtype: "U", shape: [2], data: ["FASN", "ERBB2"] },
      aux_genes: { dtype: "U", shape: [1], data: ["MYC"] },
      ...(pixel ? { pixel: { dtype: "f8" as const, shape: [P, 2], data: pixel } } : {}),
    }),
  );
  // Truth: FASN = 2·pred + 1 (r = 1), ERBB2 reversed (r = −1); the first spot is missing.
  const tn = names.slice(1);
  const tv = new Float32Array(tn.length * 2);
  tn.forEach((_, k) => {
    tv[2 * k] = 2 * target[2 * (k + 1)] + 1;
    tv[2 * k + 1] = -target[2 * (k + 1) + 1];
  });
  const truth = join(dir, "truth.npz");
  await Deno.writeFile(
    truth,
    encodeNpz({
      target: { dtype: "f4", shape: [tn.length, 2], data: tv },
      names: { dtype: "U", shape: [tn.length], data: tn },
      genes: { dtype: "U", shape: [2], data: ["FASN", "ERBB2"] },
      tumor: { dtype: "f4", shape: [tn.length], data: Float32Array.from(tn, (_, k) => k % 2) },
    }),
  );
  return { pred, truth, target };
}

Deno.test({
  name: "visualize draws FASN and ERBB2 over a her2st section beside the truth, with Pearson r",
  ignore: !her2st,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-vis-" });
    try {
      const spots = parseSpots(
        await Deno.readTextFile(join(her2st!, "ST-spotfiles/C2_selection.tsv")),
        "C2_selection.tsv",
      );
      const names = spots.map((s) => `C2_${s.x}_${s.y}`);
      const pixel = Float64Array.from(spots.flatMap((s) => [s.px, s.py]));
      const { pred, truth, target } = await fixture(dir, names, pixel);
      const img = join(her2st!, "ST-imgs/C/C2");
      const slide = join(img, [...Deno.readDirSync(img)].find((f) => f.name.endsWith(".jpg"))!.name);
      const out = join(dir, "map.png");
      const res = await visualize(pred, { genes: ["FASN", "ERBB2"], slide, truth, out, size: 400 });
      assertEquals(res.r.map((r) => Math.round(r * 1e6) / 1e6), [1, -1]);
      const png = decode(await Deno.readFile(out));
      assertEquals([png.width, png.height], [res.width, res.height]);
      // Two columns (prediction | truth), three rows (FASN, ERBB2, tumour); maps of ≤ 400 px.
      const panelW = res.width / 2, panelH = res.height / 3;
      assertEquals(Number.isInteger(panelW) && Number.isInteger(panelH), true);
      if (!(panelW > 300 && panelW < 520 && panelH > 300 && panelH < 470)) {
        throw new Error(`panel ${panelW}×${panelH}`);
      }
      // The centre of every spot of the FASN panel has its z-score's colour.
      const z = zScores(Float32Array.from(names, (_, i) => target[2 * i]));
      for (let i = 0; i < names.length; i++) {
        assertEquals(pixelAt(png, res.spots[2 * i], res.spots[2 * i + 1]), [...zColor(z[i])], names[i]);
      }
      // The same spot in the tumour row (prediction) and in the truth column of FASN (missing: grey).
      const x0 = res.spots[0], y0 = res.spots[1];
      assertEquals(pixelAt(png, x0, y0 + 2 * panelH), [...tumorColor(0)]);
      assertEquals(pixelAt(png, x0 + panelW, y0), [190, 190, 190]);
      // Through the CLI, for an aux gene, without truth.
      await runVisualize([
        pred,
        "--gene",
        "MYC",
        "--slide",
        slide,
        "--out",
        join(dir, "myc.png"),
        "--size",
        "256",
      ]);
      const myc = decode(await Deno.readFile(join(dir, "myc.png")));
      assertEquals(myc.width > 256 && myc.height > 256 && myc.height < 2 * 256 + 120, true);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("visualize without a slide places predict-patches' spots by their names", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-vis-" });
  try {
    const names = ["S1_1_1", "S1_2_1", "S1_3_1", "S1_1_2", "S1_2_2", "S1_3_2"];
    const { pred } = await fixture(dir, names);
    const res = await visualize(pred, { genes: ["FASN"], out: join(dir, "m.png"), size: 300 });
    const png = decode(await Deno.readFile(join(dir, "m.png")));
    assertEquals([png.width, png.height], [res.width, res.height]);
    // Spots one grid step apart are 1/(3 − 1 + 0.9) of the 300 px map apart.
    const step = res.spots[2] - res.spots[0];
    assertEquals(Math.abs(step - 300 / 2.9) < 1e-9, true);
    assertEquals(res.spots[1], res.spots[3]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("visualize names a missing gene, and refuses a slide without pixel coordinates", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-vis-" });
  try {
    const { pred } = await fixture(dir, ["S1_1_1", "S1_2_1"]);
    await assertRejects(
      () => visualize(pred, { genes: ["NOPE"], out: join(dir, "x.png") }),
      Error,
      `no gene "NOPE"`,
    );
    await assertRejects(
      () => visualize(pred, { genes: ["FASN"], out: join(dir, "x.png"), slide: "s.svs" }),
      Error,
      "no pixel coordinates",
    );
    await assertRejects(() => runVisualize([pred]), UsageError, "--gene");
    await assertRejects(() => runVisualize([pred, "--gene", "FASN", "--size", "8"]), UsageError, "--size");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("scale bars are 1, 2 or 5 × 10^k mm", () => {
  assertEquals([0.3, 0.7, 1, 1.9, 4.99, 7, 23].map(niceMm), [0.2, 0.5, 1, 1, 2, 5, 20]);
});

Deno.test("scale bars read in µm below 1 mm and in mm from 1 mm, and --help says so", () => {
  assertEquals([0.05, 0.2, 0.5, 1, 2].map(scaleBarLabel), ["50 µm", "200 µm", "500 µm", "1 mm", "2 mm"]);
  assertEquals(
    VISUALIZE_USAGE.includes("scale bar\n           in µm (in mm from 1 mm up)"),
    true,
    VISUALIZE_USAGE,
  );
  assertEquals(VISUALIZE_USAGE.includes("scale bar in mm"), false);
});

/** Rows of panel `row` (of `rows`) with black pixels in the label strip right of its colour bar's ticks. */
function barLabelRows(png: ReturnType<typeof decode>, row: number, rows: number): number[] {
  // A panel: the title (36 px with its margin), the map (width − 90 px: margins, bar and labels) and its
  // bar at +12, the bar's ticks at +32 and its label turned upwards at +54, 7 px wide (cli/visualize.ts).
  const panelH = png.height / rows, mw = png.width - 90, x0 = 12 + mw + 54;
  const dark: number[] = [];
  for (let y = row * panelH + 36; y < (row + 1) * panelH - 12; y++) {
    for (let x = x0; x < x0 + 7; x++) {
      if (pixelAt(png, x, y).every((c) => c === 0)) {
        dark.push(y);
        break;
      }
    }
  }
  return dark;
}

/** How many rows `text` turned upwards covers with ink (its width, less the blank columns at its ends). */
function inkHeight(text: string): number {
  const w = textWidth(text), img = { width: 7, height: w, rgb: new Uint8Array(7 * w * 3).fill(255) };
  drawText(img, text, 0, 0, { vertical: true });
  const ink = Array.from({ length: w }, (_, y) => img.rgb.subarray(3 * 7 * y, 3 * 7 * (y + 1)).includes(0));
  return ink.lastIndexOf(true) - ink.indexOf(true) + 1;
}

Deno.test("colour bars are labelled with what they measure, turned upwards beside their ticks", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-vis-" });
  try {
    const names = Array.from({ length: 36 }, (_, i) => `S1_${1 + (i % 6)}_${1 + Math.floor(i / 6)}`);
    const { pred } = await fixture(dir, names);
    const out = join(dir, "m.png");
    for (
      const [size, z, p] of [[300, "z-score of log1p expression", "tumour probability"], [
        80,
        "z-score",
        "p(tumour)",
      ]]
    ) {
      await visualize(pred, { genes: ["FASN"], out, size: Number(size) });
      const png = decode(await Deno.readFile(out));
      // The label's extent along the bar is that of its text turned upwards: the long label on a tall bar,
      // else the short one.
      for (const [row, label] of [[0, z], [1, p]] as const) {
        const rows = barLabelRows(png, row, 2);
        assertEquals(
          rows.length > 0 && rows.at(-1)! - rows[0] + 1,
          inkHeight(String(label)),
          `${label} (${size} px)`,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("visualize --truth joins her2st's {x}x{y} spot ids to the predictions' names", async () => {
  const dir = await Deno.makeTempDir({ prefix: "he2gene-vis-" });
  try {
    const names = ["S1_1_1", "S1_2_1", "S1_3_1", "S1_1_2", "S1_2_2", "S1_3_2"];
    const { pred, target } = await fixture(dir, names);
    // The truth as the counts name the spots: "{x}x{y}", without the section.
    const tn = names.map((n) => n.split("_").slice(1).join("x"));
    const truth = join(dir, "counts.npz");
    await Deno.writeFile(
      truth,
      encodeNpz({
        counts: {
          dtype: "f4",
          shape: [6, 1],
          data: Float32Array.from(names, (_, i) => 3 * target[2 * i] - 1),
        },
        names: { dtype: "U", shape: [6], data: tn },
        genes: { dtype: "U", shape: [1], data: ["FASN"] },
      }),
    );
    const res = await visualize(pred, { genes: ["FASN"], truth, out: join(dir, "m.png") });
    assertEquals(res.r.map((r) => Math.round(r * 1e6) / 1e6), [1]);
    await assertRejects(
      () => runVisualize([pred, "--gene", "FASN", "--truth", join(dir, "nope.npz")]),
      Error,
      `Cannot read --truth ${join(dir, "nope.npz")}: no such file`,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
