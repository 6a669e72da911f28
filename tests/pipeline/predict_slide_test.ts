/**
 * The library's slide prediction (`pipeline/`) on an opened slide gives what `predict-slide` writes for the
 * same spots or tiles: equal arrays, and the same CSV text, NPZ, h5ad and GeoJSON bytes from its pure
 * encoders (and the same CSV text when it formats the rows batch by batch during prediction).
 */
import { join } from "node:path";
import { predictSlide as predictSlideCli } from "../../cli/predict_slide.ts";
import { loadModel } from "../../cli/checkpoint.ts";
import { predictionUns, SOFTWARE } from "../../cli/predict_patches.ts";
import {
  predictSlide,
  slideCsvs,
  slideGeoJson,
  slideH5ad,
  slideNpz,
  type SlidePredictions,
  spatialImages,
  spotPatches,
  tilePatches,
} from "../../pipeline/mod.ts";
import { openSlide } from "../../slide/wsi.ts";
import { readH5ad } from "../../slide/h5ad.ts";
import { parseSpots } from "../../slide/spots.ts";
import { assertEquals, assertRejects, gpuTest, sharedData, tinyCheckpoint } from "../helpers.ts";

const her2st = sharedData("her2st/data");
const cmu = sharedData("wsi/CMU-1-Small-Region.svs");

/** A value with each typed array replaced by its length and FNV-1a hash (a mismatch then prints small). */
function digest(v: unknown): unknown {
  if (ArrayBuffer.isView(v)) {
    const b = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    let h = 0x811c9dc5;
    for (let i = 0; i < b.length; i++) h = Math.imul(h ^ b[i], 0x01000193) >>> 0;
    return `${v.constructor.name}(${b.length} bytes, fnv ${h.toString(16)})`;
  }
  if (Array.isArray(v)) return v.map(digest);
  if (v && typeof v === "object") {
    return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, digest(x)]));
  }
  return v;
}

/** The library's arrays and metadata equal the CLI's. */
function assertSame(p: SlidePredictions, cli: SlidePredictions): void {
  for (const k of ["names", "targetGenes", "auxGenes", "mode", "patchPx", "section", "tta", "mpp"] as const) {
    assertEquals(p[k], cli[k], k);
  }
  for (const k of ["target", "aux", "tumorProb", "pixel", "grid", "topLeft"] as const) {
    assertEquals(Array.from(p[k]), Array.from(cli[k]), k);
  }
}

/** Each encoder's output equals the file the CLI wrote. */
async function assertFiles(p: SlidePredictions, out: string, o: { geojson?: string; h5ad?: boolean }) {
  const csv = slideCsvs(p);
  assertEquals(csv.target, await Deno.readTextFile(join(out, "target_count_pred.csv")));
  assertEquals(csv.aux, await Deno.readTextFile(join(out, "aux_count_pred.csv")));
  assertEquals(csv.tumor, await Deno.readTextFile(join(out, "tumor_pred.csv")));
  assertEquals(digest(slideNpz(p)), digest(await Deno.readFile(join(out, "predictions.npz"))));
  if (o.geojson) assertEquals(digest(slideGeoJson(p)), digest(await Deno.readFile(o.geojson)));
}

