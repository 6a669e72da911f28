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

/**
 * The user interrupted the command (Ctrl-C / SIGINT): exit code 130, as a shell reports a process killed
 * by SIGINT. Thrown after the command has saved what it can (train: a checkpoint) and removed what it
 * had not finished writing.
 */
export class Interrupted extends Error {
  constructor(message = "interrupted") {
    super(message);
    this.name = "Interrupted";
  }
}
