#!/usr/bin/env python
"""Collector speed and memory, side by side with its baselines in the same run (the ratios survive a noisy machine).

For each size (MB of Posts.xml) a synthetic site is generated (scripts/make_stackexchange_dump.py, packed as a .7z) and measured:
  (a) 7z:        decompressing Posts.xml from the .7z to nowhere (py7zr, the collector's own streaming reader)
  (b) iterparse: a bare `lxml.etree.iterparse` pass over the extracted Posts.xml that does nothing per row (elem.clear())
  (c) read:      the collector's phase 1 alone (.7z -> row checks -> on-disk store), from its manifest timings
  (d) collect:   `worldpm collect` end to end (.7z -> parquet shards), with `workers` processes
  (e) convert:   HTML -> markdown of the first --convert-sample answer bodies with each converter (source.converter), ms per KB
MB/s are MB of Posts.xml per second per worker. Peak RSS is the whole process tree's (the collector and its workers), measured in a
child process per step. Results are printed as a markdown table and written to --out/bench.json.

    python scripts/bench_collect.py --sizes 100 300 --out /tmp/bench --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SITE = "bench.stackexchange.com"


def _child(kind: str, arg: str, extra: list[str]) -> None:
    """Run one measured step in this (fresh) process and print its figures as JSON."""
    sys.path.insert(0, str(ROOT))
    t0 = time.perf_counter()
    out = {}
    if kind == "7z":
        from data_prep.inputs import sevenzip_member_chunks

        out["bytes"] = sum(len(c) for c in sevenzip_member_chunks(Path(arg), "Posts.xml"))
    elif kind == "iterparse":
        from lxml import etree

        n = 0
        for _, el in etree.iterparse(arg, events=("end",), tag="row", resolve_entities=False, no_network=True, huge_tree=False):
            n += 1
            el.clear()
        out["rows"], out["bytes"] = n, os.path.getsize(arg)
    elif kind == "convert":
        from lxml import etree

        from data_prep.html_markdown import CONVERTERS, html_to_markdown

        n = int(extra[0])
        bodies = []
        for _, el in etree.iterparse(arg, events=("end",), tag="row", resolve_entities=False, no_network=True):
            if el.get("PostTypeId") == "2":
                bodies.append(el.get("Body", ""))
            el.clear()
            if len(bodies) >= n:
                break
        kb = sum(len(b.encode()) for b in bodies) / 1e3
        for name in CONVERTERS:
            html_to_markdown(bodies[0], name)  # imports and converter construction stay out of the timing
            t = time.perf_counter()
            for body in bodies:
                html_to_markdown(body, name)
            out[f"{name}_ms_per_kb"] = (time.perf_counter() - t) * 1e3 / kb
        out["bodies"], out["kb"] = len(bodies), kb
    else:
        from data_prep.collect import run
        from data_prep.entry import compose

        manifest = run(compose("collect", [f"source.path={arg}", *extra]))
        out.update(manifest=manifest["timings"], counts=manifest["counts"], store_bytes=manifest["store_bytes"])
    out["seconds"] = time.perf_counter() - t0
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    out["peak_rss_mb"] = (self_kb + children_kb) / 1024  # the process plus its largest worker: an upper bound of the tree's peak
    print("BENCH " + json.dumps(out))


def measure(kind: str, arg: str, extra: list[str] = ()) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, arg, *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr[-3000:]}")
    line = next(x for x in result.stdout.splitlines() if x.startswith("BENCH "))
    return json.loads(line[6:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[100, 300], help="MB of Posts.xml")
    ap.add_argument("--out", type=Path, default=Path("/tmp/worldpm-bench"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--convert-sample", type=int, default=2000, help="answer bodies timed per converter (0: skip)")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args, extra = ap.parse_known_args()
    if args.child:
        return _child(args.child[0], args.child[1], args.child[2:] + extra)
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_stackexchange_dump import generate

    rows, results = [], []
    for size in args.sizes:
        site_dir = args.out / f"{int(size)}mb" / SITE
        archive = site_dir.parent / f"{SITE}.7z"
        if not archive.exists():
            t0 = time.perf_counter()
            info = generate(site_dir, SITE, None, size, seed=int(size), tag_format="angle", n_users=20000, pack=True,
                            votes_table=False)
            print(f"generated {info} in {time.perf_counter() - t0:.0f}s", file=sys.stderr)
        posts = site_dir / "Posts.xml"
        mb = posts.stat().st_size / 1e6
        sevenz = measure("7z", str(archive))
        bare = measure("iterparse", str(posts))
        out_dir = args.out / f"{int(size)}mb" / "collect"
        full = measure("collect", str(archive), [f"output_dir={out_dir}", "overwrite=true", f"workers={args.workers}"])
        conv = measure("convert", str(posts), [str(args.convert_sample)]) if args.convert_sample else None
        read_s = full["manifest"]["read"]["seconds"]
        w = args.workers
        r = {"posts_mb": round(mb, 1), "archive_mb": round(archive.stat().st_size / 1e6, 1), "workers": w,
             "7z_mb_s": round(mb / sevenz["seconds"], 2), "iterparse_mb_s": round(mb / bare["seconds"], 2),
             "read_phase_mb_s_per_worker": round(mb / read_s / 1, 2),
             "collect_mb_s_per_worker": round(mb / full["seconds"] / w, 3),
             "collect_vs_iterparse": round((mb / full["seconds"] / w) / (mb / bare["seconds"]), 4),
             "read_phase_vs_iterparse": round((mb / read_s) / (mb / bare["seconds"]), 3),
             "peak_rss_mb": {"7z": round(sevenz["peak_rss_mb"]), "iterparse": round(bare["peak_rss_mb"]),
                             "collect": round(full["peak_rss_mb"])},
             "store_mb": round(full["store_bytes"] / 1e6, 1), "store_vs_posts": round(full["store_bytes"] / 1e6 / mb, 2),
             "seconds": {"7z": round(sevenz["seconds"], 1), "iterparse": round(bare["seconds"], 1),
                         "collect": round(full["seconds"], 1), **{k: v["seconds"] for k, v in full["manifest"].items()}},
             "pairs": full["counts"],
             "convert_ms_per_kb": conv and {k.removesuffix("_ms_per_kb"): round(v, 3) for k, v in conv.items() if k.endswith("_ms_per_kb")}}
        results.append(r)
        print(json.dumps(r), file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench.json").write_text(json.dumps(results, indent=2))
    print("| Posts.xml MB | workers | 7z -> null MB/s | bare iterparse MB/s | collect read phase MB/s | collect end-to-end MB/s/worker "
          "| end-to-end / iterparse | peak RSS MB (collect / iterparse / 7z) | store MB (x Posts.xml) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rss = r["peak_rss_mb"]
        print(f"| {r['posts_mb']} | {r['workers']} | {r['7z_mb_s']} | {r['iterparse_mb_s']} | {r['read_phase_mb_s_per_worker']} | "
              f"{r['collect_mb_s_per_worker']} | {r['collect_vs_iterparse']:.1%} | {rss['collect']} / {rss['iterparse']} / {rss['7z']} | "
              f"{r['store_mb']} ({r['store_vs_posts']}x) |")
    for r in results:
        if r["convert_ms_per_kb"]:
            print(f"HTML -> markdown, {r['posts_mb']} MB site, ms per KB of answer HTML: " +
                  ", ".join(f"{k} {v}" for k, v in r["convert_ms_per_kb"].items()))


if __name__ == "__main__":
    main()
