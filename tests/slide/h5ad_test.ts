/**
 * The AnnData writer: our reader gets back what was written, h5py sees the encoding attributes of the
 * spec, and Python's anndata opens the file (skipped with a message when Python lacks h5py / anndata).
 */
import { join } from "node:path";
import { encodeH5ad, readH5ad, writeH5ad } from "../../slide/h5ad.ts";
import { assertEquals, assertRejects } from "../helpers.ts";

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
  uns: { slide: "C2.jpg", patch_px: 150 },
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
      assertEquals(a.obs.tumor, ["False", "True", "True", "False"]);
      assertEquals(a.obs.region, ["stroma", "tumour", "tumour", ""]);
      assertEquals(a.obsm.spatial.shape, [4, 2]);
      assertEquals(Array.from(a.obsm.spatial.data), Array.from(SAMPLE.obsm.spatial.data));
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
          `print(sorted(f.keys()))`,
      );
      assertEquals(py.out.trim().split("\n"), [
        "('anndata', '0.1.0') ('array', '0.2.0') float32 (4, 3)",
        "('dataframe', '0.2.0') _index ['tumor_prob', 'tumor', 'region']",
        "('string-array', '0.2.0') ('array', '0.2.0') float32 ('categorical', '0.2.0')",
        "('dataframe', '0.2.0') 0 ('dict', '0.1.0') ('array', '0.2.0')",
        "['X', 'layers', 'obs', 'obsm', 'obsp', 'uns', 'var', 'varm', 'varp']",
      ], py.out);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "anndata.read_h5ad opens our file (string columns for booleans)",
  ignore: !anndataOk,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "he2gene-h5ad-" });
    try {
      const path = join(dir, "a.h5ad");
      // anndata 0.8 needs a numpy bool for a categorical's `ordered`, which h5wasm cannot write: leave it out.
      const { region: _, ...obs } = SAMPLE.obs;
      await writeH5ad(path, { ...SAMPLE, obs });
      const py = await python(
        `import anndata, numpy as np\na = anndata.read_h5ad("${path}")\n` +
          `print(a.shape, a.X.dtype, list(a.obs_names), list(a.var_names))\n` +
          `print(list(a.obs.columns), list(a.obs["tumor"]), a.obs["tumor_prob"].dtype)\n` +
          `print(a.obsm["spatial"][0].tolist(), a.uns["slide"], float(a.uns["patch_px"]))`,
      );
      assertEquals(py.out.trim().split("\n"), [
        "(4, 3) float32 ['C2_25_13', 'C2_24_13', 'C2_23_14', 'C2_22_14'] ['FASN', 'ERBB2', 'GNAS']",
        "['tumor_prob', 'tumor'] ['False', 'True', 'True', 'False'] float32",
        "[6930.58, 3510.24] C2.jpg 150.0",
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
