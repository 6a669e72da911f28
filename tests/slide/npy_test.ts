import { join } from "node:path";
import { assertEquals, assertThrows, sharedData } from "../helpers.ts";
import {
  decodeNpy,
  decodeNpz,
  encodeNpy,
  encodeNpz,
  encodeZip,
  type NpyArray,
  NpyError,
  readNpy,
  readNpz,
  toNumbers,
} from "../../slide/npy.ts";
import { csvTable, encodeNpz as encodeNpzFromNpz, fmtFloat32 } from "../../slide/npz.ts";
import { openZip } from "../../weights/zip.ts";

const PY = "/usr/bin/python3";

/** Run python with numpy; null (with a message) when python or numpy is missing. */
async function python(code: string): Promise<string | null> {
  try {
    const out = await new Deno.Command(PY, { args: ["-c", code], stderr: "piped", stdout: "piped" }).output();
    const err = new TextDecoder().decode(out.stderr);
    if (!out.success) {
      if (/No module named 'numpy'/.test(err)) {
        console.warn("skipped: numpy is not installed for /usr/bin/python3");
        return null;
      }
      throw new Error(`python failed: ${err}`);
    }
    return new TextDecoder().decode(out.stdout);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      console.warn(`skipped: ${PY} is absent`);
      return null;
    }
    throw e;
  }
}

const SAMPLES: Record<string, NpyArray> = {
  f4: { dtype: "f4", shape: [2, 3], data: new Float32Array([1.5, -2, 3.25, 0, 1e-30, 7]) },
  f8: { dtype: "f8", shape: [3], data: new Float64Array([Math.PI, -1e300, 0.1]) },
  i4: { dtype: "i4", shape: [2, 2], data: new Int32Array([1, -2, 2147483647, -2147483648]) },
  i8: { dtype: "i8", shape: [2], data: new BigInt64Array([-5n, 9007199254740993n]) },
  u1: { dtype: "u1", shape: [4], data: new Uint8Array([0, 1, 128, 255]) },
  b1: { dtype: "b1", shape: [], data: new Uint8Array([1]) },
  U: { dtype: "U", shape: [3], data: ["ERBB2", "", "Gène-λ😀"] },
};

/** A JSON-safe form of an array (bigints as strings). */
function plain(a: NpyArray): unknown {
  return {
    dtype: a.dtype,
    shape: a.shape,
    data: [...a.data].map((v) => typeof v === "bigint" ? String(v) : v),
  };
}

Deno.test("npy round trip in memory keeps dtype, shape and values for every dtype", () => {
  for (const [k, a] of Object.entries(SAMPLES)) {
    for (const version of [1, 2, 3] as const) {
      assertEquals(plain(decodeNpy(encodeNpy(a, { version }), k)), plain(a), `${k} v${version}`);
    }
  }
  for (const compress of [false, true]) {
    const z = decodeNpz(encodeNpz(SAMPLES, { compress }));
    assertEquals(Object.keys(z), Object.keys(SAMPLES));
    for (const k of Object.keys(SAMPLES)) assertEquals(plain(z[k]), plain(SAMPLES[k]));
  }
});

Deno.test("npy data start on a 64-byte boundary and numeric arrays are views of the bytes", () => {
  const bytes = encodeNpy(SAMPLES.f4);
  const a = decodeNpy(bytes);
  assertEquals((bytes.length - 24) % 64, 0);
  assertEquals(a.data instanceof Float32Array && a.data.buffer === bytes.buffer, true);
  // An unaligned start (as in a stored npz member) is copied, not a misaligned view.
  const shifted = new Uint8Array(bytes.length + 1);
  shifted.set(bytes, 1);
  assertEquals(plain(decodeNpy(shifted.subarray(1))), plain(SAMPLES.f4));
});

Deno.test("slide/npz.ts still exports the writer", () => {
  assertEquals(plain(decodeNpz(encodeNpzFromNpz({ a: SAMPLES.f4 })).a), plain(SAMPLES.f4));
});

Deno.test("a stored npz is byte for byte what he2gene wrote before fflate (np.savez's layout)", async () => {
  const z = encodeNpz(SAMPLES);
  // SHA-256 of encodeNpz(SAMPLES) by the hand-written zip writer that fflate replaced (commit 61cc72e).
  const sha = Array.from(
    new Uint8Array(await crypto.subtle.digest("SHA-256", new Uint8Array(z))),
    (b) => b.toString(16).padStart(2, "0"),
  );
  assertEquals([z.length, sha.join("")], [
    1701,
    "fdc7ea1f1e451776af76fa8d255b2c53e92f0a2d68bb98fecdf0a50c6425ec6a",
  ]);
  const dv = new DataView(z.buffer, z.byteOffset, z.byteLength);
  for (const e of openZip(z, "s.npz").entries.values()) {
    // stored, no flags, DOS time and date 0
    const h = e.headerOffset;
    assertEquals([e.method, dv.getUint16(h + 6, true), dv.getUint32(h + 10, true)], [0, 0, 0], e.name);
  }
});

