// Run caniemail's data (through @jsx-email/doiuse-email) over rendered email HTML, print JSON.
//
//   node tools/doiuse/check.mjs digest.html confirm.html     (or one document on stdin: "-")
//
// Prints {"<path>": {"success": bool, "errors": [...], "warnings": [...], "notes": [...]}, ...}
// and exits 0 whatever the verdict: tests/test_email_quality.py compares every error with the
// reviewed allowlist in tests/email_quality/. Exits 2 only when it cannot read its input.
import { readFileSync } from "node:fs";
import { doIUseEmail } from "@jsx-email/doiuse-email";

const EMAIL_CLIENTS = ["gmail.*", "outlook.*", "apple-mail.*", "yahoo.*"];

const paths = process.argv.slice(2);
const results = {};
for (const path of paths.length ? paths : ["-"]) {
  let html;
  try {
    html = readFileSync(path === "-" ? 0 : path, "utf8");
  } catch (err) {
    process.stderr.write(`cannot read ${path}: ${err.message}\n`);
    process.exit(2);
  }
  const result = doIUseEmail(html, { emailClients: EMAIL_CLIENTS });
  results[path] = {
    success: result.success,
    errors: result.errors ?? [],
    warnings: result.warnings ?? [],
    notes: result.notes ?? [],
  };
}
process.stdout.write(JSON.stringify(results) + "\n");
