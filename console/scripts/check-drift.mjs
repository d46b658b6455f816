// Compares a fresh build (the directory given) with the committed dist/:
// the same files, byte for byte, except the gzip and brotli variants, which
// must decompress to their file (compressors differ between Node releases;
// what they decompress to does not).

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative, sep } from 'node:path';
import { brotliDecompressSync, gunzipSync } from 'node:zlib';

const committed = new URL('../dist/', import.meta.url).pathname;
const fresh = process.argv[2];
if (!fresh) {
  console.error('usage: node scripts/check-drift.mjs <fresh build directory>');
  process.exit(2);
}

function list(dir) {
  const out = [];
  const walk = (d) => {
    for (const name of readdirSync(d).sort()) {
      const full = join(d, name);
      if (statSync(full).isDirectory()) walk(full);
      else out.push(relative(dir, full).split(sep).join('/'));
    }
  };
  walk(dir);
  return out;
}

const a = list(committed);
const b = list(fresh);
const problems = [];
for (const f of a) if (!b.includes(f)) problems.push(`only in the committed build: ${f}`);
for (const f of b) if (!a.includes(f)) problems.push(`only in a fresh build: ${f}`);
for (const f of a.filter((x) => b.includes(x))) {
  const old = readFileSync(join(committed, f));
  if (f.endsWith('.gz') || f.endsWith('.br')) {
    const raw = readFileSync(join(fresh, f.slice(0, -3)));
    const unpack = f.endsWith('.gz') ? gunzipSync : brotliDecompressSync;
    if (!unpack(old).equals(raw)) problems.push(`${f} does not decompress to ${f.slice(0, -3)}`);
  } else if (!old.equals(readFileSync(join(fresh, f)))) {
    problems.push(`differs: ${f}`);
  }
}
if (problems.length) {
  console.error('console/dist/ is not what its sources build to:');
  for (const p of problems) console.error(`  ${p}`);
  console.error('Rebuild it (cd console && npm ci && npm run build) and commit console/dist/.');
  process.exit(1);
}
console.log(`console/dist/ matches its sources (${a.length} files)`);
