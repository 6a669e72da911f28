/**
 * The QuPath GeoJSON of predictions: one closed square a spot or tile in level-0 pixels, QuPath's object
 * types, measurements per gene and the tumour call as a classification.
 */
import {
  NORMAL_CLASS,
  predictionFeature,
  predictionsGeoJson,
  TUMOR_CLASS,
  TUMOR_THRESHOLD,
} from "../../slide/geojson.ts";
import { assertEquals, assertThrows } from "../helpers.ts";

const SPOTS = {
  names: ["C2_25_13", "C2_24_13", "C2_23_14"],
  topLeft: [6855, 3435, 6599, 3442, 100, 0],
  size: 150,
  genes: ["FASN", "ERBB2"],
  values: new Float32Array([0.1, 2.5, 1 / 3, -0.75, 0, 1e-5]),
  tumorProb: new Float32Array([0.2, TUMOR_THRESHOLD, 0.9]),
  objectType: "detection" as const,
};

Deno.test("geojson: a FeatureCollection of closed squares in level-0 pixels, one per spot", () => {
  const fc = JSON.parse(new TextDecoder().decode(predictionsGeoJson(SPOTS)));
  assertEquals(fc.type, "FeatureCollection");
  assertEquals(fc.features.length, 3);
  const f = fc.features[0];
  assertEquals(f.type, "Feature");
  assertEquals(f.geometry, {
    type: "Polygon",
    coordinates: [[[6855, 3435], [7005, 3435], [7005, 3585], [6855, 3585], [6855, 3435]]],
  });
  for (const g of fc.features) {
    const ring = g.geometry.coordinates[0];
    assertEquals(ring.length, 5);
    assertEquals(ring[4], ring[0]); // closed
  }
  assertEquals(fc.features[2].geometry.coordinates[0][2], [250, 150]);
});

Deno.test("geojson: properties carry QuPath's object type, the name, measurements and the tumour class", () => {
  const fc = JSON.parse(new TextDecoder().decode(predictionsGeoJson(SPOTS)));
  const props = fc.features.map((f: { properties: unknown }) => f.properties);
  assertEquals(props[0], {
    objectType: "detection",
    name: "C2_25_13",
    classification: { name: "Normal", color: NORMAL_CLASS.color },
    measurements: { FASN: 0.1, ERBB2: 2.5, tumor_prob: 0.2 },
  });
  // Float32 values as their shortest decimal (the CSVs' numbers), which read back as the same float32.
  assertEquals(props[1].measurements, { FASN: 0.33333334, ERBB2: -0.75, tumor_prob: 0.5 });
  assertEquals(props[2].measurements, { FASN: 0, ERBB2: 1e-5, tumor_prob: 0.9 });
  for (let i = 0; i < 3; i++) {
    for (const [g, gene] of SPOTS.genes.entries()) {
      assertEquals(Math.fround(props[i].measurements[gene]), SPOTS.values[2 * i + g]);
    }
  }
  // Tumour above 0.5 (exactly 0.5 is Normal, as in tumor_pred.csv and the h5ad's obs['tumor']).
  assertEquals(props.map((p: { classification: { name: string } }) => p.classification.name), [
    "Normal",
    "Normal",
    "Tumor",
  ]);
  assertEquals(props[2].classification, { name: "Tumor", color: TUMOR_CLASS.color });
  // Tiles are QuPath tiles.
  assertEquals(predictionFeature({ ...SPOTS, objectType: "tile" }, 0).properties.objectType, "tile");
});

Deno.test("geojson: inconsistent sizes and non-finite values are refused, naming them", () => {
  assertThrows(() => predictionsGeoJson({ ...SPOTS, topLeft: [0, 0] }), RangeError, "topLeft has 2 values");
  assertThrows(
    () => predictionsGeoJson({ ...SPOTS, values: new Float32Array(5) }),
    RangeError,
    "values has 5 values, expected 6",
  );
  assertThrows(
    () => predictionsGeoJson({ ...SPOTS, tumorProb: new Float32Array(2) }),
    RangeError,
    "tumorProb has 2 values",
  );
  assertThrows(() => predictionsGeoJson({ ...SPOTS, genes: ["FASN", "FASN"] }), RangeError, "unique");
  const nan = SPOTS.values.slice();
  nan[3] = NaN;
  assertThrows(
    () => predictionsGeoJson({ ...SPOTS, values: nan }),
    RangeError,
    "C2_24_13 has ERBB2 = NaN",
  );
});

Deno.test("geojson: an empty collection is still valid GeoJSON", () => {
  const empty = predictionsGeoJson({
    ...SPOTS,
    names: [],
    topLeft: [],
    values: new Float32Array(0),
    tumorProb: new Float32Array(0),
  });
  assertEquals(JSON.parse(new TextDecoder().decode(empty)), { type: "FeatureCollection", features: [] });
});
