#!/usr/bin/env python3
"""Regenerates the terminology Kiln ships (schemas/{r4,stu3}/terminology.json) from the FHIR
example packages (fetched by fetch-packages.sh into .cache/fhir-packages).
Usage: python3 schemas/extract-terminology.py [PACKAGE_CACHE]

Sources (CC0):
  R4    hl7.fhir.r4.examples@4.0.1  package/Bundle-valuesets.json, Bundle-v2-valuesets.json and
        Bundle-v3-valuesets.json (2,378 CodeSystem and ValueSet resources: the FHIR, v2 and v3
        terminologies; the same resources as the package's CodeSystem-*.json / ValueSet-*.json).
  STU3  hl7.fhir.r3.examples@3.0.2  package/CodeSystem-*.json and ValueSet-*.json (the package has
        no terminology bundles).

Each resource is reduced to what expansion, $lookup, $validate-code and $subsumes read, keeping the
FHIR shape, so the node parses shipped and user-stored resources with the same code
(node/src/terminology/model.rs):
  CodeSystem  url, version, name, content, caseSensitive, hierarchyMeaning, and concept (nested, as
              in the source: the nesting is the is-a hierarchy) with code, display,
              designation [{language, value}] and property [{code, value[x]}] (the `parent`,
              `child` and `subsumedBy` properties included: they add hierarchy links). Definitions,
              narrative, extensions and metadata are dropped.
  ValueSet    url, version, name, status, compose (include / exclude: system, version, concept [{code,
              display}], filter [{property, op, value}], valueSet), and, for a ValueSet without
              compose, its expansion.contains flattened to [{system, code, display}].
Supplements (content = supplement) define no codes and are left out. Resources are sorted by
(resourceType, url), one per line; a url seen twice keeps the first file in name order.
Prints one summary line per version.
"""
import glob, json, os, sys

here = os.path.dirname(os.path.abspath(__file__))
cache = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, '..', '.cache', 'fhir-packages')


def value_key(p):
    return next((k for k in p if k.startswith('value')), None)


def concept(c):
    out = {'code': c['code']}
    if c.get('display'):
        out['display'] = c['display']
    des = [{k: d[k] for k in ('language', 'value') if k in d} for d in c.get('designation', []) if d.get('value')]
    if des:
        out['designation'] = des
    props = []
    for p in c.get('property', []):
        k = value_key(p)
        if k:
            props.append({'code': p['code'], k: p[k]})
    if props:
        out['property'] = props
    kids = [concept(k) for k in c.get('concept', [])]
    if kids:
        out['concept'] = kids
    return out


def code_system(r):
    out = {'resourceType': 'CodeSystem', 'url': r['url']}
    for k in ('version', 'name', 'content', 'caseSensitive', 'hierarchyMeaning'):
        if k in r:
            out[k] = r[k]
    kids = [concept(c) for c in r.get('concept', [])]
    if kids:
        out['concept'] = kids
    return out


def include(i):
    out = {}
    for k in ('system', 'version', 'valueSet'):
        if k in i:
            out[k] = i[k]
    if i.get('concept'):
        out['concept'] = [{k: c[k] for k in ('code', 'display') if k in c} for c in i['concept']]
    if i.get('filter'):
        out['filter'] = [{k: f[k] for k in ('property', 'op', 'value') if k in f} for f in i['filter']]
    return out


def contains(items):
    for c in items:
        if c.get('code'):
            yield {k: c[k] for k in ('system', 'code', 'display') if k in c}
        yield from contains(c.get('contains', []))


def value_set(r):
    out = {'resourceType': 'ValueSet', 'url': r['url']}
    for k in ('version', 'name', 'status'):
        if k in r:
            out[k] = r[k]
    comp = r.get('compose')
    if comp:
        out['compose'] = {part: [include(i) for i in comp[part]] for part in ('include', 'exclude') if comp.get(part)}
    elif r.get('expansion', {}).get('contains'):
        out['expansion'] = {'contains': list(contains(r['expansion']['contains']))}
    return out


def resources(version):
    if version == 'r4':
        for b in ('Bundle-valuesets.json', 'Bundle-v2-valuesets.json', 'Bundle-v3-valuesets.json'):
            with open(os.path.join(cache, 'r4-examples', b)) as f:
                for e in json.load(f)['entry']:
                    yield e['resource']
    else:
        for name in sorted(glob.glob(os.path.join(cache, 'r3-examples', 'CodeSystem-*.json')) + glob.glob(os.path.join(cache, 'r3-examples', 'ValueSet-*.json'))):
            with open(name) as f:
                yield json.load(f)


def main():
    for version in ('r4', 'stu3'):
        seen, out, skipped = set(), [], 0
        for r in resources(version):
            rt, url = r.get('resourceType'), r.get('url')
            if rt not in ('CodeSystem', 'ValueSet') or not url or (rt, url) in seen:
                skipped += 1
                continue
            if rt == 'CodeSystem' and r.get('content') == 'supplement':
                skipped += 1
                continue
            seen.add((rt, url))
            out.append(code_system(r) if rt == 'CodeSystem' else value_set(r))
        out.sort(key=lambda r: (r['resourceType'], r['url']))
        path = os.path.join(here, version, 'terminology.json')
        with open(path, 'w') as f:
            f.write('{"resources": [\n')
            f.write(',\n'.join(json.dumps(r, ensure_ascii=False, separators=(',', ':')) for r in out))
            f.write('\n]}\n')
        cs = sum(1 for r in out if r['resourceType'] == 'CodeSystem')
        print(f'{version}: {cs} CodeSystems, {len(out) - cs} ValueSets ({skipped} skipped), {os.path.getsize(path)} bytes -> {path}')


main()
