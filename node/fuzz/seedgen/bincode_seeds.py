#!/usr/bin/env python3
"""Writes the binary seeds of the `bundle` and `frame` corpora: bincode-encoded Kiln commands
(store::command::Command) and peer frames (consensus::transport::Frame), and raft-rs protobuf
messages. Run from node/fuzz: `python3 seedgen/bincode_seeds.py`. The committed corpus is
these seeds plus what fuzzing found, minimized (`-set_cover_merge=1`): a seed that adds no coverage
is not kept under its name. Keep in step with the enums'
variant order (bincode numbers variants by position)."""
import json
import os
import struct


def u8(v): return struct.pack('<B', v)
def u32(v): return struct.pack('<I', v)
def u64(v): return struct.pack('<Q', v)
def string(s):
    b = s.encode() if isinstance(s, str) else s
    return u64(len(b)) + b
def option(v, enc): return u8(0) if v is None else u8(1) + enc(v)
def vec(items, enc): return u64(len(items)) + b''.join(enc(i) for i in items)
def boolean(b): return u8(1 if b else 0)

ACTIONS = {'Create': 0, 'Update': 1, 'Patch': 2, 'Delete': 3}


def write_op(action, rtype, id_, body=None, if_match=None, allow_create=True):
    body_s = None if body is None else (body if isinstance(body, str) else json.dumps(body))
    return u32(ACTIONS[action]) + string(rtype) + string(id_) + option(body_s, string) + option(if_match, u64) + boolean(allow_create)


def condition(query, client_id=False, multiple=False):
    return vec(query, lambda kv: string(kv[0]) + string(kv[1])) + boolean(client_id) + boolean(multiple)


def writes(ts, ops): return u32(0) + u32(0) + u64(ts) + vec(ops, lambda o: o)
def conditional(ts, op, cond): return u32(0) + u32(1) + u64(ts) + op + cond
def bundle(ts, atomic, entries):
    def entry(e):
        index, op, cond, inm, full_url = e
        return u32(index) + op + option(cond, lambda c: c) + boolean(inm) + option(full_url, string)
    return u32(0) + u32(2) + u64(ts) + boolean(atomic) + vec(entries, entry)
def pin(fmt): return u32(0) + u32(3) + string(fmt)


PAT = {"resourceType": "Patient", "id": "a", "name": [{"family": "Doe"}], "managingOrganization": {"reference": "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"}}
ORG = {"resourceType": "Organization", "id": "b", "name": "Org"}
OBS = {"resourceType": "Observation", "id": "c", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient?identifier=urn:mrn|12345"},
       "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href=\"urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a\">o</a></div>"}}

commands = {
    'cmd-writes': writes(5, [write_op('Update', 'Patient', 'a', PAT), write_op('Delete', 'Observation', 'ob1')]),
    'cmd-create': writes(5, [write_op('Create', 'Organization', 'b', ORG, if_match=None, allow_create=False)]),
    'cmd-ifmatch': writes(5, [write_op('Update', 'Patient', 'p1', dict(PAT, id='p1'), if_match=1)]),
    'cmd-conditional-create': conditional(7, write_op('Create', 'Patient', 'new1', dict(PAT, id='new1')), condition([('identifier', 'urn:mrn|12345')])),
    'cmd-conditional-update': conditional(7, write_op('Update', 'Patient', 'p9', dict(PAT, id='p9')), condition([('name', 'smith')], client_id=True)),
    'cmd-conditional-delete': conditional(7, write_op('Delete', 'Observation', 'x'), condition([('status', 'final')], multiple=True)),
    'cmd-transaction': bundle(9, True, [
        (0, write_op('Create', 'Organization', 'b', ORG), None, False, 'urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a'),
        (1, write_op('Update', 'Patient', 'a', PAT), None, False, 'http://example.org/fhir/Patient/a'),
        (2, write_op('Create', 'Observation', 'c', OBS), condition([('identifier', 'urn:obs|x9')]), False, None),
        (3, write_op('Delete', 'Patient', 'p2'), None, False, None),
    ]),
    'cmd-batch': bundle(9, False, [
        (0, write_op('Update', 'Patient', 'p1', dict(PAT, id='p1')), None, True, None),
        (1, write_op('Delete', 'Observation', ''), condition([('subject', 'Patient/p1')], multiple=True), False, None),
    ]),
    'cmd-pin': pin('v1:R4-0123456789abcdef'),
}

