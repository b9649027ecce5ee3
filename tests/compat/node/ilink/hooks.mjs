// Module resolution hook (see register.mjs): `openclaw/plugin-sdk/NAME` → ./openclaw-shim/NAME.mjs.
import fs from "node:fs";

const PREFIX = "openclaw/plugin-sdk/";

export async function resolve(specifier, context, nextResolve) {
  if (specifier.startsWith(PREFIX)) {
    const name = specifier.slice(PREFIX.length);
    const url = new URL(`./openclaw-shim/${name}.mjs`, import.meta.url);
    if (!/^[a-z-]+$/.test(name) || !fs.existsSync(url)) {
      throw new Error(`no shim for ${specifier}: the official module loaded a part of the OpenClaw SDK this test does not shim`);
    }
    return { url: url.href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}
