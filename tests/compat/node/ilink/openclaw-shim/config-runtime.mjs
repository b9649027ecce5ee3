// Shim of OpenClaw's config runtime: an empty configuration that is never written.
export function loadConfig() {
  return {};
}

export async function writeConfigFile(_cfg) {}
