#!/usr/bin/env python3
"""Time from a publish's reply to the edge serving the new version (change feed).

Starts a release `tessera origin` and `tessera edge` on loopback, publishes 20 versions
of one file and, after each, asks the edge until it serves the new one. The origin's
manifests are fresh for 60 s, so only the change feed can make the edge switch sooner.
Usage: python3 bench/scripts/feed-latency.py [path/to/tessera]
"""
import subprocess, sys, tempfile, time, urllib.request

tessera = sys.argv[1] if len(sys.argv) > 1 else "target/release/tessera"
data = tempfile.mkdtemp()
origin = subprocess.Popen([tessera, "origin", "--listen", "127.0.0.1:27070", "--data", data + "/o",
                           "--token", "t"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
edge = subprocess.Popen([tessera, "edge", "--origin", "http://127.0.0.1:27070", "--http",
                         "127.0.0.1:28080", "--data", data + "/e"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    def put(v):
        r = urllib.request.Request("http://127.0.0.1:27070/api/v1/files/news.html", data=v.encode(),
                                   method="PUT", headers={"Authorization": "Bearer t"})
        urllib.request.urlopen(r).read()

    def get():
        return urllib.request.urlopen("http://127.0.0.1:28080/news.html").read().decode()

    deadline = time.monotonic() + 20
    while True:
        try:
            put("v0"); get(); get()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    ds = []
    for i in range(1, 21):
        put("v%d" % i)
        t = time.monotonic()
        while get() != "v%d" % i:
            if time.monotonic() - t > 5:
                raise SystemExit("the edge did not switch within 5 s")
        ds.append((time.monotonic() - t) * 1000)
    ds.sort()
    print("publish -> edge serves the new version, ms: min %.1f median %.1f max %.1f (n=%d)"
          % (ds[0], ds[len(ds) // 2], ds[-1], len(ds)))
finally:
    edge.kill(); origin.kill()
