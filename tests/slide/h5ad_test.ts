/**
 * The AnnData writer: our reader gets back what was written, h5py sees the encoding attributes of the
 * spec and numpy booleans, Python's anndata opens the file, and scanpy's spatial layout has the keys
 * `sc.pl.spatial` reads (skipped with a message when Python lacks h5py / anndata).
 */
import { join } from "node:path";
import { encodeH5ad, patchBooleans, readH5ad, spatialUns, writeH5ad } from "../../slide/h5ad.ts";
import { assertEquals, assertRejects, assertThrows } from "../helpers.ts";

const PYTHON = "/usr/bin/python3";

async function python(code: string): Promise<{ ok: boolean; out: string }> {
  try {
    const r = await new Deno.Command(PYTHON, { args: ["-c", code], stdout: "piped", stderr: "piped" })
      .output();
    const dec = new TextDecoder();
    return { ok: r.success, out: dec.decode(r.stdout) + dec.decode(r.stderr) };
  } catch (e) {
    return { ok: false, out: (e as Error).message };
  }
}
const h5pyOk = (await python("import h5py")).ok;
const anndataOk = (await python("import anndata")).ok;
if (!h5pyOk) console.warn(`skipped: the HDF5 layout check needs ${PYTHON} with h5py (python3-h5py)`);
if (!anndataOk) console.warn(`skipped: the anndata check needs ${PYTHON} with anndata (python3-anndata)`);

const SAMPLE = {
  X: Float32Array.from({ length: 12 }, (_, i) => i / 4 - 1),
  obsNames: ["C2_25_13", "C2_24_13", "C2_23_14", "C2_22_14"],
  varNames: ["FASN", "ERBB2", "GNAS"],
  obs: {
    tumor_prob: new Float32Array([0.1, 0.6, 0.9, 0.5]),
    tumor: [false, true, true, false],
    region: { categories: ["stroma", "tumour"], codes: new Int8Array([0, 1, 1, -1]) },
  },
  obsm: {
    spatial: {
      data: new Float64Array([6930.58, 3510.24, 6674.96, 3517.82, 1, 2, 3, 4]),
      shape: [4, 2] as [number, number],
    },
  },
  uns: {
    slide: "C2.jpg",
    patch_px: 150,
    flag: true,
    nested: {
      genes: ["FASN", "ERBB2"],
      image: { data: Uint8Array.from({ length: 24 }, (_, i) => i), shape: [2, 4, 3] },
    },
  },
};

