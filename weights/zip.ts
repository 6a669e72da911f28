/**
 * A read-only zip reader for PyTorch checkpoints and NPZ files: central directory, ZIP64, stored and deflated
 * entries. Stored entries are returned as views of the file's bytes (PyTorch writes them uncompressed and
 * 64-byte aligned); deflated ones are inflated with `fflate` (https://github.com/101arrowz/fflate) into a
 * buffer of their declared size, never more.
 *
 * The central directory is read here, not by fflate: its `unzipSync` copies every stored entry (a 100 MB
 * ResNet-50 `.pt` would be held twice) and gives no entry's offset, and its streaming `Unzip` finds the end
 * of an entry with a data descriptor (PyTorch sets flag bit 3) by searching the entry's bytes for a
 * signature.
 *
 * Spec: PKWARE APPNOTE.TXT, https://pkware.cachefly.net/webdocs/casestudies/APPNOTE.TXT
 * (4.3.7 local file header, 4.3.12 central directory header, 4.3.14–4.3.16 ZIP64 and end of central
 * directory records, 4.5.3 ZIP64 extended information extra field).
 *
 * @module
 */
import { inflateSync } from "fflate";
import { CheckpointError } from "./errors.ts";

const SIG_LOCAL = 0x04034b50;
const SIG_CENTRAL = 0x02014b50;
const SIG_EOCD = 0x06054b50;
const SIG_ZIP64_EOCD = 0x06064b50;
const SIG_ZIP64_LOCATOR = 0x07064b50;
/**
 * DEFLATE's densest code is a 258-byte match in 2 bits: at most 1032 bytes out per byte in (zlib's FAQ). An
 * entry that declares more is refused before anything is allocated (a corrupt header or a zip bomb).
 */
export const MAX_INFLATE_RATIO = 1032;

/** One zip entry as listed in the central directory. */
export interface ZipEntry {
  name: string;
  /** 0 stored, 8 deflate. */
  method: number;
  compressedSize: number;
  size: number;
  /** Offset of the local file header. */
  headerOffset: number;
}

/** A zip archive over an in-memory file. */
export interface ZipArchive {
  entries: Map<string, ZipEntry>;
  /** The entry's bytes (a view for stored entries) and the file offset of its data. */
  read(name: string): { bytes: Uint8Array; offset: number; stored: boolean };
}

/** Whether `bytes` starts like a zip file (`PK\x03\x04`). */
export function isZip(bytes: Uint8Array): boolean {
  return bytes.length >= 4 && bytes[0] === 0x50 && bytes[1] === 0x4b && bytes[2] === 3 && bytes[3] === 4;
}

/**
 * Read a whole file into one buffer of its size, for {@linkcode openZip} (whose stored entries are views
 * of it). `Deno.readFile` holds a file twice at its peak, the runtime's buffer and the copy handed to
 * JavaScript: 230 MB of resident memory for a 105 MB `.pt`, against 130 MB here.
 *
 * @example
 * ```ts ignore
 * const zip = openZip(await readWholeFile("model_base.pt"), "model_base.pt");
 * ```
 */
export async function readWholeFile(path: string): Promise<Uint8Array> {
  const f = await Deno.open(path);
  try {
    const { isFile, size } = await f.stat();
    if (!isFile || size === 0) return await Deno.readFile(path); // a pipe, or a /proc file: size unknown
    const buf = new Uint8Array(size);
    let n = 0;
    while (n < size) {
      const r = await f.read(buf.subarray(n));
      if (r === null) break; // the file shrank since stat
      n += r;
    }
    return n === size ? buf : buf.subarray(0, n);
  } finally {
    f.close();
  }
}

/**
 * Open the zip archive in `bytes`; `file` names it in errors.
 *
 * @example
 * ```ts ignore
 * import { openZip } from "./zip.ts";
 * const zip = openZip(await Deno.readFile("model_base.pt"), "model_base.pt");
 * console.log([...zip.entries.keys()]); // ["model_base/data.pkl", "model_base/data/0", …]
 * ```
 */