Deno.test("a compressed npz round-trips: every member deflated, smaller, the same arrays", () => {
  // Predictions-like: 200 spots × 300 genes of values with two decimals, and the spot names.
  const P = 200, G = 300;
  const target = Float32Array.from({ length: P * G }, (_, i) => Math.round(Math.log1p(i % 97) * 100) / 100);
  const names = Array.from({ length: P }, (_, i) => `C2_${i % 30}_${Math.floor(i / 30)}`);
  const arrays: Record<string, NpyArray> = {
    target: { dtype: "f4", shape: [P, G], data: target },
    names: { dtype: "U", shape: [P], data: names },
    ...SAMPLES,
  };
  const stored = encodeNpz(arrays), packed = encodeNpz(arrays, { compress: true });
  assertEquals(packed.length < stored.length / 4, true, `${packed.length} of ${stored.length} bytes`);
  const zip = openZip(packed, "c.npz");
  assertEquals([...zip.entries.keys()], Object.keys(arrays).map((k) => `${k}.npy`));
  for (const [name, e] of zip.entries) {
    assertEquals([e.method, zip.read(name).stored], [8, false], name);
    assertEquals(zip.read(name).bytes, encodeNpy(arrays[name.slice(0, -4)]), name);
  }
  const back = decodeNpz(packed, "c.npz");
  assertEquals(Object.keys(back), Object.keys(arrays));
  for (const k of Object.keys(arrays)) assertEquals(plain(back[k]), plain(arrays[k]), k);
});

Deno.test("encodeZip refuses a name given twice and names that fflate's object keys would reorder", () => {
  const a = new Uint8Array([1]);
  assertThrows(
    () => encodeZip([["a.npy", a], ["a.npy", a]]),
    RangeError,
    'member "a.npy": current name is given twice',
  );
  assertThrows(() => encodeZip([["b", a], ["0", a]]), RangeError, 'member "0": an array index or __proto__');
  assertThrows(() => encodeZip([["__proto__", a]]), RangeError, "an array index or __proto__");
});

Deno.test("bad npy input names the file, the expectation and the byte offset", () => {
  const good = encodeNpy(SAMPLES.f4);
  assertThrows(
    () => decodeNpy(new Uint8Array([1, 2, 3]), "x.npy"),
    NpyError,
    "x.npy: expected the NPY magic",
  );
  assertThrows(() => decodeNpy(good.subarray(0, good.length - 3), "t.npy"), NpyError, "ends at byte");
  const v9 = good.slice();
  v9[6] = 9;
  assertThrows(
    () => decodeNpy(v9, "v.npy"),
    NpyError,
    "expected NPY version 1.0, 2.0 or 3.0, found 9.0 (at byte 6)",
  );
  const forder = encodeNpy(SAMPLES.f4).slice();
  const text = new TextDecoder().decode(forder.subarray(10, 80)).replace("False", "True ");
  forder.set(new TextEncoder().encode(text), 10);
  assertThrows(() => decodeNpy(forder, "f.npy"), NpyError, "expected C order, found fortran_order: True");
  const be = encodeNpy(SAMPLES.f4).slice();
  be[be.indexOf(0x3c /* < */)] = 0x3e; // '>f4'
  assertThrows(() => decodeNpy(be, "b.npy"), NpyError, "found '>f4' (big-endian");
  assertThrows(
    () => decodeNpz(new Uint8Array(40), "z.npz"),
    NpyError,
    "z.npz: expected a zip end-of-central",
  );
  assertThrows(() => toNumbers(SAMPLES.U, "genes"), TypeError, "Cannot read genes as numbers");
});

Deno.test("real files: her2st's 785 HVG names and HE2Gene's mean expression read", async () => {
  const hvg = sharedData("her2st/her_hvg_cut_1000.npy");
  const mean = sharedData("he2gene/mean_expression.npy");
  if (!hvg || !mean) return;
  const g = await readNpy(hvg);
  assertEquals([g.dtype, g.shape, g.data[0], g.data[784]], ["U", [785], "HPS6", "TNFRSF14"]);
  const m = await readNpy(mean);
  assertEquals([m.dtype, m.shape], ["f8", [19949]]);
  // np.load(...)[:3] = [3.95900190e-01 9.82382605e-05 3.05756762e+00]
  const v = toNumbers(m);
  assertEquals([+v[0].toPrecision(9), +v[1].toPrecision(9), +v[2].toPrecision(9)], [
    0.39590019,
    9.82382605e-05,
    3.05756762,
  ]);
});

