// Shim of OpenClaw's account-id helper: account ids as file-name-safe keys.
export function normalizeAccountId(id) {
  return String(id ?? "").trim().toLowerCase().replace(/[^a-z0-9_-]+/g, "-");
}