Deno.test({
  name: "an h5ad file reads back: X, both indices, obs columns, obsm, root encoding",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const path = join(dir, "a.h5ad");
      await writeH5ad(path, SAMPLE);
      const a = await readH5ad(path);
      assertEquals(a.encoding, ["anndata", "0.1.0"]);
      assertEquals(a.shape, [4, 3]);
      assertEquals(Array.from(a.X), Array.from(SAMPLE.X));
      assertEquals(a.obsNames, SAMPLE.obsNames);
      assertEquals(a.varNames, SAMPLE.varNames);
      assertEquals(Array.from(a.obs.tumor_prob as Float64Array), Array.from(SAMPLE.obs.tumor_prob));
      assertEquals(a.obs.tumor, [false, true, true, false]);
      assertEquals(a.obs.region, ["stroma", "tumour", "tumour", ""]);
      assertEquals(a.obsm.spatial.shape, [4, 2]);
      assertEquals(Array.from(a.obsm.spatial.data), Array.from(SAMPLE.obsm.spatial.data));
      const { nested, ...scalars } = a.uns as typeof SAMPLE.uns;
      assertEquals(scalars, { slide: "C2.jpg", patch_px: 150, flag: true });
      assertEquals(nested.genes, ["FASN", "ERBB2"]);
      assertEquals(nested.image.shape, [2, 4, 3]);
      assertEquals(Array.from(nested.image.data), Array.from(SAMPLE.uns.nested.image.data));
      assertEquals([...Deno.readDirSync(dir)].map((f) => f.name), ["a.h5ad"]); // no temporary left
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "h5ad layout: the spec's encoding-type / encoding-version on every element (h5py)",
  ignore: !h5pyOk,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const path = join(dir, "a.h5ad");
      await writeH5ad(path, SAMPLE);
      const py = await python(
        `import h5py\nf = h5py.File("${path}", "r")\n` +
          `enc = lambda n: (n.attrs["encoding-type"], n.attrs["encoding-version"])\n` +
          `print(enc(f), enc(f["X"]), f["X"].dtype, f["X"].shape)\n` +
          `print(enc(f["obs"]), f["obs"].attrs["_index"], list(f["obs"].attrs["column-order"]))\n` +
          `print(enc(f["obs/_index"]), enc(f["obs/tumor_prob"]), f["obs/tumor_prob"].dtype, enc(f["obs/region"]))\n` +
          `print(enc(f["var"]), len(f["var"].attrs["column-order"]), enc(f["obsm"]), enc(f["obsm/spatial"]))\n` +
          `print(sorted(f.keys()))\n` +
          // numpy booleans: h5py's enum {FALSE: 0, TRUE: 1} of int8, read back as bool.
          `t = f["obs/tumor"]\n` +
          `tt = t.id.get_type()\n` +
          `names = [tt.get_member_name(i).decode() for i in range(tt.get_nmembers())]\n` +
          `print(enc(t), t.dtype, t[()].tolist(), tt.get_class() == h5py.h5t.ENUM, names, tt.get_super().get_size())\n` +
          `o = f["obs/region"].attrs["ordered"]\n` +
          `print(type(o).__name__, bool(o), enc(f["uns/flag"]), f["uns/flag"][()], f["uns/flag"].shape)\n` +
          `print(enc(f["uns/nested"]), enc(f["uns/nested/image"]), f["uns/nested/image"].dtype, f["uns/nested/image"].shape)`,
      );
      assertEquals(py.out.trim().split("\n"), [
        "('anndata', '0.1.0') ('array', '0.2.0') float32 (4, 3)",
        "('dataframe', '0.2.0') _index ['tumor_prob', 'tumor', 'region']",
        "('string-array', '0.2.0') ('array', '0.2.0') float32 ('categorical', '0.2.0')",
        "('dataframe', '0.2.0') 0 ('dict', '0.1.0') ('array', '0.2.0')",
        "['X', 'layers', 'obs', 'obsm', 'obsp', 'uns', 'var', 'varm', 'varp']",
        "('array', '0.2.0') bool [False, True, True, False] True ['FALSE', 'TRUE'] 1",
        "bool_ False ('numeric-scalar', '0.2.0') True ()",
        "('dict', '0.1.0') ('array', '0.2.0') uint8 (2, 4, 3)",
      ], py.out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "anndata.read_h5ad opens our file: boolean and categorical columns, the uns tree",
  ignore: !anndataOk,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const path = join(dir, "a.h5ad");
      await writeH5ad(path, { ...SAMPLE, var: { highly_variable: [true, false, true] } });
      const py = await python(
        `import anndata, numpy as np\na = anndata.read_h5ad("${path}")\n` +
          `print(a.shape, a.X.dtype, list(a.obs_names), list(a.var_names))\n` +
          `print(list(a.obs.columns), a.obs["tumor"].dtype, a.obs["tumor"].tolist(), a.obs["tumor_prob"].dtype)\n` +
          `print(a.obs["region"].dtype, a.obs["region"].cat.ordered, a.obs["region"].tolist())\n` +
          `print(a.var["highly_variable"].dtype, int(a.obs["tumor"].sum()))\n` +
          `print(a.obsm["spatial"][0].tolist(), a.uns["slide"], float(a.uns["patch_px"]), type(a.uns["flag"]).__name__)\n` +
          `im = a.uns["nested"]["image"]\n` +
          `print(list(a.uns["nested"]["genes"]), im.dtype, im.shape, im[1, 3].tolist())`,
      );
      assertEquals(py.out.trim().split("\n"), [
        "(4, 3) float32 ['C2_25_13', 'C2_24_13', 'C2_23_14', 'C2_22_14'] ['FASN', 'ERBB2', 'GNAS']",
        "['tumor_prob', 'tumor', 'region'] bool [False, True, True, False] float32",
        "category False ['stroma', 'tumour', 'tumour', nan]",
        "bool 2",
        "[6930.58, 3510.24] C2.jpg 150.0 bool_",
        "['FASN', 'ERBB2'] uint8 (2, 4, 3) [21, 22, 23]",
      ], py.out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("h5ad: shapes that disagree are refused with both sizes", async () => {
  await assertRejects(
    () => encodeH5ad({ ...SAMPLE, X: new Float32Array(5) }),
    RangeError,
    "X has 5 values, expected 4 × 3 = 12",
  );
  await assertRejects(
    () => encodeH5ad({ ...SAMPLE, obs: { tumor_prob: new Float32Array(3) } }),
    RangeError,
    `obs column "tumor_prob" has 3 values, expected 4`,
  );
  await assertRejects(
    () => encodeH5ad({ ...SAMPLE, obsm: { spatial: { data: new Float64Array(6), shape: [3, 2] } } }),
    RangeError,
    `obsm "spatial" has shape [3,2]`,
  );
});

Deno.test("h5ad: a uns array whose shape disagrees with its values is refused, naming it", async () => {
  await assertRejects(
    () => encodeH5ad({ ...SAMPLE, uns: { a: { b: { data: new Uint8Array(5), shape: [2, 3] } } } }),
    RangeError,
    "uns a/b has shape [2,3] (6 values) but 5 values",
  );
  assertThrows(
    () => spatialUns("S", { ...SPATIAL, hires: { width: 3, height: 2, data: new Uint8Array(17) } }),
    RangeError,
    "a 3 × 2 RGB image has 17 values",
  );
});

Deno.test("h5ad booleans: a file without any is left as it was; a match outside an object header is refused", async () => {
  const plain = await encodeH5ad({ X: new Float32Array([1, 2]), obsNames: ["a", "b"], varNames: ["g"] });
  const copy = plain.slice();
  assertEquals(patchBooleans(copy), 0);
  assertEquals(copy, plain);
  // The compound datatype encodeH5ad writes for a boolean (int8 member "he2geneBool"), appended as data.
  const int8 = [0x10, 0x08, 0, 0, 1, 0, 0, 0, 0, 0, 8, 0];
  const compound = [0x36, 1, 0, 0, 1, 0, 0, 0, ...new TextEncoder().encode("he2geneBool"), 0, 0, ...int8];
  const stray = new Uint8Array([...plain, ...compound]);
  assertThrows(
    () => patchBooleans(stray),
    Error,
    `the datatype at byte ${plain.length} lies in no object header`,
  );
});

// A 2000 × 1000 px slide seen as scanpy would: thumbnails at 0.15 and 0.03 image px per level-0 px.
function rgb(width: number, height: number): { width: number; height: number; data: Uint8Array } {
  const data = new Uint8Array(width * height * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) % 251;
  return { width, height, data };
}
const SPATIAL = {
  hires: rgb(300, 150),
  lowres: rgb(60, 30),
  hiresScale: 0.15,
  lowresScale: 0.03,
  spotDiameter: 150,
  metadata: { software_version: "he2gene test" },
};

Deno.test({
  name: "scanpy's spatial layout: images, scale factors and metadata where sc.pl.spatial reads them",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const path = join(dir, "spatial.h5ad");
      // Spots in level-0 px, the last one at the bottom-right corner of the slide.
      const spatial = new Float64Array([100, 50, 1000, 500, 1500, 250, 1999, 999]);
      await writeH5ad(path, {
        ...SAMPLE,
        obsm: { spatial: { data: spatial, shape: [4, 2] } },
        uns: { spatial: spatialUns("C2", SPATIAL) },
      });
      const a = await readH5ad(path);
      const lib = (a.uns.spatial as Record<string, Record<string, Record<string, unknown>>>).C2;
      assertEquals(Object.keys(lib).sort(), ["images", "metadata", "scalefactors"]);
      assertEquals(lib.scalefactors, {
        tissue_hires_scalef: 0.15,
        tissue_lowres_scalef: 0.03,
        spot_diameter_fullres: 150,
        fiducial_diameter_fullres: 150,
      });
      assertEquals(lib.metadata, { software_version: "he2gene test" });
      const hires = lib.images.hires as { data: Uint8Array; shape: number[] };
      assertEquals(hires.shape, [150, 300, 3]);
      assertEquals(Array.from(hires.data), Array.from(SPATIAL.hires.data));
      assertEquals((lib.images.lowres as { shape: number[] }).shape, [30, 60, 3]);
      if (!anndataOk) return;
      // What sc.pl.spatial does (scanpy is not in Debian): library, image, scale factor, spots on the image.
      const py = await python(
        `import anndata, numpy as np\na = anndata.read_h5ad("${path}")\n` +
          `lib = list(a.uns["spatial"].keys())\n` +
          `d = a.uns["spatial"][lib[0]]\n` +
          `img, sf = d["images"]["hires"], d["scalefactors"]\n` +
          `xy = a.obsm["spatial"] * sf["tissue_hires_scalef"]\n` +
          `inside = (xy[:, 0] >= 0) & (xy[:, 0] < img.shape[1]) & (xy[:, 1] >= 0) & (xy[:, 1] < img.shape[0])\n` +
          `low = a.obsm["spatial"] * sf["tissue_lowres_scalef"]\n` +
          `ok = (low[:, 0] < d["images"]["lowres"].shape[1]) & (low[:, 1] < d["images"]["lowres"].shape[0])\n` +
          `print(lib, img.dtype, img.shape, d["images"]["lowres"].shape, sorted(sf.keys()))\n` +
          `print(bool(inside.all()), bool(ok.all()), float(sf["spot_diameter_fullres"]), dict(d["metadata"]))\n` +
          // The hires image (90 kB) is deflated, the lowres one (5 kB) is not; both equal what was written.
          `import h5py\nf = h5py.File("${path}", "r")\nim = f["uns/spatial/C2/images"]\n` +
          `print(im["hires"].compression, im["hires"].chunks, im["lowres"].compression, int(img.sum()))`,
      );
      assertEquals(py.out.trim().split("\n"), [
        "['C2'] uint8 (150, 300, 3) (30, 60, 3) ['fiducial_diameter_fullres', 'spot_diameter_fullres', " +
        "'tissue_hires_scalef', 'tissue_lowres_scalef']",
        "True True 150.0 {'software_version': 'he2gene test'}",
        `gzip (150, 256, 3) None ${SPATIAL.hires.data.reduce((a, b) => a + b, 0)}`,
      ], py.out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
