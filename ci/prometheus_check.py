#!/usr/bin/env python3
"""Checks a running Prometheus against the directpush dashboard (deploy-smoke.sh).

Every scrape target is up (within 60 s); every query of the dashboard runs; and every query
returns data unless no metric it reads has a sample yet (a counter family nothing has counted,
such as rate limits or TLS reloads in compose, where TLS ends at HAProxy): those are listed.
Usage: prometheus_check.py PROMETHEUS_URL DASHBOARD_JSON
"""
import json
import re
import sys
import time
import urllib.parse
import urllib.request


def get(base, path, **params):
    url = f"{base}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    if body.get("status") != "success":
        raise RuntimeError(f"{path} {params}: {body}")
    return body["data"]


def wait_targets_up(base):
    deadline = time.time() + 60
    while True:
        try:
            targets = get(base, "/api/v1/targets")["activeTargets"]
        except OSError:
            targets = []
        down = [t["scrapeUrl"] for t in targets if t["health"] != "up"]
        if targets and not down:
            return targets
        if time.time() > deadline:
            sys.exit(f"prometheus: targets not up after 60 s: {down or 'none known'}")
        time.sleep(1)


def metrics_of(expr):
    names = set(re.findall(r"\b(dp_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}


def main():
    base, dashboard = sys.argv[1].rstrip("/"), sys.argv[2]
    targets = wait_targets_up(base)
    print(f"prometheus: {len(targets)} targets up: " + ", ".join(t["labels"]["instance"] for t in targets))
    # Two scrapes at least, so that rate() over [1m] has points.
    time.sleep(12)
    exprs = [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p.get("targets", [])]
    empty, idle = [], []
    for expr in exprs:
        result = get(base, "/api/v1/query", query=expr)["result"]
        if result:
            continue
        sampled = [m for m in metrics_of(expr)
                   if get(base, "/api/v1/query", query=f'count({{__name__=~"{m}(_total|_bucket)?"}})')["result"]]
        (empty if sampled else idle).append(expr)
    print(f"prometheus: {len(exprs) - len(empty) - len(idle)} of {len(exprs)} dashboard queries return data")
    for expr in idle:
        print(f"prometheus: no data, nothing counted yet: {expr}")
    if empty:
        sys.exit("prometheus: queries with samples but no data: " + "; ".join(empty))


if __name__ == "__main__":
    main()
