import { CheckpointError, openZip, parseTorch } from "../../weights/mod.ts";
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