export function openZip(bytes: Uint8Array, file: string): ZipArchive {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (off: number, n: number, what: string) => {
    if (off < 0 || off + n > bytes.length) {
      throw new CheckpointError(
        file,
        off,
        `expected ${what} (${n} bytes), but the file ends at byte ${bytes.length}`,
      );
    }
  };
  const u64 = (off: number) => {
    const v = dv.getBigUint64(off, true);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new CheckpointError(file, off, `ZIP64 value ${v} is too large`);
    }
    return Number(v);
  };

  // End of central directory: 22 bytes plus a comment of up to 65535 bytes, searched backwards.
  let eocd = -1;
  const stop = Math.max(0, bytes.length - 22 - 0xffff);
  for (let i = bytes.length - 22; i >= stop; i--) {
    if (dv.getUint32(i, true) === SIG_EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) {
    throw new CheckpointError(
      file,
      stop,
      `expected a zip end-of-central-directory record (PK\\x05\\x06) in bytes ${stop}–${bytes.length}, ` +
        `found none: the file is truncated or not a zip`,
    );
  }
  let count = dv.getUint16(eocd + 10, true);
  let cdSize = dv.getUint32(eocd + 12, true);
  let cdOffset = dv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOffset === 0xffffffff) {
    const loc = eocd - 20;
    need(loc, 20, "a ZIP64 end-of-central-directory locator");
    if (dv.getUint32(loc, true) !== SIG_ZIP64_LOCATOR) {
      throw new CheckpointError(
        file,
        loc,
        "expected a ZIP64 end-of-central-directory locator (PK\\x06\\x07)",
      );
    }
    const rec = u64(loc + 8);
    need(rec, 56, "a ZIP64 end-of-central-directory record");
    if (dv.getUint32(rec, true) !== SIG_ZIP64_EOCD) {
      throw new CheckpointError(file, rec, "expected a ZIP64 end-of-central-directory record (PK\\x06\\x06)");
    }
    count = u64(rec + 32);
    cdSize = u64(rec + 40);
    cdOffset = u64(rec + 48);
  }
  need(cdOffset, cdSize, "the central directory");

  const decoder = new TextDecoder();
  const entries = new Map<string, ZipEntry>();
  let p = cdOffset;
  for (let k = 0; k < count; k++) {
    need(p, 46, "a central directory header");
    if (dv.getUint32(p, true) !== SIG_CENTRAL) {
      throw new CheckpointError(file, p, `expected central directory header ${k} of ${count} (PK\\x01\\x02)`);
    }
    const method = dv.getUint16(p + 10, true);
    let compressedSize = dv.getUint32(p + 20, true);
    let size = dv.getUint32(p + 24, true);
    const nameLen = dv.getUint16(p + 28, true), extraLen = dv.getUint16(p + 30, true);
    const commentLen = dv.getUint16(p + 32, true);
    let headerOffset = dv.getUint32(p + 42, true);
    need(p + 46, nameLen + extraLen + commentLen, "a central directory name and extra fields");
    const name = decoder.decode(bytes.subarray(p + 46, p + 46 + nameLen));
    // ZIP64 extra field (id 1): the 64-bit values, in this order, of those fields that are 0xFFFFFFFF.
    for (let e = p + 46 + nameLen, end = e + extraLen; e + 4 <= end;) {
      const id = dv.getUint16(e, true), len = dv.getUint16(e + 2, true);
      if (id === 1) {
        let q = e + 4;
        if (size === 0xffffffff) size = u64(q), q += 8;
        if (compressedSize === 0xffffffff) compressedSize = u64(q), q += 8;
        if (headerOffset === 0xffffffff) headerOffset = u64(q), q += 8;
      }
      e += 4 + len;
    }
    entries.set(name, { name, method, compressedSize, size, headerOffset });
    p += 46 + nameLen + extraLen + commentLen;
  }

  return {
    entries,
    read(name) {
      const entry = entries.get(name);
      if (!entry) throw new CheckpointError(file, -1, `expected a zip entry named ${name}, found none`);
      const h = entry.headerOffset;
      need(h, 30, `the local header of ${name}`);
      if (dv.getUint32(h, true) !== SIG_LOCAL) {
        throw new CheckpointError(file, h, `expected the local file header of ${name} (PK\\x03\\x04)`);
      }
      // The local header's extra field may differ from the central one (PyTorch pads it for alignment).
      const offset = h + 30 + dv.getUint16(h + 26, true) + dv.getUint16(h + 28, true);
      need(offset, entry.compressedSize, `the data of ${name}`);
      const raw = bytes.subarray(offset, offset + entry.compressedSize);
      if (entry.method === 0) return { bytes: raw, offset, stored: true };
      if (entry.method !== 8) {
        throw new CheckpointError(
          file,
          h + 8,
          `expected compression method 0 (stored) or 8 (deflate) for ${name}, found ${entry.method}`,
        );
      }
      if (entry.size > entry.compressedSize * MAX_INFLATE_RATIO) {
        throw new CheckpointError(
          file,
          offset,
          `expected at most ${MAX_INFLATE_RATIO} × ${entry.compressedSize} bytes inflated for ${name} ` +
            `(deflate's largest ratio), but its header declares ${entry.size}: a corrupt header or a zip bomb`,
        );
      }
      // One byte more than declared: a stream that inflates to more fills it (fflate writes nothing past the
      // buffer's end, or throws a RangeError for a stored block that does not fit).
      const room = new Uint8Array(entry.size + 1);
      let out: Uint8Array;
      try {
        // fflate returns its `out` whole for an empty input: a deflate stream is never empty.
        if (raw.length === 0) throw new Error("no compressed bytes");
        out = inflateSync(raw, { out: room });
      } catch (e) {
        if (!(e instanceof RangeError)) {
          throw new CheckpointError(file, offset, `cannot inflate ${name}: ${(e as Error).message}`);
        }
        out = room;
      }
      if (out.length !== entry.size) {
        throw new CheckpointError(
          file,
          offset,
          `expected ${entry.size} bytes inflated for ${name}, got ${
            out.length > entry.size ? "more" : out.length
          }`,
        );
      }
      return { bytes: out, offset, stored: false };
    },
  };
}
