// `npm run build`: the CommonJS (dist/cjs) and ES module (dist/esm) builds from one source, each folder marked
// with its module type so Node loads dist/esm/*.js as ESM and dist/cjs/*.js as CommonJS (see "exports").
"use strict";
const { execFileSync } = require("node:child_process");
const fs = require("node:fs");
const path = require("node:path");

const tsc = path.join(__dirname, "node_modules", "typescript", "bin", "tsc");
fs.rmSync(path.join(__dirname, "dist"), { recursive: true, force: true });
for (const [config, type] of [["tsconfig.json", "commonjs"], ["tsconfig.esm.json", "module"]]) {
  execFileSync(process.execPath, [tsc, "-p", path.join(__dirname, config)], { stdio: "inherit" });
  const out = path.join(__dirname, "dist", type === "module" ? "esm" : "cjs");
  fs.writeFileSync(path.join(out, "package.json"), JSON.stringify({ type }) + "\n");
}
