/**
 * Write uncompressed 8-bit RGB TIFFs laid out exactly as HE2Gene's demo patches (written by PIL): little
 * endian, one IFD of 10 entries at byte 8, BitsPerSample values at 134, one strip of pixels at 140.
 * Spec: TIFF 6.0, https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf (section 2, baseline).
 *
 * With {@linkcode RgbTiffOptions} (an ImageDescription, a resolution) the IFD grows by those entries and
 * their values follow BitsPerSample, before the pixels; without them the bytes are the demo patches'.
 *
 * @module
 */

/** Extra tags of {@linkcode encodeRgbTiff}. */
export interface RgbTiffOptions {
  /** ImageDescription (tag 270), written as UTF-8 and NUL-terminated (an Aperio header, OME-XML, …). */
  description?: string;
  /**
   * XResolution / YResolution (282, 283: pixels per unit, as RATIONALs) and ResolutionUnit (296: 1 none,
   * 2 inch, 3 centimetre; left out when `unit` is undefined).
   */
  resolution?: { x: number; y: number; unit?: number };
}

/**
 * @example
 * ```ts
 * await Deno.writeFile("C2_25_13.tif", encodeRgbTiff(150, 150, rgb));
 * // 0.25 µm per pixel: 40 000 pixels per centimetre
 * await Deno.writeFile("s.tif", encodeRgbTiff(64, 64, rgb, { resolution: { x: 40000, y: 40000, unit: 3 } }));
 * ```
 */
export function encodeRgbTiff(
  width: number,
  height: number,
  rgb: Uint8Array,
  opts: RgbTiffOptions = {},
): Uint8Array {
  if (rgb.length !== width * height * 3) {
    throw new RangeError(
      `Cannot write a ${width}×${height} RGB TIFF from ${rgb.length} bytes (need ${width * height * 3})`,
    );
  }
  const desc = opts.description === undefined ? null : new TextEncoder().encode(opts.description + "\0");
  const res = opts.resolution;
  // [tag, type (2 ASCII, 3 SHORT, 4 LONG, 5 RATIONAL), count, value or offset], in tag order.
  const tags: [number, number, number, number][] = [
    [256, 4, 1, width], // ImageWidth
    [257, 4, 1, height], // ImageLength
    [258, 3, 3, 0], // BitsPerSample → 8, 8, 8 (offset set below)
    [259, 3, 1, 1], // Compression: none
    [262, 3, 1, 2], // PhotometricInterpretation: RGB
    ...(desc ? [[270, 2, desc.length, 0] as [number, number, number, number]] : []), // ImageDescription
    [273, 4, 1, 0], // StripOffsets (set below)
    [277, 3, 1, 3], // SamplesPerPixel
    [278, 4, 1, height], // RowsPerStrip
    [279, 4, 1, rgb.length], // StripByteCounts
    ...(res ? [[282, 5, 1, 0], [283, 5, 1, 0]] as [number, number, number, number][] : []), // X/YResolution
    [284, 3, 1, 1], // PlanarConfiguration: chunky
    ...(res?.unit !== undefined ? [[296, 3, 1, res.unit] as [number, number, number, number]] : []),
  ];
  const entries = tags.length, ifd = 8, bps = ifd + 2 + entries * 12 + 4;
  // Values too long for an entry, after BitsPerSample: the two rationals, the description (even offsets).
  const xres = bps + 6, yres = xres + 8;
  const descAt = res ? yres + 8 : xres;
  const descLong = desc !== null && desc.length > 4;
  const end = descLong ? descAt + desc.length : descAt;
  const data = end + (end & 1);
  const out = new Uint8Array(data + rgb.length);
  const v = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]); // "II", 42
  v.setUint32(4, ifd, true);
  v.setUint16(ifd, entries, true);
  const at: Record<number, number> = { 258: bps, 273: data, 282: xres, 283: yres, 270: descAt };
  tags.forEach(([tag, type, count, value], i) => {
    const o = ifd + 2 + 12 * i;
    v.setUint16(o, tag, true);
    v.setUint16(o + 2, type, true);
    v.setUint32(o + 4, count, true);
    if (tag === 270 && !descLong) out.set(desc!, o + 8);
    else if (tag in at) v.setUint32(o + 8, at[tag], true);
    else if (type === 3 && count === 1) v.setUint16(o + 8, value, true);
    else v.setUint32(o + 8, value, true);
  });
  v.setUint32(ifd + 2 + entries * 12, 0, true); // no next IFD
  for (let i = 0; i < 3; i++) v.setUint16(bps + 2 * i, 8, true);
  if (res) {
    for (const [off, value] of [[xres, res.x], [yres, res.y]]) {
      const [num, den] = rational(value);
      v.setUint32(off, num, true);
      v.setUint32(off + 4, den, true);
    }
  }
  if (descLong) out.set(desc, descAt);
  out.set(rgb, data);
  return out;
}

/** `value` as numerator / denominator (uint32 each): the smallest power-of-ten denominator that is exact. */
function rational(value: number): [number, number] {
  if (!(value > 0) || !Number.isFinite(value)) {
    throw new RangeError(`Cannot write a resolution of ${value}: expected a positive number`);
  }
  let den = 1;
  while (den < 1e6 && Math.abs(value * den - Math.round(value * den)) > 1e-9 * value * den) den *= 10;
  const num = Math.round(value * den);
  if (num > 0xffffffff) throw new RangeError(`Cannot write a resolution of ${value}: too large`);
  return [num, den];
}
