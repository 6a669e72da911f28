/**
 * The one error type of `weights/`: a file that is not what its reader expected. The message names the file,
 * what was expected and the byte offset (in the file, or in a zip entry when the entry is compressed).
 *
 * @module
 */

/** Bad checkpoint input: names the file, what was expected and where. */
export class CheckpointError extends Error {
  /**
   * @param file the file (or name) being read
   * @param offset byte offset of the problem, or -1 when it concerns the file as a whole
   * @param message what was expected and what was found
   */
  constructor(readonly file: string, readonly offset: number, message: string) {
    super(`${file}: ${message}${offset >= 0 ? ` (at byte ${offset})` : ""}`);
    this.name = "CheckpointError";
  }
}

/** A pickle that references a global outside the state-dict allow-list (like `torch.load(weights_only=True)`). */
export class RefusedGlobalError extends CheckpointError {
  constructor(file: string, offset: number, readonly global: string) {
    super(
      file,
      offset,
      `refused global ${global}: only the globals a state dict needs are allowed ` +
        `(as with torch.load(weights_only=True))`,
    );
    this.name = "RefusedGlobalError";
  }
}
