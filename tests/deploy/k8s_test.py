"""The Kubernetes manifests: every example in deploy/k8s/examples/ renders, equals its committed
copy in deploy/k8s/rendered/, passes Kubernetes' schemas (kubernetes-validate, strict: unknown
fields are errors) at the oldest and newest versions we support, and keeps the promises
docs/deploy.md makes (GPUs requested, grace period covers the drain, native gRPC probes, /dev/shm,
selectors that match, ...). Custom resources are checked against the committed schemas in
deploy/k8s/schemas/ (LeaderWorkerSet, ServiceMonitor, PodMonitor, KEDA ScaledObject) and the
LeaderWorkerSet's pod templates against Kubernetes' PodTemplateSpec. Also: the values real
clusters need (one image value, extra volumes, security contexts, host network, monitoring
objects), bad values refused with a reason, the ssh Secret generator's output, and yamllint.

    python3 k8s_test.py SOURCE_DIR
"""

import base64
import copy
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

import jsonschema
import kubernetes_validate
import yaml

SOURCE = None
K8S = None
# Native gRPC probes are GA since 1.27; validate at the oldest version we claim and the newest the
# validator knows.
KUBERNETES_VERSIONS = ("1.28.0", "1.37.0")
RENDER_HINT = "re-render with deploy/k8s/render-examples.sh and commit the result"


def render(*args):
    return subprocess.run([sys.executable, os.path.join(K8S, "render.py")] + list(args),
                          capture_output=True, text=True, timeout=60)


def examples():
    return sorted(glob.glob(os.path.join(K8S, "examples", "*.yaml")))


def load_values(example):
    with open(os.path.join(K8S, "values.yaml")) as f:
        defaults = yaml.safe_load(f)
    with open(example) as f:
        override = yaml.safe_load(f)

    def merge(a, b):
        out = copy.deepcopy(a)
        for k, v in b.items():
            out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
                else v
        return out
    return merge(defaults, override)


def pod_templates(doc):
    """[(role, pod template)] of a workload."""
    if doc["kind"] == "Deployment":
        return [("server", doc["spec"]["template"])]
    if doc["kind"] == "LeaderWorkerSet":
        t = doc["spec"]["leaderWorkerTemplate"]
        return [("server", t["leaderTemplate"]), ("worker", t["workerTemplate"])]
    return []


def arg(args, flag):
    return args[args.index(flag) + 1]


def env_of(container):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def bytes_of(quantity):
    m = re.match(r"^([0-9.]+)(Ki|Mi|Gi|Ti|)$", str(quantity))
    return float(m.group(1)) * {"": 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30,
                                "Ti": 2**40}[m.group(2)]


# Custom resources: kind -> committed schema.
CUSTOM_SCHEMAS = {"LeaderWorkerSet": "leaderworkerset-v1.json",
                  "ServiceMonitor": "servicemonitor-v1.json",
                  "PodMonitor": "podmonitor-v1.json",
                  "ScaledObject": "scaledobject-v1alpha1.json"}


def custom_schema(kind):
    with open(os.path.join(K8S, "schemas", CUSTOM_SCHEMAS[kind])) as f:
        return json.load(f)


def validate(test, doc, where):
    """Kubernetes' own schemas for built-in kinds (strict), the committed ones for custom
    resources; a LeaderWorkerSet's pod templates as PodTemplates."""
    if doc["kind"] in CUSTOM_SCHEMAS:
        try:
            jsonschema.validate(doc, custom_schema(doc["kind"]),
                                cls=jsonschema.Draft202012Validator)
        except jsonschema.ValidationError as e:
            test.fail(f"{where}: {e.message} at {'/'.join(map(str, e.absolute_path))}")
        for role, template in pod_templates(doc):
            wrapped = {"apiVersion": "v1", "kind": "PodTemplate",
                       "metadata": {"name": f"{doc['metadata']['name']}-{role}"},
                       "template": template}
            validate(test, wrapped, f"{where} {role} template")
        return
    for version in KUBERNETES_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = "/".join(map(str, e.absolute_path))
            test.fail(f"{where} (Kubernetes {version}): {e.message} at {path}")


def rendered_docs(*args):
    result = render(*args)
    assert result.returncode == 0, result.stderr
    return list(yaml.safe_load_all(result.stdout))


