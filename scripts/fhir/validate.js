// Checks a FHIR R4 JSON Bundle with npm `fhir` 4.12.0, unexpected properties being errors
// (and coded values checked against their value sets).
// Usage: NODE_PATH=<dir>/node_modules node validate.js BUNDLE.json -- exit 0 when valid.
const fs = require('fs');
const { Fhir } = require('fhir');

const bundle = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const result = new Fhir().validate(bundle, { errorOnUnexpected: true });
const errors = result.messages.filter((m) => m.severity === 'error');
if (!result.valid || errors.length > 0) {
  for (const m of result.messages) console.log(`${m.severity} ${m.location}: ${m.message}`);
  process.exit(1);
}
console.log(`fhir (npm): valid Bundle of ${(bundle.entry || []).length} entries`);
