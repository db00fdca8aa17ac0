"""deploy/monitoring/: the Grafana dashboard and the prometheus-adapter rules use only metrics the
server really exports. A one-rank `tessera serve` is started on 127.0.0.1, served one good and one
bad request (so the labelled counters exist), and scraped; every metric name in every PromQL
expression must be among the scraped ones. Also the dashboard's structure (unique ids, grid
positions, datasource variable) and the panels the operations docs point to.

    python3 dashboard_test.py SOURCE_DIR TESSERA_BINARY
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import yaml

SOURCE = None
TESSERA = None
METRIC = re.compile(r"tessera:[a-z0-9_]+")


class Scrape:
    names = None

    @classmethod
    def get(cls):
        if cls.names is None:
            cls.names = cls.scrape()
        return cls.names

    @staticmethod
    def scrape():
        tmp = tempfile.mkdtemp(prefix="dashboard-")
        port_file = os.path.join(tmp, "port")
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(tmp, "cache"), OMP_NUM_THREADS="1")
        server = subprocess.Popen([TESSERA, "serve", "--host", "127.0.0.1", "--port", "0",
                                   "--metrics-port", "0", "--http-port", "0",
                                   "--port-file", port_file],
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            deadline = time.time() + 120
            while not os.path.exists(port_file):
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError("tessera serve did not start: " +
                                       server.stderr.read().decode())
                time.sleep(0.1)
            with open(port_file) as f:
                grpc_port, metrics_port = f.read().split()[:2]
            client = [TESSERA, "client", "--address", f"127.0.0.1:{grpc_port}", "generate",
                      "--max-tokens", "3"]
            subprocess.run(client + ["--prompt", "hi"], check=True, capture_output=True,
                           timeout=60)
            bad = subprocess.run(client + ["--prompt-ids", "999999999"], capture_output=True,
                                 timeout=60)
            assert bad.returncode != 0
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics",
                                        timeout=10) as r:
                text = r.read().decode()
        finally:
            server.kill()  # its drain is tested elsewhere
            server.wait(timeout=60)
            server.stderr.close()
            shutil.rmtree(tmp, ignore_errors=True)
        return {line.split("{")[0].split(" ")[0] for line in text.splitlines()
                if line and not line.startswith("#")}


def dashboard():
    with open(os.path.join(SOURCE, "deploy/monitoring/grafana-dashboard.json")) as f:
        return json.load(f)


def expressions(dash):
    for panel in dash["panels"]:
        for target in panel.get("targets", []):
            yield panel["title"], target["expr"]


class DashboardTest(unittest.TestCase):
    def test_structure(self):
        dash = dashboard()
        self.assertEqual(dash["uid"], "tessera-serving")
        ids = [p["id"] for p in dash["panels"]]
        self.assertEqual(len(ids), len(set(ids)))
        variables = [v["name"] for v in dash["templating"]["list"]]
        self.assertEqual(variables, ["datasource", "namespace", "pod"])
        cells = set()
        for panel in dash["panels"]:
            g = panel["gridPos"]
            self.assertLessEqual(g["x"] + g["w"], 24, panel["title"])
            for dx in range(g["w"]):  # panels must not overlap
                for dy in range(g["h"]):
                    cell = (g["x"] + dx, g["y"] + dy)
                    self.assertNotIn(cell, cells, panel["title"])
                    cells.add(cell)
            if panel["type"] != "row":
                self.assertEqual(panel["datasource"]["uid"], "${datasource}", panel["title"])
                self.assertTrue(panel["targets"], panel["title"])

    def test_the_panels_operations_needs(self):
        exprs = " ".join(e for _, e in expressions(dashboard()))
        for needed in ("tessera:num_requests_running", "tessera:num_requests_waiting",
                       "tessera:kv_cache_usage_perc", "tessera:request_errors_total",
                       "tessera:request_success_total"):
            self.assertIn(needed, exprs)
        for histogram in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                          "e2e_request_latency_seconds"):
            for q in ("0.5", "0.9", "0.99"):
                self.assertIn(f"histogram_quantile({q}, sum by (le) (rate(tessera:{histogram}"
                              "_bucket", exprs)

    def test_prefix_cache_hit_ratio_is_hits_over_prompt_tokens(self):
        exprs = [e for title, e in expressions(dashboard()) if title == "Prefix cache hit ratio"]
        self.assertEqual(len(exprs), 1)
        hits, _, prompt = exprs[0].partition(" / ")
        self.assertIn("tessera:prefix_cache_hit_tokens_total", hits)
        self.assertIn("tessera:prompt_tokens_total", prompt)

    def test_expressions_are_well_formed(self):
        for title, expr in expressions(dashboard()):
            for open_, close in ("()", "[]", "{}"):
                depth = 0
                for ch in expr:
                    depth += (ch == open_) - (ch == close)
                    self.assertGreaterEqual(depth, 0, f"{title}: {expr}")
                self.assertEqual(depth, 0, f"{title}: {expr}")
            self.assertIn('namespace=~"$namespace", pod=~"$pod"', expr, title)

    def test_metrics_exist_in_the_server(self):
        exported = Scrape.get()
        self.assertIn("tessera:request_errors_total", exported)
        for title, expr in expressions(dashboard()):
            for name in METRIC.findall(expr):
                self.assertIn(name, exported, f"panel '{title}' uses {name}")
        with open(os.path.join(SOURCE, "deploy/monitoring/prometheus-adapter-rules.yaml")) as f:
            rules = yaml.safe_load(f)["rules"]
        for rule in rules:
            for name in METRIC.findall(rule["seriesQuery"]):
                self.assertIn(name, exported)
        # The autoscaler's default metric is what the adapter rules expose.
        with open(os.path.join(SOURCE, "deploy/k8s/values.yaml")) as f:
            metric = yaml.safe_load(f)["autoscaling"]["metric"]
        self.assertIn(metric, [r["name"]["as"] for r in rules])


if __name__ == "__main__":
    SOURCE = os.path.abspath(sys.argv.pop(1))
    TESSERA = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
