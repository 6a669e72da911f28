/**
 * CLI error kinds and their exit codes: 1 bad input, 2 usage, 3 GPU / device failure.
 * @module
 */

/** A usage error (exit code 2). */
export class UsageError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "UsageError";
  }
}
