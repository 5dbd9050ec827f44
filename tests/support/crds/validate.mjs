// Validates custom resources against the OpenAPI schemas of their CRDs, as
// packaged by @kubernetes-models (KEDA's ScaledObject and
// TriggerAuthentication, the Prometheus Operator's ServiceMonitor).
//
//   node validate.mjs < docs.json      (a JSON array of resources)
//
// Prints one line per resource, `ok KIND NAME` or `invalid KIND NAME: ...`,
// and `unknown KIND` for a kind it has no schema for; exits 1 unless every
// resource is ok. Run with NODE_PATH pointing at the installed node_modules
// (scripts/services.sh: $SLUICE_TOOLS_DIR/npm/node_modules).
import { readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

const modules = process.env.NODE_PATH;
if (!modules) {
  console.error("NODE_PATH must name the node_modules with @kubernetes-models");
  process.exit(2);
}
const load = async (spec) => import(pathToFileURL(path.join(modules, spec)).href);
const kinds = {
  "keda.sh/v1alpha1/ScaledObject": ["@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.js", "ScaledObject"],
  "keda.sh/v1alpha1/TriggerAuthentication": [
    "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.js",
    "TriggerAuthentication",
  ],
  "monitoring.coreos.com/v1/ServiceMonitor": [
    "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
    "ServiceMonitor",
  ],
};

const docs = JSON.parse(readFileSync(0, "utf8"));
let failed = false;
for (const doc of docs) {
  const id = `${doc.apiVersion}/${doc.kind}`;
  const name = doc.metadata?.name;
  const entry = kinds[id];
  if (!entry) {
    console.log(`unknown ${id}`);
    failed = true;
    continue;
  }
  const module = await load(entry[0]);
  try {
    new module[entry[1]](doc).validate();
    console.log(`ok ${doc.kind} ${name}`);
  } catch (err) {
    console.log(`invalid ${doc.kind} ${name}: ${err.message}`);
    failed = true;
  }
}
process.exit(failed ? 1 : 0);
