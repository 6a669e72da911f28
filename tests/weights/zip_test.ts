import { deflateSync } from "fflate";
import { CheckpointError, parseTorch } from "../../weights/mod.ts";
import { openZip } from "../../weights/zip.ts";
import { MAX_INFLATE_RATIO, readWholeFile } from "../../weights/zip.ts";
import { encodeZip } from "../../slide/npy.ts";
import { assertEquals, assertThrows } from "../helpers.ts";
import { assertTensor, EXPECTED, fixture } from "./fixtures.ts";

/**
 * Re-zip every entry of `src` stored, with ZIP64 everywhere: 0xFFFFFFFF sizes and offsets in the central
 * directory with a ZIP64 extra field, a ZIP64 end-of-central-directory record and locator (APPNOTE 4.3.14,
 * 4.3.15, 4.5.3), and local headers padded so that data starts at a multiple of 64 like PyTorch's writer.
 */
function zip64(entries: [string, Uint8Array][]): Uint8Array {
  const out: number[] = [];
  const u16 = (v: number) => out.push(v & 0xff, v >>> 8);
  const u32 = (v: number) => (u16(v & 0xffff), u16(v >>> 16));
  const u64 = (v: number) => (u32(v % 2 ** 32), u32(Math.floor(v / 2 ** 32)));
  const bytes = (b: Uint8Array) => b.forEach((x) => out.push(x));
  const central: { name: Uint8Array; size: number; offset: number }[] = [];
  for (const [n, data] of entries) {
    const name = new TextEncoder().encode(n);
    const offset = out.length;
    const pad = (64 - ((offset + 30 + name.length + 4) % 64)) % 64;
    u32(0x04034b50), u16(45), u16(0), u16(0), u32(0), u32(0), u32(data.length), u32(data.length);
    u16(name.length), u16(4 + pad), bytes(name), u16(0xcafe), u16(pad), bytes(new Uint8Array(pad));
    bytes(data);
    central.push({ name, size: data.length, offset });
  }
  const cd = out.length;
  for (const e of central) {
    u32(0x02014b50), u16(45), u16(45), u16(0), u16(0), u32(0), u32(0);
    u32(0xffffffff),
      u32(0xffffffff),
      u16(e.name.length),
      u16(28),
      u16(0),
      u16(0),
      u16(0),
      u32(0),
      u32(0xffffffff);
    bytes(e.name), u16(1), u16(24), u64(e.size), u64(e.size), u64(e.offset);
  }
  const cdSize = out.length - cd, rec = out.length;
  u32(0x06064b50), u64(44), u16(45), u16(45), u32(0), u32(0), u64(central.length), u64(central.length);
  u64(cdSize), u64(cd);
  u32(0x07064b50), u32(0), u64(rec), u32(1);
  u32(0x06054b50), u16(0), u16(0), u16(0xffff), u16(0xffff), u32(0xffffffff), u32(0xffffffff), u16(0);
  return new Uint8Array(out);
}

Deno.test("openZip reads ZIP64 central directories, extra fields and padded local headers", async () => {
  const src = openZip(await Deno.readFile(fixture("small_model.pt")), "small_model.pt");
  const entries = [...src.entries.keys()].map((n) => [n, src.read(n).bytes] as [string, Uint8Array]);
  const bytes = zip64(entries);
  const zip = openZip(bytes, "z64.pt");
  assertEquals([...zip.entries.keys()], [...src.entries.keys()]);
  for (const [n, data] of entries) {
    const e = zip.read(n);
    assertEquals(e.stored, true);
    assertEquals(e.offset % 64, 0);
    assertEquals(e.bytes, data);
  }
  const ckpt = parseTorch(bytes, { file: "z64.pt" });
  for (const [k, w] of Object.entries(EXPECTED["small_model.pt"])) assertTensor(k, ckpt.tensors.get(k), w);
});

Deno.test("openZip returns views of stored entries (no copy)", async () => {
  const bytes = await Deno.readFile(fixture("model_base.pt"));
  const e = openZip(bytes, "model_base.pt").read("model_base/data/0");
  assertEquals(e.bytes.buffer === bytes.buffer, true);
});

Deno.test("openZip names the missing entry and a bad local header's offset", async () => {
  const bytes = (await Deno.readFile(fixture("small_model.pt"))).slice();
  const zip = openZip(bytes, "m.pt");
  assertThrows(() => zip.read("nope"), CheckpointError, "m.pt: expected a zip entry named nope");
  const h = zip.entries.get("small_model/data/0")!.headerOffset;
  bytes[h] = 0;
  assertThrows(() => zip.read("small_model/data/0"), CheckpointError, `(at byte ${h})`);
});

/**
 * A zip of one entry named `name`: `data` as given (raw deflate for method 8) and `size`, the inflated size
 * its headers declare (the CRC is left 0: the reader does not check it).
 */
