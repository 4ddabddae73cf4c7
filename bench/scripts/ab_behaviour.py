"""Behaviour check of two kiln builds side by side (bench/scripts/ab.sh times them): each serves
a fresh node; the same 157 requests (every interaction's shape under GET, HEAD, DELETE, OPTIONS,
POST, PUT and PATCH, odd paths: trailing and double slashes, percent-encoded names, unknown
types, operations, a batch) go to both, and the status, Allow, Location and body of each answer
are compared with timestamps, UUIDs and ports set aside.
Usage: ab_behaviour.py BEFORE_BIN AFTER_BIN"""
import json, re, subprocess, sys, time, urllib.request, socket, http.client
def port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
def run(binary, tag):
    p=port(); d=f"/tmp/kiln-ab-behaviour-{tag}"; subprocess.run(["rm","-rf",d])
    proc=subprocess.Popen([binary,"serve","--data-dir",d,"--listen",f"127.0.0.1:{p}"],stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    for _ in range(100):
        try: urllib.request.urlopen(f"http://127.0.0.1:{p}/_health"); break
        except Exception: time.sleep(0.1)
    out=[]
    def req(m, path, body=None, ct="application/fhir+json"):
        c=http.client.HTTPConnection("127.0.0.1",p,timeout=10)
        h={"Content-Type":ct} if body is not None else {}
        c.request(m, path, body=body, headers=h)
        r=c.getresponse(); b=r.read().decode(errors="replace")
        b=re.sub(r'"(lastUpdated|date|timestamp|lastModified)":\s*"[^"]*"','"T"',b)
        b=re.sub(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}','UUID',b)
        b=b.replace(str(p),"PORT")
        loc=(r.getheader("Location") or "").replace(str(p),"PORT")
        loc=re.sub(r'[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}','UUID',loc)
        out.append((m,path,r.status,r.getheader("Allow"),loc,b[:3000]))
    pt=json.dumps({"resourceType":"Patient","id":"x","name":[{"family":"Beh"}]})
    req("PUT","/Patient/x",pt)
    req("PUT","/Patient/x",pt)
    req("PUT","/Observation/o1",json.dumps({"resourceType":"Observation","id":"o1","status":"final","code":{"text":"c"},"subject":{"reference":"Patient/x"}}))
    paths=["/","/_history","/_history/x","/Patient","/Patient/","//Patient","/Patient/x","/Patient/x/","/Patient/x/_history","/Patient/x/_history/1","/Patient/x/_history/9",
           "/Patient/x/_history/1/extra","/Patient/_search","/Pat%69ent/x","/Patient/a%2Fb","/Patient/a%20b","/Foo/1","/Foo","/metadata","/Patient/x/Observation","/Patient/x/Foo",
           "/Patient/$everything","/Patient/x/$everything","/Patient/x/$foo","/$foo","/Patient/_history","/Patient?family=Beh","/Patient?_id=x","/a/b/c/d/e","/Patient/x/_history/1/$meta",
           "/Observation/o1","/_export/zz","/tenant/t1/Patient/x","/Patient/x%2F"]
    for m in ["GET","HEAD","DELETE","OPTIONS"]:
        for pa in paths:
            if m=="DELETE" and pa in ("/Patient/x","/Observation/o1"): continue
            req(m,pa)
    for pa in ["/Patient","/Patient/_search","/Patient/x","/","/metadata","/Foo","/Patient/x/_history","/_history"]:
        req("POST",pa,pt)
    req("POST","/Patient/_search","family=Beh","application/x-www-form-urlencoded")
    for pa in ["/Patient","/Patient/x","/Patient/_history","/Patient/_search","/Foo/x"]:
        req("PUT",pa,pt)
        req("PATCH",pa,json.dumps([{"op":"replace","path":"/active","value":True}]),"application/json-patch+json")
    req("POST","/",json.dumps({"resourceType":"Bundle","type":"batch","entry":[{"request":{"method":"GET","url":"Patient/x"}},{"request":{"method":"GET","url":"Patient/x/_history/1"}},{"request":{"method":"GET","url":"Foo/1"}}]}))
    proc.terminate(); proc.wait()
    return out
a=run(sys.argv[1],"a"); b=run(sys.argv[2],"b")
diff=[(x,y) for x,y in zip(a,b) if x!=y]
print(len(a),"requests,",len(diff),"differ")
for x,y in diff[:20]: print("BEFORE",x[:5],x[5][:300]); print("AFTER ",y[:5],y[5][:300])
