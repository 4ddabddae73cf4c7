#!/usr/bin/env python3
"""Writes schemas/r4/schema-patch.json: Kiln's fixes to the upstream R4 JSON schema, as an RFC 6902
JSON Patch applied at load time (node/src/fhir/validate/patches.rs). Usage: python3 schemas/make-r4-patch.py

1. FHIR's regexes use XML Schema semantics, where \\s is only space, tab, CR, LF. In JSON-schema
   (ECMA / Rust) regexes \\s also matches U+00A0 and other Unicode spaces, so valid FHIR strings
   and codes containing a no-break space were rejected. The two affected patterns are rewritten to
   their XML meaning.
2. Elements of type canonical lack their primitive-extension twin (`_baseDefinition`, `_profile`,
   ...), which valid resources use; they are added as Element (or array of Element).
"""
import json, os

here = os.path.dirname(os.path.abspath(__file__))
schema = json.load(open(os.path.join(here, 'r4', 'fhir.schema.json'), encoding='utf-8'))

FIXED = {
    '^[ \\r\\n\\t\\S]+$': '^[\\s\\S]+$',
    '^[^\\s]+(\\s[^\\s]+)*$': '^[^ \\r\\n\\t]+([ \\r\\n\\t][^ \\r\\n\\t]+)*$',
}
ops = []

def walk(node, path):
    if isinstance(node, dict):
        for k, v in node.items():
            p = path + '/' + k.replace('~', '~0').replace('/', '~1')
            if k == 'pattern' and isinstance(v, str) and v in FIXED:
                ops.append({'op': 'replace', 'path': p, 'value': FIXED[v]})
            else:
                walk(v, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f'{path}/{i}')

walk(schema['definitions'], '/definitions')
for name, d in sorted(schema['definitions'].items()):
    props = d.get('properties') or {}
    for k, p in sorted(props.items()):
        ref = p.get('$ref') or (p.get('items') or {}).get('$ref')
        if ref == '#/definitions/canonical' and '_' + k not in props:
            twin = {'$ref': '#/definitions/Element'}
            if 'items' in p:
                twin = {'type': 'array', 'items': twin}
            twin['description'] = 'Extensions for ' + k + ' (added by Kiln)'
            ops.append({'op': 'add', 'path': f'/definitions/{name}/properties/_{k}', 'value': twin})

with open(os.path.join(here, 'r4', 'schema-patch.json'), 'w') as f:
    json.dump(ops, f, indent=1)
    f.write('\n')
print(len(ops), 'operations')
