// Loaded with `node --import`: Tencent's compiled modules import a handful of `openclaw/plugin-sdk/*`
// helpers (the OpenClaw host they normally run inside). This resolves those specifiers to the small
// shims beside this file, so the modules run unmodified on plain Node 20 with no OpenClaw install.
import { register } from "node:module";

register("./hooks.mjs", import.meta.url);