Deno.test("numpy loads what we write (npy v1/v2/v3, savez-like and compressed npz)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "npy_ours_" });
  try {
    for (const [k, a] of Object.entries(SAMPLES)) {
      await Deno.writeFile(
        join(dir, `${k}.npy`),
        encodeNpy(a, { version: k === "f8" ? 2 : k === "U" ? 3 : 1 }),
      );
    }
    await Deno.writeFile(join(dir, "s.npz"), encodeNpz(SAMPLES));
    await Deno.writeFile(join(dir, "c.npz"), encodeNpz(SAMPLES, { compress: true }));
    const out = await python(`
import json, numpy as np, os
d = ${JSON.stringify(dir)}
def conv(a):
    k = {'f':'f'+str(a.dtype.itemsize),'i':'i'+str(a.dtype.itemsize),'u':'u1','b':'b1','U':'U'}[a.dtype.kind]
    vals = [str(v) if k == 'i8' else (int(v) if k == 'b1' else (v.item() if hasattr(v, 'item') else v)) for v in a.reshape(-1)]
    return {'dtype': k, 'shape': list(a.shape), 'data': vals, 'order': a.dtype.byteorder}
r = {n[:-4]: conv(np.load(os.path.join(d, n))) for n in sorted(os.listdir(d)) if n.endswith('.npy')}
for z in ['s', 'c']:
    f = np.load(os.path.join(d, z + '.npz'))
    r[z] = {k: conv(f[k]) for k in f.files}
print(json.dumps(r))`);
    if (out === null) return;
    const got = JSON.parse(out);
    for (const [k, a] of Object.entries(SAMPLES)) {
      const want = plain(a) as { data: unknown[] };
      for (const g of [got[k], got.s[k], got.c[k]]) {
        delete g.order;
        assertEquals(g, want, k);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("numpy opens a compressed npz (zipfile's CRC check passes) and reads a non-ASCII member name", async () => {
  const dir = await Deno.makeTempDir({ prefix: "npy_compressed_" });
  try {
    const P = 50, G = 40;
    const target = Float32Array.from({ length: P * G }, (_, i) => Math.round(Math.sin(i) * 1000) / 100);
    const arrays: Record<string, NpyArray> = {
      target: { dtype: "f4", shape: [P, G], data: target },
      "gène_λ": SAMPLES.U,
      i8: SAMPLES.i8,
    };
    const path = join(dir, "c.npz");
    await Deno.writeFile(path, encodeNpz(arrays, { compress: true }));
    const out = await python(`
import json, zipfile, numpy as np
p = ${JSON.stringify(path)}
z = zipfile.ZipFile(p)
f = np.load(p)
print(json.dumps({'bad': z.testzip(), 'methods': sorted({i.compress_type for i in z.infolist()}),
  'files': f.files, 'shape': list(f['target'].shape), 'target': f['target'].reshape(-1).tolist(),
  'names': f['gène_λ'].tolist(), 'i8': [str(v) for v in f['i8']]}))`);
    if (out === null) return;
    assertEquals(JSON.parse(out), {
      bad: null,
      methods: [8],
      files: ["target", "gène_λ", "i8"],
      shape: [P, G],
      target: Array.from(target),
      names: SAMPLES.U.data,
      i8: ["-5", "9007199254740993"],
    });
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("we read what numpy writes (np.save, versions 2.0/3.0, np.savez, np.savez_compressed)", async () => {
  const dir = await Deno.makeTempDir({ prefix: "npy_numpy_" });
  try {
    const out = await python(`
import numpy as np, os
d = ${JSON.stringify(dir)}
arrs = dict(
  f4=np.arange(12, dtype='<f4').reshape(3, 4) / 7, f8=np.array([np.pi, -0.0, 1e-310]),
  i4=np.array([[-1, 2], [3, 2**31 - 1]], dtype='<i4'), i8=np.array([-(2**40), 5], dtype='<i8'),
  u1=np.array([0, 200, 255], dtype=np.uint8), b1=np.array([True, False, True]), b0=np.bool_(True),
  U=np.array(['HPS6', 'Gène-λ', ''], dtype='<U9'), U1=np.array(['C1']), empty=np.zeros((0, 3), '<f4'))
for k, a in arrs.items(): np.save(os.path.join(d, k + '.npy'), a)
for v in [(2, 0), (3, 0)]:
    with open(os.path.join(d, 'v%d.npy' % v[0]), 'wb') as f: np.lib.format.write_array(f, arrs['U'], version=v)
np.save(os.path.join(d, 'fortran.npy'), np.asfortranarray(arrs['f4']))
np.save(os.path.join(d, 'big.npy'), arrs['f4'].astype('>f4'))
np.savez(os.path.join(d, 'plain.npz'), **arrs)
np.savez_compressed(os.path.join(d, 'comp.npz'), **arrs)
import json; print(json.dumps(arrs['f4'].reshape(-1).tolist()))`);
    if (out === null) return;
    const f4: number[] = JSON.parse(out);
    const want: Record<string, unknown> = {
      f4: { dtype: "f4", shape: [3, 4], data: f4 },
      f8: { dtype: "f8", shape: [3], data: [Math.PI, -0, 1e-310] },
      i4: { dtype: "i4", shape: [2, 2], data: [-1, 2, 3, 2147483647] },
      i8: { dtype: "i8", shape: [2], data: [String(-(2 ** 40)), "5"] },
      u1: { dtype: "u1", shape: [3], data: [0, 200, 255] },
      b1: { dtype: "b1", shape: [3], data: [1, 0, 1] },
      b0: { dtype: "b1", shape: [], data: [1] },
      U: { dtype: "U", shape: [3], data: ["HPS6", "Gène-λ", ""] },
      U1: { dtype: "U", shape: [1], data: ["C1"] },
      empty: { dtype: "f4", shape: [0, 3], data: [] },
    };
    for (const [k, w] of Object.entries(want)) {
      assertEquals(plain(await readNpy(join(dir, `${k}.npy`))), w, k);
    }
    assertEquals(plain(await readNpy(join(dir, "v2.npy"))), want.U);
    assertEquals(plain(await readNpy(join(dir, "v3.npy"))), want.U);
    for (const z of ["plain", "comp"]) {
      const arrays = await readNpz(join(dir, `${z}.npz`));
      assertEquals(Object.keys(arrays).sort(), Object.keys(want).sort());
      for (const [k, w] of Object.entries(want)) {
        assertEquals(plain(arrays[k]), w, `${z}:${k}`);
      }
    }
    await readNpy(join(dir, "fortran.npy")).then(
      () => assertEquals("no error", "fortran order error"),
      (e) => assertEquals(e instanceof NpyError && e.message.includes("expected C order"), true),
    );
    await readNpy(join(dir, "big.npy")).then(
      () => assertEquals("no error", "big-endian error"),
      (e) => assertEquals(e instanceof NpyError && e.message.includes("'>f4'"), true),
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("CSV floats are written as numpy's str() of the float32 (pandas' to_csv)", async () => {
  // Log-uniform magnitudes over 1e-8…1e18 of both signs, integers, and the edge cases of the two notations.
  const v = new Float32Array(4000);
  let s = 12345;
  for (let i = 0; i < v.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    const u = s / 2 ** 32;
    v[i] = (i % 2 ? -1 : 1) * 10 ** (u * 26 - 8);
    if (i % 7 === 0) v[i] = Math.round(v[i] * 1000) / 1000;
  }
  v.set([0, -0, 1e-4, 9.9999e-5, 1e16, 9.999999e15, 2, -7, 0.1, 1 / 3, 5e-45, 3.4e38], 0);
  const py = await python(
    `import sys, numpy as np; a = np.frombuffer(bytes.fromhex(sys.argv[1] if len(sys.argv) > 1 else ` +
      `'${Array.from(new Uint8Array(v.buffer), (b) => b.toString(16).padStart(2, "0")).join("")}'), ` +
      `dtype='<f4'); print('\\n'.join(a.astype(str).tolist()))`,
  );
  if (py === null) return;
  const want = py.trimEnd().split("\n");
  const got = Array.from(v, fmtFloat32);
  const bad = got.findIndex((g, i) => g !== want[i]);
  assertEquals(bad, -1, bad < 0 ? "" : `value ${v[bad]}: ours ${got[bad]}, numpy ${want[bad]}`);
  assertEquals(fmtFloat32(NaN), "");
  assertEquals(
    csvTable(["S1_1_2", 'a,"b"'], ["G1", "G2"], new Float32Array([1.5, 2, 1e-5, -0.25])),
    ',G1,G2\nS1_1_2,1.5,2.0\n"a,""b""",1e-05,-0.25\n',
  );
});
