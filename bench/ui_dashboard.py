"""Dashboard first paint with 10,000 hosts on SQLite, in a real browser.

    .venv/bin/python bench/ui_dashboard.py                    # 10,000 hosts vs 100, 9 loads each
    .venv/bin/python bench/ui_dashboard.py --hosts 20000 --loads 15

What it does:

1. starts two ``vetting serve`` processes on fresh SQLite files: one with ``--hosts``
   hosts (the fleet), one with ``--baseline`` hosts (the baseline, same code, same
   machine, same run);
2. fills both with hosts and runs straight into SQLite (``bench/fleet.py``,
   ``sqlite3.executemany``; the schema is the server's own): per host 0 to 3 runs, the
   latest one in a spread of states (a fifth never ran, a few percent held with a hold
   TTL, failed, running, the rest finished), each finished run with a verdict;
3. logs in to both with Debian's chromium (Playwright) and loads ``/`` ``--loads`` times
   each, alternating fleet and baseline; per load it reads the browser's own timings:
   ``first-contentful-paint`` (the figure the issue asks for: < 300 ms), the time to the
   HTML's last byte (``responseEnd``), and the server's time for the HTML alone (an
   ``httpx`` GET with the session cookie, same alternation);
4. prints the medians (and p90) of each, and the fleet/baseline ratios.

The page shows one page of tiles (60) and the counts per state over all hosts; the
query plan is in ``vetting_server/ui/queries.py``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.fleet import fill_sqlite  # noqa: E402
from tests.support.server import ServerProcess  # noqa: E402
from tests.ui.conftest import CHROMIUM, CHROMIUM_ARGS, LAPTOP, PASSWORD  # noqa: E402

# the page's CSP forbids eval (wait_for_function): poll from a function instead
FCP = """() => new Promise(done => { const look = () => {
    const e = performance.getEntriesByName('first-contentful-paint');
    e.length ? done(e[0].startTime) : setTimeout(look, 10); }; look(); })"""


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=10_000)
    ap.add_argument("--baseline", type=int, default=100)
    ap.add_argument("--loads", type=int, default=9)
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="vetting-ui-bench-"))
    servers = {"fleet": ServerProcess(tmp / "fleet"), "baseline": ServerProcess(tmp / "baseline")}
    try:
        for name, srv in servers.items():
            srv.start()
            srv.cli("admin", "create", "alice", "--password-stdin", input=PASSWORD + "\n", check=True)
            t = time.perf_counter()
            runs = fill_sqlite(srv.db_path, args.hosts if name == "fleet" else args.baseline)
            print(f"{name}: {args.hosts if name == 'fleet' else args.baseline:,} hosts, {runs:,} runs "
                  f"(written in {time.perf_counter() - t:.1f} s)")
        fcp: dict[str, list[float]] = {n: [] for n in servers}
        html: dict[str, list[float]] = {n: [] for n in servers}
        server_ms: dict[str, list[float]] = {n: [] for n in servers}
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            pages, clients = {}, {}
            for name, srv in servers.items():
                ctx = browser.new_context(base_url=srv.base_url, viewport=LAPTOP)
                page = ctx.new_page()
                page.goto("/login")
                page.get_by_label("User name").fill("alice")
                page.get_by_label("Password").fill(PASSWORD)
                page.get_by_role("button", name="Log in").click()
                page.wait_for_url(f"{srv.base_url}/")
                cookie = {c["name"]: c["value"] for c in ctx.cookies()}
                pages[name] = page
                clients[name] = httpx.Client(base_url=srv.base_url, cookies=cookie, timeout=30)
            for i in range(args.loads + 1):  # the first round warms caches and is not counted
                for name in (servers if i % 2 else reversed(list(servers))):
                    t = time.perf_counter()
                    r = clients[name].get("/")
                    took = (time.perf_counter() - t) * 1000
                    assert r.status_code == 200 and 'class="tiles"' in r.text, r.status_code
                    page = pages[name]
                    page.goto("/", wait_until="load")
                    t_fcp = page.evaluate(FCP)
                    t_html = page.evaluate("performance.getEntriesByType('navigation')[0].responseEnd")
                    assert page.locator(".tiles > li").count() == min(60, args.hosts if name == "fleet" else args.baseline)
                    if i:
                        fcp[name].append(t_fcp)
                        html[name].append(t_html)
                        server_ms[name].append(took)
            browser.close()
        print(f"\n{args.loads} loads each, alternating (medians, p90 in brackets), ms:")
        print(f"{'':10} {'first paint':>18} {'HTML last byte':>18} {'server, HTML':>18}")
        for name in servers:
            row = [f"{statistics.median(v):7.1f} [{pct(v, 0.9):6.1f}]" for v in (fcp[name], html[name], server_ms[name])]
            print(f"{name:10} {row[0]:>18} {row[1]:>18} {row[2]:>18}")
        ratio = [statistics.median(a["fleet"]) / statistics.median(a["baseline"]) for a in (fcp, html, server_ms)]
        print(f"{'ratio':10} {ratio[0]:>17.2f}x {ratio[1]:>17.2f}x {ratio[2]:>17.2f}x")
        verdict = "under" if statistics.median(fcp["fleet"]) < 300 else "OVER"
        print(f"\nfirst paint with {args.hosts:,} hosts: median {statistics.median(fcp['fleet']):.0f} ms ({verdict} 300 ms)")
    finally:
        for srv in servers.values():
            srv.close()


if __name__ == "__main__":
    main()
