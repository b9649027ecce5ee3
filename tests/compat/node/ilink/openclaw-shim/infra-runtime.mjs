// Shim of OpenClaw's infra runtime: the log directory (the test's own temporary one) and a file lock
// (the test runs one process, so running the callback is the whole lock).
import os from "node:os";
import path from "node:path";

export function resolvePreferredOpenClawTmpDir() {
  return process.env.OPENCLAW_TMP_DIR || path.join(os.tmpdir(), "openclaw-shim");
}

export async function withFileLock(_file, _opts, fn) {
  return fn();
}
