"""TLS as deploy/k8s/examples/cpu-smoke-tls.yaml deploys it, run on this machine: the rendered
container (entrypoint, arguments, environment) starts with a certificate and key where the
rendered Secret volume is mounted, the rendered probes (HTTP GET on the metrics port) succeed, a
client that trusts the certificate is served over TLS (gRPC and the OpenAI HTTP API), a plain-text
one is not, and SIGTERM drains to exit 0. Only the listening ports become 0 (free ports) and the host 127.0.0.1.

    python3 tls_test.py SOURCE_DIR TESSERA_BINARY
"""

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.request

import yaml

SOURCE = None
TESSERA = None
MPIRUN_ARGS = "--allow-run-as-root --oversubscribe"


def rendered_container():
    result = subprocess.run(
        [sys.executable, os.path.join(SOURCE, "deploy/k8s/render.py"), "-f",
         os.path.join(SOURCE, "deploy/k8s/examples/cpu-smoke-tls.yaml")],
        capture_output=True, text=True, check=True)
    deployment = next(d for d in yaml.safe_load_all(result.stdout) if d["kind"] == "Deployment")
    spec = deployment["spec"]["template"]["spec"]
    return spec, spec["containers"][0]


class TlsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="tls-")
        self.addCleanup(shutil.rmtree, self.tmp, True)

    def test_rendered_tls_server(self):
        spec, c = rendered_container()
        # The Secret volume, as the kubelet would mount it: a kubernetes.io/tls Secret's keys.
        [mount] = [m for m in c["volumeMounts"] if m["name"] == "tls"]
        secret = next(v for v in spec["volumes"] if v["name"] == "tls")["secret"]
        self.assertEqual(secret["secretName"], "tessera-tls")
        tls_dir = os.path.join(self.tmp, "secret")
        os.mkdir(tls_dir)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext",
                        "subjectAltName=DNS:localhost,IP:127.0.0.1",
                        "-keyout", os.path.join(tls_dir, "tls.key"),
                        "-out", os.path.join(tls_dir, "tls.crt")],
                       check=True, capture_output=True)
        for name in ("tls.key", "tls.crt"):
            os.chmod(os.path.join(tls_dir, name), secret["defaultMode"])

        def local(value):
            value = str(value)
            if value.startswith(mount["mountPath"] + "/"):
                return tls_dir + value[len(mount["mountPath"]):]
            return value
        args = [local(a) for a in c["args"]]
        self.assertEqual(args[0], "serve")
        for flag, value in (("--port", "0"), ("--http-port", "0"), ("--metrics-port", "0"),
                            ("--host", "127.0.0.1")):
            args[args.index(flag) + 1] = value
        self.assertTrue(os.path.exists(args[args.index("--tls-cert") + 1]))
        run_dir = os.path.join(self.tmp, "run")
        env = dict(os.environ, TESSERA_RUN_DIR=run_dir, TESSERA_BIN=TESSERA,
                   TESSERA_MPIRUN_ARGS=MPIRUN_ARGS,
                   XDG_CACHE_HOME=os.path.join(self.tmp, "cache"))
        env.update({e["name"]: e["value"] for e in c["env"] if "value" in e})
        self.assertEqual(env["TESSERA_RANKS_PER_NODE"], "2")
        log = open(os.path.join(self.tmp, "job.log"), "w+")
        self.addCleanup(log.close)
        job = subprocess.Popen([os.path.join(SOURCE, "deploy/entrypoint.sh")] + args, env=env,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def output():
            log.seek(0)
            return log.read()[-4000:]

        def stop():
            if job.poll() is None:
                os.killpg(job.pid, 9)
                job.wait()
        self.addCleanup(stop)
        port_file = os.path.join(run_dir, "port")
        deadline = time.time() + 120
        while not os.path.exists(port_file):
            self.assertIsNone(job.poll(), output())
            self.assertLess(time.time(), deadline, output())
            time.sleep(0.1)
        with open(port_file) as f:
            grpc_port, metrics_port, _, http_port = f.read().split()[:4]
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        local_port = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}

        # The rendered probes, as the kubelet runs them.
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c[probe]["httpGet"]
            self.assertIn(get["port"], ports)
            url = f"http://127.0.0.1:{local_port[get['port']]}{get['path']}"
            with urllib.request.urlopen(url, timeout=5) as r:
                self.assertEqual(r.status, 200, probe)

        address = f"localhost:{grpc_port}"
        cert = args[args.index("--tls-cert") + 1]

        def client(*more):
            return subprocess.run([TESSERA, "client", "--address", address] + list(more),
                                  capture_output=True, text=True, timeout=120)
        health = client("--tls-ca", cert, "health")
        self.assertEqual(health.returncode, 0, health.stderr)
        self.assertIn("SERVING", health.stdout)
        chat = client("--tls-ca", cert, "--timeout", "60", "chat", "--user", "hello",
                      "--no-thinking", "--max-tokens", "8", "--seed", "1", "--json")
        self.assertEqual(chat.returncode, 0, chat.stderr)
        self.assertTrue(json.loads(chat.stdout)["token_ids"], chat.stdout)
        plain = client("--timeout", "5", "health")
        self.assertNotEqual(plain.returncode, 0, "a plain-text client was served")
        # The OpenAI HTTP API on the port the container exposes as "http", over the same TLS.
        self.assertIn("http", ports)
        https = ssl.create_default_context(cafile=cert)
        with urllib.request.urlopen(f"https://localhost:{http_port}/v1/models", timeout=10,
                                    context=https) as r:
            self.assertEqual(r.status, 200)
            self.assertTrue(json.loads(r.read())["data"])

        os.kill(job.pid, 15)
        self.assertEqual(job.wait(timeout=120), 0, output())


if __name__ == "__main__":
    SOURCE = os.path.abspath(sys.argv.pop(1))
    TESSERA = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
