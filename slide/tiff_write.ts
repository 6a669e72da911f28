/**
 * Write uncompressed 8-bit RGB TIFFs laid out exactly as HE2Gene's demo patches (written by PIL): little
 * endian, one IFD of 10 entries at byte 8, BitsPerSample values at 134, one strip of pixels at 140.
 * Spec: TIFF 6.0, https://www.itu.int/itudoc/itu-t/com16/tiff-fx/docs/tiff6.pdf (section 2, baseline).
 *
 * @module
 */

/**
 * @example
 * ```ts
 * await Deno.writeFile("C2_25_13.tif", encodeRgbTiff(150, 150, rgb));
 * ```
 */
export function encodeRgbTiff(width: number, height: number, rgb: Uint8Array): Uint8Array {
  if (rgb.length !== width * height * 3) {
    throw new RangeError(
      `Cannot write a ${width}×${height} RGB TIFF from ${rgb.length} bytes (need ${width * height * 3})`,
    );
  }
  const entries = 10, ifd = 8, bps = ifd + 2 + entries * 12 + 4, data = bps + 6;
  const out = new Uint8Array(data + rgb.length);
  const v = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]); // "II", 42
  v.setUint32(4, ifd, true);
  v.setUint16(ifd, entries, true);
  // [tag, type (3 SHORT, 4 LONG), count, value or offset]
  const tags: [number, number, number, number][] = [
    [256, 4, 1, width], // ImageWidth
    [257, 4, 1, height], // ImageLength
    [258, 3, 3, bps], // BitsPerSample → 8, 8, 8
    [259, 3, 1, 1], // Compression: none
    [262, 3, 1, 2], // PhotometricInterpretation: RGB
    [273, 4, 1, data], // StripOffsets
    [277, 3, 1, 3], // SamplesPerPixel
    [278, 4, 1, height], // RowsPerStrip
    [279, 4, 1, rgb.length], // StripByteCounts
    [284, 3, 1, 1], // PlanarConfiguration: chunky
  ];
  tags.forEach(([tag, type, count, value], i) => {
    const o = ifd + 2 + 12 * i;
    v.setUint16(o, tag, true);
    v.setUint16(o + 2, type, true);
    v.setUint32(o + 4, count, true);
    if (type === 3 && count === 1) v.setUint16(o + 8, value, true);
    else v.setUint32(o + 8, value, true);
  });
  v.setUint32(ifd + 2 + entries * 12, 0, true); // no next IFD
  for (let i = 0; i < 3; i++) v.setUint16(bps + 2 * i, 8, true);
  out.set(rgb, data);
  return out;
}
