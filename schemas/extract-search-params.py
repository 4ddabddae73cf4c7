#!/usr/bin/env python3
"""Regenerates the search parameter and compartment registries in schemas/r4 and schemas/stu3 from
the FHIR example packages (fetched by fetch-packages.sh into .cache/fhir-packages).
Usage: python3 schemas/extract-search-params.py [PACKAGE_CACHE]

Sources (CC0):
  R4    hl7.fhir.r4.examples@4.0.1  package/Bundle-searchParams.json (the core SearchParameters)
        and package/CompartmentDefinition-{patient,encounter,relatedPerson,practitioner,device}.json
  STU3  hl7.fhir.r3.examples@3.0.2  package/SearchParameter-*.json (one SearchParameter per file)
        and the same five CompartmentDefinition files.
  CompartmentDefinition-example.json is skipped in both.

The STU3 package has no core bundle, so its SearchParameter-*.json files are filtered down to the
same set the R4 bundle holds: the spec's examples (id `example*`, which duplicate Resource `_id` and
Condition `subject`) and the parameters defined by extensions (id `<profile>-extensions-<Type>-<code>`,
`-genetic-`, `-11179-`; most have no expression, some no base) are dropped. The rest is
deduplicated by url (first file in name order wins).

Writes, per version:
  search-parameters.json  {"source": ..., "parameters": [...]}, one object per SearchParameter with
                          url, code, base, type, expression (always; expression "" when the
                          definition has none) and, when present and non-empty, target, modifier,
                          comparator, multipleOr, multipleAnd, component [{definition, expression}],
                          xpathUsage. Sorted by (first base, code, url).
  compartments.json       {"source": ..., "compartments": {Code: {ResourceType: [param, ...]}}},
                          one entry per CompartmentDefinition (key = its code), resource types in
                          source order; a type with no param is listed with [] (not in the compartment).
Prints one summary line per version (and, on stderr, the dropped and odd inputs).
"""
import collections, json, os, re, sys

here = os.path.dirname(os.path.abspath(__file__))
cache = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, '..', '.cache', 'fhir-packages')

COMPARTMENTS = ('patient', 'encounter', 'relatedPerson', 'practitioner', 'device')
TYPES = ('number', 'date', 'string', 'token', 'reference', 'composite', 'quantity', 'uri', 'special')
# STU3 files that are not core search parameters (see the docstring).
NOT_CORE = re.compile(r'^example|-(extensions|genetic|11179)-[A-Z]')


def load(path):
    with open(path, encoding='utf-8-sig') as f:
        return json.load(f)


def package_id(pkg):
    meta = load(os.path.join(pkg, 'package.json'))
    return '%s@%s' % (meta['name'], meta['version'])


def definition_url(d):
    """component.definition: a canonical string (R4) or a Reference {"reference": url} (STU3)."""
    return d.get('reference', '') if isinstance(d, dict) else (d or '')


def param(sp):
    out = {
        'url': sp['url'],
        'code': sp['code'],
        'base': list(sp.get('base') or []),
        'type': sp['type'],
        'expression': sp.get('expression') or '',
    }
    for key in ('target', 'modifier', 'comparator'):
        if sp.get(key):
            out[key] = list(sp[key])
    for key in ('multipleOr', 'multipleAnd'):
        if key in sp:
            out[key] = bool(sp[key])
    if sp.get('component'):
        out['component'] = [{'definition': definition_url(c.get('definition')),
                             'expression': c.get('expression') or ''} for c in sp['component']]
    if sp.get('xpathUsage'):
        out['xpathUsage'] = sp['xpathUsage']
    return out


def write(path, data):
    with open(path, 'w', encoding='utf-8') as f:
        json.dump(data, f, indent=1, sort_keys=False, ensure_ascii=False)
        f.write('\n')


def r4_params(pkg):
    bundle = load(os.path.join(pkg, 'Bundle-searchParams.json'))
    sps = [e['resource'] for e in bundle.get('entry', [])
           if e.get('resource', {}).get('resourceType') == 'SearchParameter']
    return sps, 'Bundle-searchParams.json', []


def stu3_params(pkg):
    sps, dropped = [], []
    for name in sorted(os.listdir(pkg)):
        if not (name.startswith('SearchParameter-') and name.endswith('.json')):
            continue
        sp = load(os.path.join(pkg, name))
        if sp.get('resourceType') != 'SearchParameter':
            continue
        if NOT_CORE.search(sp.get('id', '')):
            dropped.append('not core: ' + name)
            continue
        sps.append(sp)
    return sps, 'SearchParameter-*.json', dropped


def search_parameters(version, pkg, read):
    sps, pattern, notes = read(pkg)
    seen, params = set(), []
    for sp in sps:
        if sp['url'] in seen:
            notes.append('duplicate url dropped: ' + sp['url'])
            continue
        seen.add(sp['url'])
        params.append(param(sp))
    params.sort(key=lambda p: (p['base'][0] if p['base'] else '', p['code'], p['url']))

    # Sanity checks, reported but not fatal.
    urls = {p['url'] for p in params}
    by_base_code = collections.defaultdict(list)
    for p in params:
        if p['type'] not in TYPES:
            notes.append('unknown type %s: %s' % (p['type'], p['url']))
        if not p['base']:
            notes.append('no base: ' + p['url'])
        if not p['expression']:
            notes.append('no expression: ' + p['url'])
        for b in p['base']:
            by_base_code[(b, p['code'])].append(p['url'])
        for c in p.get('component', []):
            if c['definition'] not in urls:
                notes.append('unresolved component %s in %s' % (c['definition'], p['url']))
    for (b, code), us in sorted(by_base_code.items()):
        if len(us) > 1:
            notes.append('(base, code) (%s, %s) defined by %s' % (b, code, ', '.join(us)))

    source = '%s package/%s' % (package_id(pkg), pattern)
    write(os.path.join(here, version, 'search-parameters.json'), {'source': source, 'parameters': params})
    types = collections.Counter(p['type'] for p in params)
    empty = sum(1 for p in params if not p['expression'])
    print('%s: %d parameters (%s), %d without expression' % (
        version, len(params), ', '.join('%s %d' % (t, types[t]) for t in TYPES if types[t]), empty))
    return notes


def compartments(version, pkg):
    out = {}
    for name in COMPARTMENTS:
        cd = load(os.path.join(pkg, 'CompartmentDefinition-%s.json' % name))
        out[cd['code']] = {r['code']: list(r.get('param') or []) for r in cd.get('resource', [])}
    source = '%s package/CompartmentDefinition-{%s}.json' % (package_id(pkg), ','.join(COMPARTMENTS))
    write(os.path.join(here, version, 'compartments.json'), {'source': source, 'compartments': out})
    print('%s: compartments %s' % (version, ', '.join(
        '%s %d/%d' % (c, sum(1 for v in m.values() if v), len(m)) for c, m in out.items())))


for version, pkg, read in (('r4', 'r4-examples', r4_params), ('stu3', 'r3-examples', stu3_params)):
    pkg = os.path.join(cache, pkg)
    os.makedirs(os.path.join(here, version), exist_ok=True)
    notes = search_parameters(version, pkg, read)
    compartments(version, pkg)
    for n in notes:
        print('  ' + n, file=sys.stderr)
