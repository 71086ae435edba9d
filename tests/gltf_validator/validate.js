// Validates the GLB files named on the command line with the Khronos glTF validator; prints one JSON object
// mapping each path to its issue counts and messages (errors, warnings, infos). Exit status 0 even when files
// have issues: the caller (tests/test_gltf_validator.py) decides what is acceptable.
"use strict";
const fs = require("fs");
const validator = require("gltf-validator");

async function main(paths) {
  const reports = {};
  for (const path of paths) {
    const report = await validator.validateBytes(new Uint8Array(fs.readFileSync(path)), {
      maxIssues: 100,
      writeTimestamp: false,
    });
    reports[path] = {
      errors: report.issues.numErrors,
      warnings: report.issues.numWarnings,
      infos: report.issues.numInfos,
      messages: report.issues.messages.map((m) => `${m.severity} ${m.code} ${m.pointer || ""}: ${m.message}`),
    };
  }
  process.stdout.write(JSON.stringify(reports));
}

main(process.argv.slice(2)).catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error));
  process.exit(2);
});
