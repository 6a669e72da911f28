/** The PIL fixture (tests/fixtures/slide, written by make_fixture.py) and the synthetic pattern it uses. */
export const FIXTURE = new URL("../fixtures/slide/", import.meta.url);

export interface DecodeCase {
  file?: string;
  shared?: string;
  mode: string;
  width: number;
  height: number;
  sha256: string;
  lossy: boolean;
}
export interface ResizeCase {
  input: { pattern?: [number, number]; file?: string; shared?: string };
  box: [number, number, number, number] | null;
  /** PIL order: [width, height]. */
  size: [number, number];
  sha256: string;
  full?: string;
}

/** The fixture manifest: PIL's version and the sha256 of each of its outputs. */
export const manifest: { pillow: string; decode: DecodeCase[]; resize: ResizeCase[] } = JSON.parse(
  await Deno.readTextFile(new URL("manifest.json", FIXTURE)),
);

/** Same integer formula as pattern() in make_fixture.py: a high-frequency RGB texture, HWC uint8. */
export function pattern(w: number, h: number): { width: number; height: number; data: Uint8Array } {
  const data = new Uint8Array(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      for (let c = 0; c < 3; c++) {
        data[(y * w + x) * 3 + c] = (x * 37 + y * 91 + c * 53 + ((x * y * 7) >> 2) + ((x ^ y) * 11)) & 255;
      }
    }
  }
  return { width: w, height: h, data };
}

/** Hex sha256 of bytes. */
export async function sha256(bytes: Uint8Array): Promise<string> {
  const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes as Uint8Array<ArrayBuffer>));
  return Array.from(d, (b) => b.toString(16).padStart(2, "0")).join("");
}