function oneEntry(name: string, method: number, data: Uint8Array, size: number): Uint8Array {
  const n = new TextEncoder().encode(name);
  const out = new Uint8Array(30 + n.length + data.length + 46 + n.length + 22);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, 0x04034b50, true), dv.setUint16(8, method, true), dv.setUint32(18, data.length, true);
  dv.setUint32(22, size, true),
    dv.setUint16(26, n.length, true),
    out.set(n, 30),
    out.set(data, 30 + n.length);
  const c = 30 + n.length + data.length;
  dv.setUint32(c, 0x02014b50, true),
    dv.setUint16(c + 10, method, true),
    dv.setUint32(c + 20, data.length, true);
  dv.setUint32(c + 24, size, true), dv.setUint16(c + 28, n.length, true), out.set(n, c + 46);
  const e = c + 46 + n.length;
  dv.setUint32(e, 0x06054b50, true), dv.setUint16(e + 8, 1, true), dv.setUint16(e + 10, 1, true);
  dv.setUint32(e + 12, 46 + n.length, true), dv.setUint32(e + 16, c, true);
  return out;
}

/** Bytes that deflate well but not trivially: a repeating ramp with a seeded sprinkle of noise. */
function ramp(n: number): Uint8Array {
  let s = 7;
  return Uint8Array.from({ length: n }, (_, i) => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s % 16 === 0 ? s >>> 24 : i % 251;
  });
}

Deno.test("openZip inflates deflated entries (Python's zipfile, fflate's) to the stored entries' bytes", async () => {
  const src = openZip(await Deno.readFile(fixture("small_model.pt")), "small_model.pt");
  const entries = [...src.entries.keys()].map((n) => [n, src.read(n).bytes] as [string, Uint8Array]);
  const python = openZip(await Deno.readFile(fixture("small_model_deflate.pt")), "small_model_deflate.pt");
  const ours = openZip(encodeZip(entries, { compress: true }), "ours.pt");
  for (const zip of [python, ours]) {
    assertEquals([...zip.entries.keys()], [...src.entries.keys()]);
    for (const [n, data] of entries) {
      assertEquals(zip.entries.get(n)!.method, 8, n);
      const e = zip.read(n);
      assertEquals(e.stored, false);
      assertEquals(e.bytes, data, n);
    }
  }
  // Raw deflate streams at every level: 0 (stored blocks), fixed and dynamic Huffman codes.
  const data = ramp(300_000);
  for (const level of [0, 1, 6, 9] as const) {
    const zip = openZip(oneEntry("d", 8, deflateSync(data, { level }), data.length), `level${level}.zip`);
    assertEquals(zip.read("d").bytes, data, `level ${level}`);
  }
});

Deno.test("openZip refuses a zip bomb: more than deflate's 1032:1 declared, or more inflated than declared", () => {
  // A header that declares more than deflate can produce from the entry's bytes: refused before allocating.
  const small = deflateSync(ramp(1000));
  assertThrows(
    () => openZip(oneEntry("bomb.npy", 8, small, 0xfffffff0), "bomb.npz").read("bomb.npy"),
    CheckpointError,
    `bomb.npz: expected at most ${MAX_INFLATE_RATIO} × ${small.length} bytes inflated for bomb.npy ` +
      `(deflate's largest ratio), but its header declares ${0xfffffff0}: a corrupt header or a zip bomb`,
  );
  // 64 MiB of zeros in ~64 KiB, declared as 1 MiB: inflated into 1 MiB + 1 byte, never 64 MiB.
  const zeros = deflateSync(new Uint8Array(64 << 20));
  const at = 30 + "z.npy".length;
  assertThrows(
    () => openZip(oneEntry("z.npy", 8, zeros, 1 << 20), "z.npz").read("z.npy"),
    CheckpointError,
    `z.npz: expected ${1 << 20} bytes inflated for z.npy, got more (at byte ${at})`,
  );
  // The same with stored blocks inside the deflate stream (level 0).
  const data = ramp(200_000);
  assertThrows(
    () => openZip(oneEntry("s.npy", 8, deflateSync(data, { level: 0 }), 100_000), "s.npz").read("s.npy"),
    CheckpointError,
    "s.npz: expected 100000 bytes inflated for s.npy, got more",
  );
});

Deno.test("openZip names a deflated entry that is cut short, empty, or inflates to less than declared", () => {
  const data = ramp(50_000), packed = deflateSync(data);
  const at = 30 + "a.npy".length;
  assertThrows(
    () =>
      openZip(oneEntry("a.npy", 8, packed.subarray(0, packed.length >> 1), data.length), "t.npz").read(
        "a.npy",
      ),
    CheckpointError,
    `t.npz: cannot inflate a.npy: unexpected EOF (at byte ${at})`,
  );
  assertThrows(
    () => openZip(oneEntry("a.npy", 8, new Uint8Array(0), 0), "e.npz").read("a.npy"),
    CheckpointError,
    "e.npz: cannot inflate a.npy: no compressed bytes",
  );
  assertThrows(
    () => openZip(oneEntry("a.npy", 8, packed, data.length + 10), "l.npz").read("a.npy"),
    CheckpointError,
    `l.npz: expected ${data.length + 10} bytes inflated for a.npy, got ${data.length} (at byte ${at})`,
  );
  assertThrows(
    () => openZip(oneEntry("a.npy", 12, packed, data.length), "b.npz").read("a.npy"),
    CheckpointError,
    "b.npz: expected compression method 0 (stored) or 8 (deflate) for a.npy, found 12 (at byte 8)",
  );
});

Deno.test("readWholeFile reads a file into one buffer of exactly its size", async () => {
  const path = fixture("model_base.pt");
  const bytes = await readWholeFile(path);
  assertEquals(bytes.buffer.byteLength, (await Deno.stat(path)).size);
  assertEquals(bytes, await Deno.readFile(path));
});