def of_kind(docs, kind):
    return next(d for d in docs if d["kind"] == kind)


class RenderedExamplesTest(unittest.TestCase):
    def setUp(self):
        self.lws_schema = custom_schema("LeaderWorkerSet")

    def rendered(self, example):
        result = render("-f", example)
        self.assertEqual(result.returncode, 0, result.stderr)
        return result.stdout

    def test_at_least_the_three_required_layouts(self):
        names = {os.path.basename(e) for e in examples()}
        self.assertLessEqual({"1x1.yaml", "1x8-tp8.yaml", "2x8-ep16.yaml"}, names)

    def test_committed_copies_are_current(self):
        committed = sorted(glob.glob(os.path.join(K8S, "rendered", "*.yaml")))
        self.assertEqual([os.path.basename(p) for p in committed],
                         [os.path.basename(p) for p in examples()], RENDER_HINT)
        for example in examples():
            with open(os.path.join(K8S, "rendered", os.path.basename(example))) as f:
                self.assertEqual(f.read(), self.rendered(example),
                                 f"{os.path.basename(example)}: {RENDER_HINT}")

    def validate(self, doc, where):
        validate(self, doc, where)

    def test_schemas(self):
        kinds = set()
        for example in examples():
            for doc in yaml.safe_load_all(self.rendered(example)):
                self.validate(doc, f"{os.path.basename(example)} {doc['kind']}")
                kinds.add(doc["kind"])
        # Every kind the renderer can produce appears in some example, so all are validated.
        self.assertLessEqual({"Deployment", "LeaderWorkerSet", "Service", "PodDisruptionBudget",
                              "PersistentVolumeClaim", "HorizontalPodAutoscaler", "ScaledObject",
                              "ServiceMonitor", "PodMonitor", "ConfigMap"}, kinds)

    def test_the_validation_catches_mistakes(self):
        # Guards against a validator that accepts anything.
        docs = list(yaml.safe_load_all(self.rendered(os.path.join(K8S, "examples",
                                                                  "2x8-ep16.yaml"))))
        lws = next(d for d in docs if d["kind"] == "LeaderWorkerSet")
        bad = copy.deepcopy(lws)
        bad["spec"]["leaderWorkerTemplate"]["restartPolicy"] = "Sometimes"
        with self.assertRaises(jsonschema.ValidationError):
            jsonschema.validate(bad, self.lws_schema)
        bad = copy.deepcopy(lws)
        bad["spec"]["leaderWorkerTemplate"]["workerTemplate"]["spec"]["containers"][0][
            "imagePullPolcy"] = "Always"
        with self.assertRaises(AssertionError):
            self.validate(bad, "typo")
        deployment = next(d for d in yaml.safe_load_all(self.rendered(
            os.path.join(K8S, "examples", "1x1.yaml"))) if d["kind"] == "Deployment")
        deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"][
            "port"] = "grpc"  # gRPC probes take a number, not a port name
        with self.assertRaises(AssertionError):
            self.validate(deployment, "named grpc port")
        # The custom resources' schemas reject typos and wrong types too.
        docs = list(yaml.safe_load_all(self.rendered(os.path.join(K8S, "examples",
                                                                  "2x8-ep16.yaml"))))
        for kind, path, value in (
                ("ScaledObject", ("spec", "triggers", 0, "metadata", "threshold"), 16),
                ("ScaledObject", ("spec", "maxReplicaCout"), 3),
                ("ServiceMonitor", ("spec", "endpoints", 0, "intervall"), "15s"),
                ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds")):
            bad = copy.deepcopy(of_kind(docs, kind))
            node = bad
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            with self.assertRaises(AssertionError, msg=f"{kind} {path}"):
                self.validate(bad, "mistake")
        bad = copy.deepcopy(of_kind(docs, "ScaledObject"))
        del bad["spec"]["triggers"][0]["metadata"]["query"]
        with self.assertRaises(AssertionError):
            self.validate(bad, "prometheus trigger without a query")

    def test_promises(self):
        for example in examples():
            with self.subTest(example=os.path.basename(example)):
                self.check_promises(load_values(example),
                                    list(yaml.safe_load_all(self.rendered(example))))

    def check_promises(self, v, docs):
        kinds = [d["kind"] for d in docs]
        workload = docs[kinds.index("LeaderWorkerSet" if v["nodes"] > 1 else "Deployment")]
        ranks = v["gpusPerNode"] or v["cpuRanksPerNode"]
        templates = dict(pod_templates(workload))
        server = templates["server"]
        container = server["spec"]["containers"][0]
        args = container["args"]
        self.assertEqual(args[0], "leader" if v["nodes"] > 1 else "serve")
        # The layout: tp x pp x dp = the world; ranks per pod = GPUs per pod.
        world = v["nodes"] * ranks
        tp, pp, dp = (int(arg(args, f)) for f in ("--tp", "--pp", "--dp"))
        self.assertEqual(tp * pp * dp, world)
        self.assertEqual(env_of(container)["TESSERA_RANKS_PER_NODE"], str(ranks))
        self.assertEqual(arg(args, "--device"), "cuda" if v["gpusPerNode"] else "cpu")
        if v["model"]["path"]:
            self.assertEqual(arg(args, "--model"), v["model"]["path"])
        for role, template in templates.items():
            spec = template["spec"]
            c = spec["containers"][0]
            res = c["resources"]
            # GPUs: requested and limited, one per rank.
            if v["gpusPerNode"]:
                self.assertEqual(res["requests"]["nvidia.com/gpu"], v["gpusPerNode"], role)
                self.assertEqual(res["limits"]["nvidia.com/gpu"], v["gpusPerNode"], role)
            else:
                self.assertNotIn("nvidia.com/gpu", res["limits"])
            # /dev/shm: memory-backed, smaller than the memory limit it counts against.
            shm = next(vol for vol in spec["volumes"] if vol["name"] == "dshm")
            self.assertEqual(shm["emptyDir"]["medium"], "Memory")
            self.assertIn({"name": "dshm", "mountPath": "/dev/shm"}, c["volumeMounts"])
            self.assertGreater(bytes_of(res["limits"]["memory"]),
                               bytes_of(shm["emptyDir"]["sizeLimit"]))
            # Non-root, as the image's USER; every capability dropped but the ones asked for.
            self.assertTrue(spec["securityContext"]["runAsNonRoot"])
            self.assertEqual(spec["securityContext"]["runAsUser"], 10001)
            self.assertTrue(c["securityContext"]["readOnlyRootFilesystem"])
            self.assertEqual(c["securityContext"]["capabilities"]["drop"], ["ALL"])
            self.assertEqual(c["securityContext"]["capabilities"].get("add"),
                             v["securityContext"].get("capabilities", {}).get("add"))
            # The one image value names every container's image.
            self.assertEqual(c["image"], v["image"]["ref"], role)
            # Extra volumes reach every pod, and tessera's container mounts them.
            for vol in v["extraVolumes"]:
                self.assertIn(vol, spec["volumes"], role)
            for mount in v["extraVolumeMounts"]:
                self.assertIn(mount, c["volumeMounts"], role)
            self.assertIn({"name": "tmp", "mountPath": "/tmp"}, c["volumeMounts"])
            # Every pod of a group waits for the drain: the grace period covers preStop + drain.
            pre_stop = int(c.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get(
                "command", ["sleep", "0"])[1]) if role == "server" else 0
            self.assertGreaterEqual(spec["terminationGracePeriodSeconds"],
                                    pre_stop + int(arg(args, "--drain-timeout")) + 10, role)
            self.assertEqual(spec["terminationGracePeriodSeconds"],
                             server["spec"]["terminationGracePeriodSeconds"])
            if v["model"]["claimName"]:
                self.assertIn({"name": "models", "mountPath": v["model"]["mountPath"],
                               "readOnly": True}, c["volumeMounts"])
        # Probes: Kubernetes' native gRPC probes on grpc.health.v1 at the server's port, or
        # GET /health on the metrics port for a TLS server (gRPC probes cannot speak TLS).
        port = int(arg(args, "--port"))
        if v["probes"]["kind"] == "grpc":
            self.assertNotIn("--tls-cert", args)
            self.assertEqual(container["readinessProbe"]["grpc"],
                             {"port": port, "service": "tessera.v1.Generation"})
            self.assertEqual(container["livenessProbe"]["grpc"]["port"], port)
            self.assertEqual(container["startupProbe"]["grpc"]["port"], port)
        else:
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                self.assertEqual(container[probe]["httpGet"],
                                 {"path": "/health", "port": "metrics"})
        startup = container["startupProbe"]
        self.assertGreaterEqual(startup["periodSeconds"] * startup["failureThreshold"],
                                v["probes"]["startupSeconds"])
        # Every port the server listens on is the container's and the Service's: gRPC, the
        # OpenAI HTTP API, metrics.
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        self.assertEqual(ports, {"grpc": port, "http": int(arg(args, "--http-port")),
                                 "metrics": int(arg(args, "--metrics-port"))})
        self.assertEqual(ports["http"], v["server"]["httpPort"])
        svc = docs[kinds.index("Service")]
        self.assertEqual([p["targetPort"] for p in svc["spec"]["ports"]],
                         ["grpc", "http", "metrics"])
        self.assertEqual({p["name"]: p["port"] for p in svc["spec"]["ports"]}, ports)
        # Liveness sees a wedged engine: the server turns health NOT_SERVING after the stall
        # timeout, which every rendered server is given.
        self.assertEqual(int(arg(args, "--engine-stall-timeout")),
                         v["server"]["engineStallTimeoutSeconds"])
        self.assertGreater(v["server"]["engineStallTimeoutSeconds"], 0)
        # The Service reaches rank 0's pods only, on ports the container names.
        self.assertLessEqual(svc["spec"]["selector"].items(), server["metadata"]["labels"].items())
        if "worker" in templates:
            self.assertFalse(svc["spec"]["selector"].items() <=
                             templates["worker"]["metadata"]["labels"].items())
        # The PodDisruptionBudget covers every pod of the release.
        pdb = docs[kinds.index("PodDisruptionBudget")]
        for template in templates.values():
            self.assertLessEqual(pdb["spec"]["selector"]["matchLabels"].items(),
                                 template["metadata"]["labels"].items())
        if workload["kind"] == "Deployment":
            self.assertLessEqual(workload["spec"]["selector"]["matchLabels"].items(),
                                 server["metadata"]["labels"].items())
        else:
            self.check_lws(v, workload, container, templates)
        a = v["autoscaling"]
        scaler_kind = {"hpa": "HorizontalPodAutoscaler", "keda": "ScaledObject"}[a["kind"]]
        if a["enabled"]:
            scaler = docs[kinds.index(scaler_kind)]
            target = scaler["spec"]["scaleTargetRef"]
            self.assertEqual((target["apiVersion"], target["kind"], target["name"]),
                             (workload["apiVersion"], workload["kind"],
                              workload["metadata"]["name"]))
            self.assertNotIn("replicas", workload["spec"], "the autoscaler owns the count")
            self.assertEqual(len({"HorizontalPodAutoscaler", "ScaledObject"} & set(kinds)), 1)
            if a["kind"] == "keda":
                trigger = scaler["spec"]["triggers"][0]
                self.assertEqual(trigger["type"], "prometheus")
                # The series carry the instance label because the monitors keep it.
                self.assertIn(f'app_kubernetes_io_instance="{v["name"]}"',
                              trigger["metadata"]["query"])
                self.assertIn("tessera:num_requests_waiting", trigger["metadata"]["query"])
                self.assertEqual(trigger["metadata"]["threshold"], str(a["averageWaiting"]))
        else:
            self.assertNotIn("HorizontalPodAutoscaler", kinds)
            self.assertNotIn("ScaledObject", kinds)
            self.assertEqual(workload["spec"]["replicas"], v["replicas"])
        self.check_monitoring(v, docs, svc, server, container)
        if v["model"]["download"]["enabled"]:
            init = server["spec"]["initContainers"][0]
            self.assertEqual(init["args"], [v["model"]["download"]["repo"], v["model"]["path"],
                                            str(v["model"]["download"]["revision"])])
            self.assertEqual(init["image"], v["model"]["download"]["image"] or
                             v["image"]["ref"].replace("/tessera:", "/tessera-fetch:"))
            self.assertEqual(init["imagePullPolicy"], v["image"]["pullPolicy"])

    def check_monitoring(self, v, docs, svc, server, container):
        m = v["monitoring"]
        kinds = [d["kind"] for d in docs]
        ports = {p["name"] for p in container["ports"]}
        if m["serviceMonitor"]["enabled"]:
            sm = docs[kinds.index("ServiceMonitor")]
            self.assertLessEqual(sm["spec"]["selector"]["matchLabels"].items(),
                                 svc["metadata"]["labels"].items())
            self.assertIn(sm["spec"]["endpoints"][0]["port"],
                          {p["name"] for p in svc["spec"]["ports"]})
            self.assertLessEqual(m["serviceMonitor"]["labels"].items(),
                                 sm["metadata"]["labels"].items())
            self.assertIn("app.kubernetes.io/instance", sm["spec"]["podTargetLabels"])
        else:
            self.assertNotIn("ServiceMonitor", kinds)
        if m["podMonitor"]["enabled"]:
            pm = docs[kinds.index("PodMonitor")]
            self.assertLessEqual(pm["spec"]["selector"]["matchLabels"].items(),
                                 server["metadata"]["labels"].items())
            self.assertIn(pm["spec"]["podMetricsEndpoints"][0]["port"], ports)
            self.assertIn("app.kubernetes.io/instance", pm["spec"]["podTargetLabels"])
        else:
            self.assertNotIn("PodMonitor", kinds)
        if m["dashboard"]["enabled"]:
            cm = docs[kinds.index("ConfigMap")]
            self.assertEqual(cm["metadata"]["labels"][m["dashboard"]["sidecarLabel"]],
                             m["dashboard"]["sidecarLabelValue"])
            with open(os.path.join(SOURCE, "deploy", "monitoring",
                                   "grafana-dashboard.json")) as f:
                self.assertEqual(cm["data"]["tessera.json"], f.read())
        else:
            self.assertNotIn("ConfigMap", kinds)

    def check_lws(self, v, lws, leader, templates):
        t = lws["spec"]["leaderWorkerTemplate"]
        self.assertEqual(t["size"], v["nodes"])
        self.assertEqual(t["restartPolicy"], "RecreateGroupOnPodRestart")
        rolling = lws["spec"]["rolloutStrategy"]["rollingUpdateConfiguration"]
        self.assertFalse(rolling["maxUnavailable"] == 0 and rolling["maxSurge"] == 0,
                         "the LWS webhook refuses maxUnavailable = maxSurge = 0")
        worker = templates["worker"]["spec"]["containers"][0]
        self.assertEqual(worker["args"], ["worker"])
        ssh_port = worker["ports"][0]["containerPort"]
        self.assertEqual(env_of(leader)["TESSERA_SSH_PORT"], str(ssh_port))
        self.assertEqual(env_of(worker)["TESSERA_SSH_PORT"], str(ssh_port))
        self.assertEqual(worker["readinessProbe"]["tcpSocket"]["port"], "ssh")
        for template in templates.values():
            volumes = {vol["name"]: vol for vol in template["spec"]["volumes"]}
            self.assertEqual(volumes["ssh"]["secret"]["secretName"], v["ssh"]["secretName"])
            self.assertIn({"name": "ssh", "mountPath": "/etc/tessera/ssh", "readOnly": True},
                          template["spec"]["containers"][0]["volumeMounts"])
        self.assertNotIn("TESSERA_API_KEY", env_of(worker), "only rank 0 needs the key")


class BadValuesTest(unittest.TestCase):
    def refused(self, *sets, message):
        args = []
        for s in sets:
            args += ["--set", s]
        result = render(*args)
        self.assertEqual(result.returncode, 2, result.stdout[:200])
        self.assertIn(message, result.stderr)

    def test_reasons(self):
        self.refused("modle.path=/x", message="unknown value 'modle'")
        self.refused("server.drainTimeout=5", message="unknown value 'server.drainTimeout'")
        self.refused("gpusPerNode=8", "parallel.tp=3",
                     message="not a multiple of tp 3")
        self.refused("gpusPerNode=8", "parallel.dp=4",
                     message="tp 1 x pp 1 x dp 4 = 4, but the world has 8 ranks")
        self.refused("gpusPerNode=8", "parallel.tp=2", "parallel.ep=4",
                     message="ep 4 must be 1 or tp x dp = 8")
        self.refused("nodes=2", "gpusPerNode=6", "parallel.tp=4",
                     message="a tensor-parallel group would straddle nodes")
        self.refused("shmSize=64Gi", message="must exceed shmSize 64Gi")
        self.refused("nodes=2", "ssh.secretName=", message="needs ssh.secretName")
        self.refused("replicas=2", "model.createClaim=true",
                     "model.claim.accessModes=[ReadWriteOnce]", message="ReadWriteMany")
        self.refused("model.path=/weights/x", message="not under model.mountPath /models")
        self.refused("probes.kind=tcp", message="probes.kind must be grpc or http")
        self.refused("nodes=0", message="nodes must be an integer >= 1")
        self.refused("image.ref=tessera", message="a tag or @sha256 digest is required")
        self.refused("image.tag=0.2.0", message="unknown value 'image.tag'")
        self.refused("image.ref=r.example/tessera@sha256:" + "a" * 64,
                     "model.download.enabled=true",
                     message="pinned by digest: set model.download.image")
        self.refused("extraVolumeMounts=[{name: tls, mountPath: /tls}]",
                     message="mounts volume 'tls', which extraVolumes does not define")
        self.refused("extraVolumes=[{name: tmp, emptyDir: {}}]", message="'tmp' is taken")
        self.refused("podSecurityContext={runAsUser: 0}", message="not root")
        self.refused("hostNetwork=yes please", message="hostNetwork must be true or false")
        self.refused("monitoring.serviceMonitor.enabled=true",
                     "monitoring.podMonitor.enabled=true", message="not both")
        self.refused("autoscaling.kind=vpa", message="autoscaling.kind must be hpa or keda")
        self.refused("server.engineStallTimeoutSeconds=0",
                     message="server.engineStallTimeoutSeconds must be an integer >= 1")
        self.refused("server.httpPort=50051", message="must differ")
        self.refused("server.httpPort=-1", message="server.httpPort must be an integer >= 1")

    def test_http_api_can_be_turned_off(self):
        result = render("--set", "server.httpPort=null")
        self.assertEqual(result.returncode, 0, result.stderr)
        docs = list(yaml.safe_load_all(result.stdout))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(arg(container["args"], "--http-port"), "-1")
        self.assertEqual([p["name"] for p in container["ports"]], ["grpc", "metrics"])
        svc = next(d for d in docs if d["kind"] == "Service")
        self.assertEqual([p["name"] for p in svc["spec"]["ports"]], ["grpc", "metrics"])

    def test_set_and_files_override_in_order(self):
        tmp = tempfile.mkdtemp(prefix="render-")
        self.addCleanup(shutil.rmtree, tmp, True)
        values = os.path.join(tmp, "v.yaml")
        with open(values, "w") as f:
            f.write("image: {ref: 'r.example/tessera:0.9'}\nserver: {drainTimeoutSeconds: 45}\n")
        result = render("-f", values, "--set", "server.drainTimeoutSeconds=50",
                        "--set", "image.ref=r.example/tessera:1.0",
                        "-o", os.path.join(tmp, "out.yaml"))
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(os.path.join(tmp, "out.yaml")) as f:
            docs = list(yaml.safe_load_all(f))
        deployment = next(d for d in docs if d["kind"] == "Deployment")
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(container["image"], "r.example/tessera:1.0")
        self.assertEqual(arg(container["args"], "--drain-timeout"), "50")
        self.assertEqual(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
                         5 + 50 + 20)

    def test_http_probes_for_tls(self):
        result = render("--set", "probes.kind=http", "--set",
                        "server.extraArgs=[--tls-cert,/tls/tls.crt,--tls-key,/tls/tls.key]")
        self.assertEqual(result.returncode, 0, result.stderr)
        deployment = next(d for d in yaml.safe_load_all(result.stdout)
                          if d["kind"] == "Deployment")
        c = deployment["spec"]["template"]["spec"]["containers"][0]
        self.assertEqual(c["readinessProbe"]["httpGet"], {"path": "/health", "port": "metrics"})
        self.assertEqual(c["args"][-4:], ["--tls-cert", "/tls/tls.crt", "--tls-key",
                                          "/tls/tls.key"])


class ClusterValuesTest(unittest.TestCase):
    """The values real clusters need, each rendered and validated."""

    def test_one_value_names_every_image(self):
        image = "registry.internal:5000/team/tessera:2.1.0"
        for example in ("1x1.yaml", "2x8-ep16.yaml"):
            docs = rendered_docs("-f", os.path.join(K8S, "examples", example),
                                 "--set", f"image.ref={image}",
                                 "--set", "imagePullSecrets=[regcred]",
                                 "--set", "model.download.enabled=true",
                                 "--set", "model.download.tokenSecret.name=hf")
            images, secrets = set(), []
            for doc in docs:
                for role, template in pod_templates(doc):
                    spec = template["spec"]
                    secrets.append(spec["imagePullSecrets"])
                    images |= {c["image"] for c in spec["containers"] +
                               spec.get("initContainers", [])}
            self.assertEqual(images, {image, "registry.internal:5000/team/tessera-fetch:2.1.0"},
                             example)
            self.assertTrue(secrets and all(s == [{"name": "regcred"}] for s in secrets))
            self.assertEqual(of_kind(docs, "Service")["metadata"]["labels"][
                "app.kubernetes.io/version"], "2.1.0")
        # A digest pins the image; the version label is left out.
        digest = "r.example/tessera@sha256:" + "0" * 64
        docs = rendered_docs("--set", f"image.ref={digest}")
        self.assertEqual(of_kind(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0][
            "image"], digest)
        self.assertNotIn("app.kubernetes.io/version",
                         of_kind(docs, "Service")["metadata"]["labels"])
        # No example pins an image of its own: the one value governs them all.
        for example in examples():
            with open(example) as f:
                self.assertNotIn("image", yaml.safe_load(f), os.path.basename(example))

    def test_rdma_example(self):
        docs = rendered_docs("-f", os.path.join(K8S, "examples", "2x8-ep16.yaml"))
        lws = of_kind(docs, "LeaderWorkerSet")
        for role, template in pod_templates(lws):
            c = template["spec"]["containers"][0]
            self.assertEqual(c["securityContext"]["capabilities"], {"drop": ["ALL"],
                                                                    "add": ["IPC_LOCK"]}, role)
            self.assertEqual(c["resources"]["limits"]["rdma/rdma_shared_device_a"], 1, role)
            self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
        env = env_of(pod_templates(lws)[0][1]["spec"]["containers"][0])
        self.assertEqual(env["NCCL_IB_HCA"], "mlx5")

    def test_host_network_and_security_contexts(self):
        docs = rendered_docs("-f", os.path.join(K8S, "examples", "cpu-smoke-2node.yaml"),
                             "--set", "hostNetwork=true",
                             "--set", "podSecurityContext={supplementalGroups: [44]}",
                             "--set", "securityContext={readOnlyRootFilesystem: false}")
        lws = of_kind(docs, "LeaderWorkerSet")
        for role, template in pod_templates(lws):
            spec = template["spec"]
            self.assertTrue(spec["hostNetwork"], role)
            self.assertEqual(spec["dnsPolicy"], "ClusterFirstWithHostNet", role)
            self.assertEqual(spec["securityContext"]["supplementalGroups"], [44])
            self.assertEqual(spec["securityContext"]["runAsUser"], 10001)
            c = spec["containers"][0]["securityContext"]
            self.assertFalse(c["readOnlyRootFilesystem"])
            self.assertEqual(c["capabilities"], {"drop": ["ALL"]})
        validate(self, lws, "hostNetwork")
        default = rendered_docs()
        self.assertNotIn("hostNetwork", of_kind(default, "Deployment")["spec"]["template"]["spec"])

    def test_extra_env_as_env_vars(self):
        docs = rendered_docs("--set", "extraEnv=[{name: HF_TOKEN, valueFrom: {secretKeyRef: "
                                      "{name: hf, key: token}}}]")
        deployment = of_kind(docs, "Deployment")
        env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        self.assertIn({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf",
                                                                          "key": "token"}}}, env)
        validate(self, deployment, "extraEnv list")

    def test_tls_example_mounts_its_secret_and_probes_over_http(self):
        docs = rendered_docs("-f", os.path.join(K8S, "examples", "cpu-smoke-tls.yaml"))
        spec = of_kind(docs, "Deployment")["spec"]["template"]["spec"]
        c = spec["containers"][0]
        tls = next(vol for vol in spec["volumes"] if vol["name"] == "tls")
        self.assertEqual(tls["secret"]["secretName"], "tessera-tls")
        mount = next(m for m in c["volumeMounts"] if m["name"] == "tls")
        # The flags read the Secret's keys (kubernetes.io/tls: tls.crt, tls.key) at the mount.
        self.assertEqual(arg(c["args"], "--tls-cert"), mount["mountPath"] + "/tls.crt")
        self.assertEqual(arg(c["args"], "--tls-key"), mount["mountPath"] + "/tls.key")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            self.assertEqual(c[probe]["httpGet"], {"path": "/health", "port": "metrics"})
        # tests/deploy/tls_test.py starts the server with these arguments.

    def test_gpu_example_admits_the_gpus_its_comment_names(self):
        path = os.path.join(K8S, "examples", "1x8-tp8.yaml")
        with open(path) as f:
            comment = f.read().split("\nname:")[0]
        self.assertIn("80 GB", comment)
        self.assertIn("141 GB", comment)
        spec = of_kind(rendered_docs("-f", path), "Deployment")["spec"]["template"]["spec"]
        self.assertNotIn("nodeSelector", spec)
        terms = spec["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
        products = terms[0]["matchExpressions"][0]["values"]
        self.assertIn("NVIDIA-H100-80GB-HBM3", products)
        self.assertIn("NVIDIA-H200", products)

    def test_dashboard_config_map(self):
        docs = rendered_docs("--set", "monitoring.dashboard.enabled=true",
                             "--set", "monitoring.dashboard.annotations={grafana_folder: LLM}")
        cm = of_kind(docs, "ConfigMap")
        self.assertEqual(cm["metadata"]["labels"]["grafana_dashboard"], "1")
        self.assertEqual(cm["metadata"]["annotations"], {"grafana_folder": "LLM"})
        dashboard = json.loads(cm["data"]["tessera.json"])
        # Provisioned by the sidecar (no import dialog): the data source must be a variable.
        self.assertNotIn("__inputs", dashboard)
        self.assertIn("datasource", [t["name"] for t in dashboard["templating"]["list"]])
        validate(self, cm, "dashboard ConfigMap")


class SshSecretTest(unittest.TestCase):
    def test_generated_secret(self):
        keygen = shutil.which("ssh-keygen")
        self.assertIsNotNone(keygen, "ssh-keygen missing: run scripts/install-deps.sh")
        result = subprocess.run([os.path.join(K8S, "make-ssh-secret.sh"), "grp-ssh", "prod"],
                                capture_output=True, text=True, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        secret = yaml.safe_load(result.stdout)
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(secret, version, strict=True)
        self.assertEqual(secret["metadata"], {"name": "grp-ssh", "namespace": "prod",
                                              "labels": {"app.kubernetes.io/name": "tessera"}})
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        self.assertEqual(sorted(data), ["authorized_keys", "id_ed25519", "known_hosts",
                                        "ssh_host_ed25519_key"])
        tmp = tempfile.mkdtemp(prefix="ssh-secret-")
        self.addCleanup(shutil.rmtree, tmp, True)

        def public_half(private):
            path = os.path.join(tmp, "key")
            with open(path, "w") as f:
                f.write(private)
            os.chmod(path, 0o600)
            return subprocess.run([keygen, "-y", "-f", path], capture_output=True, text=True,
                                  check=True).stdout.split()[:2]
        # The workers accept the leader's key; the leader trusts the workers' host key on any
        # host name (and port).
        self.assertEqual(data["authorized_keys"].split()[:2], public_half(data["id_ed25519"]))
        self.assertEqual(data["known_hosts"].split(),
                         ["*"] + public_half(data["ssh_host_ed25519_key"]))
        self.assertNotEqual(data["id_ed25519"], data["ssh_host_ed25519_key"])


class LintTest(unittest.TestCase):
    def test_yamllint(self):
        yamllint = os.path.join(os.path.dirname(sys.executable), "yamllint")
        config = ("{extends: default, rules: {line-length: {max: 100}, "
                  "document-start: disable}}")
        result = subprocess.run([yamllint, "--strict", "-d", config,
                                 os.path.join(K8S, "values.yaml"), os.path.join(K8S, "examples"),
                                 os.path.join(SOURCE, "deploy", "monitoring")],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        # Generated output: the dashboard's JSON lines stay as they are in its ConfigMap.
        result = subprocess.run([yamllint, "--strict", "-d", config.replace(
            "{max: 100}", "disable"), os.path.join(K8S, "rendered")],
            capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


if __name__ == "__main__":
    SOURCE = os.path.abspath(sys.argv.pop(1))
    K8S = os.path.join(SOURCE, "deploy", "k8s")
    unittest.main(verbosity=2)