gpuTest("pipeline predictSlide at her2st spots equals predict-slide's files (batches of 3)", async (e) => {
  if (!her2st) return console.warn("skipped: needs ../shared/data/her2st/data");
  const dir = await Deno.makeTempDir({ prefix: "he2gene-pipeline-slide-" });
  try {
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const img = join(her2st, "ST-imgs/C/C2");
    const jpg = join(img, [...Deno.readDirSync(img)].find((f) => f.name.endsWith(".jpg"))!.name);
    const spotFile = join(her2st, "ST-spotfiles/C2_selection.tsv");
    // 5 spots of C2, as a spot CSV for the CLI.
    const spots = parseSpots(await Deno.readTextFile(spotFile), spotFile).filter((_, i) => i % 40 === 0);
    assertEquals(spots.length, 5);
    const csvPath = join(dir, "C2_spots.csv");
    await Deno.writeTextFile(
      csvPath,
      "x,y,pixel_x,pixel_y\n" + spots.map((s) => `${s.x},${s.y},${s.px},${s.py}`).join("\n") + "\n",
    );
    const out = join(dir, "out"), geojson = join(dir, "C2.geojson");
    const cli = await predictSlideCli(jpg, {
      weights,
      out,
      spots: csvPath,
      batchSize: 3,
      tta: "single",
      h5ad: true,
      geojson,
      quiet: true,
      engine: e,
    });

    const slide = await openSlide(jpg);
    const { model, targetGenes, auxGenes } = await loadModel(e, weights);
    try {
      const [W, H] = [slide.levels[0].width, slide.levels[0].height];
      const { patches } = spotPatches(spots, csvPath, { section: "C2", size: 150, width: W, height: H });
      const progress: [number, number][] = [];
      const timings: Record<string, number> = {};
      const opts = {
        patches,
        mode: "spots",
        patchPx: 150,
        section: "C2",
        batchSize: 3,
        tta: "single",
        targetGenes,
        auxGenes,
        weights,
        onProgress: (done: number, total: number) => progress.push([done, total]),
      } as const;
      const { csv, ...p } = await predictSlide(e, model, slide, { ...opts, csv: { aux: true }, timings });
      assertEquals(progress, [[3, 5], [5, 5]]);
      for (const s of ["read", "preprocess", "model", "write", "readBusy", "formatBusy"]) {
        if (!(timings[s] >= 0)) throw new Error(`no ${s} timing: ${JSON.stringify(timings)}`);
      }
      assertEquals(p.slide, jpg);
      assertSame(p, cli);
      await assertFiles(p, out, { geojson });
      // The rows formatted batch by batch during prediction are the encoder's text.
      assertEquals(csv, slideCsvs(p));
      // The h5ad files: the CLI's uns entries and slide images give its bytes.
      const h = await slideH5ad(p, {
        uns: { target: predictionUns("target", p), aux: predictionUns("aux", p) },
        images: await spatialImages(slide),
        software: SOFTWARE,
      });
      // (HDF5 files carry their write time, so the contents are compared, not the bytes.)
      for (const [head, bytes] of [["target", h.target], ["aux", h.aux]] as const) {
        const file = head === "target" ? "predictions.h5ad" : "predictions_aux.h5ad";
        await Deno.writeFile(join(dir, `lib-${file}`), bytes);
        assertEquals(
          digest(await readH5ad(join(dir, `lib-${file}`))),
          digest(await readH5ad(join(out, file))),
          file,
        );
      }

      // No CSV asked: none formatted; the aux CSV can be skipped.
      const plain = await predictSlide(e, model, slide, opts);
      assertEquals("csv" in plain, false);
      assertEquals(slideCsvs(plain, { aux: false }).aux, null);
      // Cancelled: the signal's reason is thrown.
      const ac = new AbortController();
      ac.abort(new Error("stopped"));
      await assertRejects(
        () => predictSlide(e, model, slide, { ...opts, signal: ac.signal }),
        Error,
        "stopped",
      );
    } finally {
      model.dispose();
      slide.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

gpuTest("pipeline predictSlide over the tissue tiles of an SVS equals predict-slide --tile", async (e) => {
  if (!cmu) return console.warn("skipped: needs ../shared/data/wsi/CMU-1-Small-Region.svs");
  const dir = await Deno.makeTempDir({ prefix: "he2gene-pipeline-tiles-" });
  try {
    const weights = await tinyCheckpoint(join(dir, "tiny.safetensors"));
    const out = join(dir, "out");
    const cli = await predictSlideCli(cmu, {
      weights,
      out,
      tilePx: 600,
      batchSize: 4,
      tta: "grid",
      quiet: true,
      engine: e,
    });
    const slide = await openSlide(cmu);
    const { model, targetGenes, auxGenes } = await loadModel(e, weights);
    try {
      const section = "CMU-1-Small-Region";
      const { patches } = await tilePatches(slide, { tilePx: 600, section });
      const p = await predictSlide(e, model, slide, {
        patches,
        mode: "tiles",
        patchPx: 600,
        section,
        batchSize: 4,
        tta: "grid",
        targetGenes,
        auxGenes,
        weights,
      });
      assertEquals(p.mpp, slide.mpp);
      assertSame(p, cli);
      await assertFiles(p, out, {});
    } finally {
      model.dispose();
      slide.close();
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