# Frames: 4-byte big-endian length, then the bincode (fixint, little-endian) Frame.
def frame(body): return struct.pack('>I', len(body)) + body
def hello(n): return frame(u32(0) + u64(n))
def raft_frame(msg): return frame(u32(1) + string(msg))
def snapshot_frame(msg): return frame(u32(2) + string(msg))
def forward(origin, req, term, data): return frame(u32(3) + u64(origin) + u64(req) + u64(term) + string(data))
def forward_ack(req, index, term): return frame(u32(4) + u64(req) + u64(index) + u64(term))
def forward_reject(req, reason): return frame(u32(5) + u64(req) + string(reason))
def forward_invalid(req, reason): return frame(u32(6) + u64(req) + string(reason))
def snapshot_chunk(id_, seq, last, data): return frame(u32(7) + u64(id_) + u64(seq) + boolean(last) + string(data))
def chunk(pairs): return b''.join(struct.pack('>I', len(k)) + k + struct.pack('>I', len(v)) + v for k, v in pairs)

# Protobuf (eraftpb) messages.
def varint(v):
    out = b''
    while True:
        b = v & 0x7f
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])
def field_varint(n, v): return varint(n << 3) + varint(v)
def field_bytes(n, b): return varint((n << 3) | 2) + varint(len(b)) + b
def entry(term, index, data=b'', etype=0): return field_varint(1, etype) + field_varint(2, term) + field_varint(3, index) + field_bytes(4, data)
def message(mtype, to, frm, term, log_term=0, index=0, entries=(), commit=0, snapshot=None, reject=False, context=b''):
    m = field_varint(1, mtype) + field_varint(2, to) + field_varint(3, frm) + field_varint(4, term) + field_varint(5, log_term) + field_varint(6, index)
    for e in entries:
        m += field_bytes(7, e)
    m += field_varint(8, commit)
    if snapshot is not None:
        m += field_bytes(9, snapshot)
    if reject:
        m += field_varint(10, 1)
    if context:
        m += field_bytes(12, context)
    return m
conf_state = field_varint(1, 1) + field_varint(1, 2) + field_varint(1, 3)
snap_meta = field_bytes(1, conf_state) + field_varint(2, 100) + field_varint(3, 2)
snapshot = field_bytes(1, b'snapshot data') + field_bytes(2, snap_meta)

append = message(3, 2, 1, 5, log_term=5, index=10, entries=[entry(5, 11, commands['cmd-writes']), entry(5, 12, b'', 1)], commit=10)
heartbeat = message(8, 2, 1, 5, commit=10, context=b'read-1')
vote = message(5, 2, 1, 6, log_term=5, index=12)
snap = message(7, 2, 1, 5, snapshot=snapshot)
append_resp = message(4, 1, 2, 5, index=12, reject=True)

frames = {
    'frame-hello-raft': hello(1) + raft_frame(append) + raft_frame(heartbeat),
    'frame-vote': hello(3) + raft_frame(vote) + raft_frame(append_resp),
    'frame-snapshot': hello(2) + snapshot_frame(snap),
    'frame-forward': hello(2) + forward(2, 77, 5, commands['cmd-transaction']) + forward_ack(77, 13, 5),
    'frame-forward-conditional': forward(2, 78, 5, commands['cmd-conditional-create']) + forward_reject(78, 'not the leader') + forward_invalid(79, 'bad'),
    'frame-too-long': struct.pack('>I', 0xffffffff) + b'\x00' * 8,
    'frame-truncated': struct.pack('>I', 100) + u32(1) + u64(1000) + b'abc',
    'frame-snapshot-stream': hello(1) + snapshot_chunk(7, 0, False, chunk([(b'ma', b'\x00' * 16), (b'cPatient\x00p1', b'{}')])) + snapshot_chunk(7, 1, True, b'')
        + snapshot_frame(message(7, 2, 1, 5, snapshot=field_bytes(1, b'KSNAP2' + struct.pack('>Q', 7)) + field_bytes(2, snap_meta))),
    'frame-chunk-truncated': snapshot_chunk(1, 0, True, struct.pack('>I', 9) + b'abc'),
    'raft-append': append,
    'raft-snapshot': snap,
}

os.makedirs('corpus/bundle', exist_ok=True)
os.makedirs('corpus/frame', exist_ok=True)
for name, data in commands.items():
    open(f'corpus/bundle/{name}', 'wb').write(data)
    open(f'corpus/frame/{name}', 'wb').write(forward(1, 1, 1, data))
for name, data in frames.items():
    open(f'corpus/frame/{name}', 'wb').write(data)
print(len(commands), 'commands,', len(frames), 'frames')
