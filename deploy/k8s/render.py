#!/usr/bin/env python3
"""Renders tessera's Kubernetes manifests from values (deploy/k8s/values.yaml + overrides).

    deploy/k8s/render.py [-f VALUES.yaml ...] [--set key.path=value ...] [-o OUT.yaml]
    deploy/k8s/render.py -f deploy/k8s/examples/2x8-ep16.yaml \
        --set image.ref=registry.example.com/tessera:0.2.0 \
        | kubectl apply -f -

Why a script and not a Helm chart: Helm is neither a Debian 12 package nor on PyPI, and CI must
render and validate what it ships for real. This is the whole renderer: plain Python building the
objects as data (no text templating, so no quoting or indentation bugs), PyYAML to read values and
write the result. The examples' output is committed under deploy/k8s/rendered/ for reading and
for `kubectl apply -f` without Python; CI checks it is current.

One node renders a Deployment, several a LeaderWorkerSet (leader runs mpirun across the group,
workers run sshd); both get a Service (gRPC, OpenAI HTTP, metrics), a PodDisruptionBudget and
optionally a PersistentVolumeClaim, an autoscaler (HorizontalPodAutoscaler or KEDA
ScaledObject), a ServiceMonitor or PodMonitor, and the Grafana dashboard as a ConfigMap. Values
that cannot work (a parallel layout that does not fit the world, a memory limit smaller than
/dev/shm, ...) are errors here, not at pod start.
"""

import argparse
import copy
import os
import re
import sys

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
DEFAULTS = os.path.join(HERE, "values.yaml")
LWS_API = "leaderworkerset.x-k8s.io/v1"
GRPC_SERVICE = "tessera.v1.Generation"
UID = 10001  # the image's user (deploy/Dockerfile)


class ValuesError(Exception):
    pass


# ---------------------------------------------------------------------------------------------
# Values


def merge(base, override, path=""):
    """Deep-merges override into a copy of base. Keys must exist in base unless base's map is
    empty (free-form)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        where = f"{path}.{key}" if path else key
        if key not in out:
            if base:
                raise ValuesError(f"unknown value '{where}' (see deploy/k8s/values.yaml)")
            out[key] = value
        elif isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where)
        else:
            out[key] = value
    return out


def set_value(values, assignment):
    """--set a.b.c=VALUE, VALUE read as YAML (so numbers and booleans keep their type)."""
    path, sep, raw = assignment.partition("=")
    if not sep:
        raise ValuesError(f"--set {assignment}: expected key.path=value")
    override = node = {}
    keys = path.split(".")
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = yaml.safe_load(raw) if raw else ""
    return merge(values, override)


def load_values(files, assignments):
    with open(DEFAULTS) as f:
        values = yaml.safe_load(f)
    for path in files:
        with open(path) as f:
            values = merge(values, yaml.safe_load(f) or {})
    for assignment in assignments:
        values = set_value(values, assignment)
    return values


QUANTITY = re.compile(r"^([0-9.]+)(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P|)$")
SCALE = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15,
         "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}


def quantity_bytes(where, text):
    m = QUANTITY.match(str(text))
    if not m:
        raise ValuesError(f"{where}: '{text}' is not a Kubernetes quantity like 64Gi")
    return float(m.group(1)) * SCALE[m.group(2)]


def positive(where, value, zero=False):
    if not isinstance(value, int) or isinstance(value, bool) or value < (0 if zero else 1):
        raise ValuesError(f"{where} must be an integer >= {0 if zero else 1}, got {value!r}")


class Layout:
    """The numbers everything else follows, checked once."""

    def __init__(self, v):
        for key in ("nodes", "replicas", "cpuRanksPerNode"):
            positive(key, v[key])
        positive("gpusPerNode", v["gpusPerNode"], zero=True)
        p = v["parallel"]
        for key in ("tp", "pp", "ep"):
            positive(f"parallel.{key}", p[key])
        positive("parallel.dp", p["dp"], zero=True)
        self.nodes = v["nodes"]
        self.gpus = v["gpusPerNode"]
        self.ranks_per_node = self.gpus or v["cpuRanksPerNode"]
        self.world = self.nodes * self.ranks_per_node
        self.multi_node = self.nodes > 1
        tp, pp, ep, dp = p["tp"], p["pp"], p["ep"], p["dp"]
        # The world-size rules of ParallelConfig::Create (parallel/parallel_config.cc); the
        # model-dependent ones (heads, experts) are checked by the server at start.
        if self.world % (tp * pp):
            raise ValuesError(f"the world has {self.world} ranks ({self.nodes} nodes x "
                              f"{self.ranks_per_node}), not a multiple of tp {tp} x pp {pp}")
        dp = dp or self.world // (tp * pp)
        if tp * pp * dp != self.world:
            raise ValuesError(f"tp {tp} x pp {pp} x dp {dp} = {tp * pp * dp}, but the world has "
                              f"{self.world} ranks ({self.nodes} nodes x {self.ranks_per_node})")
        if ep != 1 and ep != tp * dp:
            raise ValuesError(f"ep {ep} must be 1 or tp x dp = {tp * dp}")
        if self.gpus and self.ranks_per_node % tp and tp % self.ranks_per_node:
            raise ValuesError(f"tp {tp} does not line up with {self.ranks_per_node} GPUs per node:"
                              " a tensor-parallel group would straddle nodes unevenly")
        self.tp, self.pp, self.ep, self.dp = tp, pp, ep, dp
        self.device = v["server"]["device"] or ("cuda" if self.gpus else "cpu")


def check(v, layout):
    s = v["server"]
    for key in ("drainTimeoutSeconds", "shutdownMarginSeconds", "grpcPort", "metricsPort",
                "engineStallTimeoutSeconds"):
        positive(f"server.{key}", s[key])
    if s["httpPort"] is not None:
        positive("server.httpPort", s["httpPort"])
    named = [s["grpcPort"], s["metricsPort"]] + ([s["httpPort"]] if s["httpPort"] else [])
    if len(set(named)) != len(named):
        raise ValuesError(f"server.grpcPort, httpPort and metricsPort must differ, got {named}")
    positive("server.preStopSleepSeconds", s["preStopSleepSeconds"], zero=True)
    if v["probes"]["kind"] not in ("grpc", "http"):
        raise ValuesError(f"probes.kind must be grpc or http, got {v['probes']['kind']!r}")
    limit = v["resources"].get("limits", {}).get("memory")
    if limit is None:
        raise ValuesError("resources.limits.memory is required (/dev/shm counts against it)")
    if quantity_bytes("resources.limits.memory", limit) <= quantity_bytes("shmSize",
                                                                          v["shmSize"]):
        raise ValuesError(f"resources.limits.memory {limit} must exceed shmSize {v['shmSize']}: "
                          "the memory-backed /dev/shm counts against the limit")
    m = v["model"]
    if m["path"] and not m["claimName"]:
        raise ValuesError("model.path is set but model.claimName is empty: where are the weights?")
    if m["claimName"] and m["path"] and not (m["path"] + "/").startswith(
            m["mountPath"].rstrip("/") + "/"):
        raise ValuesError(f"model.path {m['path']} is not under model.mountPath {m['mountPath']}")
    if m["download"]["enabled"] and not m["path"]:
        raise ValuesError("model.download.enabled needs model.path (where to put the download)")
    shared = {"ReadWriteMany", "ReadOnlyMany"}
    if m["createClaim"] and (layout.multi_node or v["replicas"] > 1 or
                             v["autoscaling"]["enabled"]):
        if not shared & set(m["claim"]["accessModes"]):
            raise ValuesError("several pods read the weights: model.claim.accessModes needs "
                              "ReadWriteMany or ReadOnlyMany")
    if layout.multi_node and not v["ssh"]["secretName"]:
        raise ValuesError("nodes > 1 needs ssh.secretName (deploy/k8s/make-ssh-secret.sh)")
    builtin = {"dshm", "tmp", "models", "models-rw", "ssh"}
    names = set()
    for vol in v["extraVolumes"]:
        if not isinstance(vol, dict) or not vol.get("name"):
            raise ValuesError(f"extraVolumes: every entry needs a name, got {vol!r}")
        if vol["name"] in builtin | names:
            raise ValuesError(f"extraVolumes: the name '{vol['name']}' is taken")
        names.add(vol["name"])
    for mount in v["extraVolumeMounts"]:
        if not isinstance(mount, dict) or not mount.get("mountPath"):
            raise ValuesError(f"extraVolumeMounts: every entry needs a mountPath, got {mount!r}")
        if mount.get("name") not in names | builtin:
            raise ValuesError(f"extraVolumeMounts: {mount['mountPath']} mounts volume "
                              f"'{mount.get('name')}', which extraVolumes does not define")
    if not isinstance(v["hostNetwork"], bool):
        raise ValuesError(f"hostNetwork must be true or false, got {v['hostNetwork']!r}")
    if v["podSecurityContext"].get("runAsNonRoot") is False or \
            v["podSecurityContext"].get("runAsUser", UID) == 0:
        raise ValuesError("podSecurityContext: the image runs as uid 10001, not root "
                          "(mpirun refuses root)")
    a = v["autoscaling"]
    if a["kind"] not in ("hpa", "keda"):
        raise ValuesError(f"autoscaling.kind must be hpa or keda, got {a['kind']!r}")
    m = v["monitoring"]
    if m["serviceMonitor"]["enabled"] and m["podMonitor"]["enabled"]:
        raise ValuesError("monitoring: enable serviceMonitor or podMonitor, not both (rank 0 "
                          "would be scraped twice)")
    if a["enabled"] and not 1 <= a["minReplicas"] <= a["maxReplicas"]:
        raise ValuesError("autoscaling needs 1 <= minReplicas <= maxReplicas")


# ---------------------------------------------------------------------------------------------
# Objects


def labels(v, component=None):
    out = {"app.kubernetes.io/name": "tessera", "app.kubernetes.io/instance": v["name"]}
    if component:
        out["app.kubernetes.io/component"] = component
    return out


def metadata(v, name=None, component=None, annotations=None):
    md = {"name": name or v["name"]}
    if v["namespace"]:
        md["namespace"] = v["namespace"]
    md["labels"] = labels(v, component)
    _, tag, _ = parse_image("image.ref", v["image"]["ref"])
    if re.match(r"^[A-Za-z0-9]([-\w.]{0,61}[A-Za-z0-9])?$", tag):
        md["labels"]["app.kubernetes.io/version"] = tag
    md["labels"]["app.kubernetes.io/managed-by"] = "tessera-render"
    if annotations:
        md["annotations"] = annotations
    return md


def grace_seconds(v):
    s = v["server"]
    return s["preStopSleepSeconds"] + s["drainTimeoutSeconds"] + s["shutdownMarginSeconds"]


def serve_args(v, layout):
    s = v["server"]
    args = ["--host", "0.0.0.0", "--port", str(s["grpcPort"]),
            "--http-port", str(s["httpPort"] if s["httpPort"] is not None else -1),
            "--metrics-port", str(s["metricsPort"]),
            "--drain-timeout", str(s["drainTimeoutSeconds"]),
            "--engine-stall-timeout", str(s["engineStallTimeoutSeconds"]),
            "--device", layout.device,
            "--tp", str(layout.tp), "--pp", str(layout.pp), "--ep", str(layout.ep),
            "--dp", str(layout.dp)]
    if v["model"]["path"]:
        args += ["--model", v["model"]["path"]]
    for key, flag in (("maxNumSeqs", "--max-num-seqs"),
                      ("maxNumBatchedTokens", "--max-num-batched-tokens"),
                      ("kvCacheMemory", "--kv-cache-memory"), ("maxQueue", "--max-queue"),
                      ("blockSize", "--block-size")):
        if s[key] is not None:
            args += [flag, str(s[key])]
    return args + [str(a) for a in s["extraArgs"]]


def env_list(pairs):
    return [{"name": k, "value": str(val)} for k, val in pairs.items()]


def server_env(v, layout):
    env = {"TESSERA_RANKS_PER_NODE": layout.ranks_per_node}
    n = v["nccl"]
    if layout.gpus:
        if n["socketIfname"]:
            env["NCCL_SOCKET_IFNAME"] = n["socketIfname"]
        if n["ibHca"]:
            env["NCCL_IB_HCA"] = n["ibHca"]
        if n["debug"]:
            env["NCCL_DEBUG"] = n["debug"]
        env.update(n["extraEnv"])
    extra = v["extraEnv"]
    if isinstance(extra, dict):
        env.update(extra)
    out = env_list(env)
    if isinstance(extra, list):  # full EnvVar entries, e.g. valueFrom a Secret
        out += copy.deepcopy(extra)
    key = v["server"]["apiKeySecret"]
    if key["name"]:
        out.append({"name": "TESSERA_API_KEY", "valueFrom": {"secretKeyRef": {
            "name": key["name"], "key": key["key"]}}})
    return out


def resources(v, layout):
    r = copy.deepcopy(v["resources"])
    extra = dict(v["extraResources"])
    if layout.gpus:
        extra[v["gpuResourceName"]] = layout.gpus
    for kind in ("requests", "limits"):
        r.setdefault(kind, {})
        for name, amount in extra.items():
            r[kind][name] = amount  # extended resources: requests must equal limits
    return r


def probes(v):
    p, s = v["probes"], v["server"]

    def action(service):
        if p["kind"] == "grpc":
            return {"grpc": {"port": s["grpcPort"], "service": service}}
        return {"httpGet": {"path": "/health", "port": "metrics"}}

    startup_period = 10
    return {
        "startupProbe": dict(action(""), periodSeconds=startup_period, timeoutSeconds=5,
                             failureThreshold=max(1, -(-p["startupSeconds"] // startup_period))),
        # Readiness on the Generation service: NOT_SERVING from the first moment of a drain.
        "readinessProbe": dict(action(GRPC_SERVICE), periodSeconds=p["readinessPeriodSeconds"],
                               timeoutSeconds=5, failureThreshold=2),
        # Kubelet stops liveness probes once a pod terminates, so a drain never trips it; a job
        # whose rank died exits by itself (collective watchdog), so this only catches a wedge.
        "livenessProbe": dict(action(""), periodSeconds=p["livenessPeriodSeconds"],
                              timeoutSeconds=5, failureThreshold=p["livenessFailureThreshold"]),
    }


def deep_merge(base, override):
    """override's maps merge into a copy of base; its lists and scalars replace."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def container_security(v, extra=True):
    """Locked down, plus the values' securityContext on tessera's containers (e.g.
    capabilities.add: [IPC_LOCK] for RDMA, which still drops every other capability)."""
    return deep_merge({"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                       "capabilities": {"drop": ["ALL"]}},
                      v["securityContext"] if extra else {})


def volumes(v, layout, ssh):
    vols = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": v["shmSize"]}},
            {"name": "tmp", "emptyDir": {"sizeLimit": v["tmpSize"]}}]
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}]
    m = v["model"]
    if m["claimName"]:
        vols.append({"name": "models", "persistentVolumeClaim": {"claimName": m["claimName"],
                                                                 "readOnly": True}})
        mounts.append({"name": "models", "mountPath": m["mountPath"], "readOnly": True})
    if ssh:
        vols.append({"name": "ssh", "secret": {"secretName": v["ssh"]["secretName"],
                                               "defaultMode": 0o400}})
        mounts.append({"name": "ssh", "mountPath": "/etc/tessera/ssh", "readOnly": True})
    # The values' own: Secrets (TLS certificates, CA bundles), ConfigMaps (chat templates), ...
    vols += copy.deepcopy(v["extraVolumes"])
    mounts += copy.deepcopy(v["extraVolumeMounts"])
    return vols, mounts


def fetch_init_container(v):
    d, m = v["model"]["download"], v["model"]
    env = [{"name": "HOME", "value": "/tmp"}]
    if d["extraArgs"]:
        env.append({"name": "TESSERA_FETCH_ARGS", "value": d["extraArgs"]})
    if d["tokenSecret"]["name"]:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {
            "name": d["tokenSecret"]["name"], "key": d["tokenSecret"]["key"]}}})
    return {
        "name": "fetch-model",
        "image": fetch_image(v),
        "imagePullPolicy": v["image"]["pullPolicy"],
        "args": [d["repo"], m["path"], str(d["revision"])],
        "env": env,
        "resources": d["resources"],
        "securityContext": container_security(v, extra=False),
        # Writable here, read-only for the server.
        "volumeMounts": [{"name": "models-rw", "mountPath": m["mountPath"]},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }


def pod_spec(v, layout, containers, vols, init=None):
    spec = {
        "terminationGracePeriodSeconds": grace_seconds(v),
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": deep_merge(
            {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
             "seccompProfile": {"type": "RuntimeDefault"}}, v["podSecurityContext"]),
    }
    if v["hostNetwork"]:
        # The node's network namespace (its RDMA interfaces, no overlay); cluster DNS still
        # resolves the group's pod names.
        spec["hostNetwork"] = True
        spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    if v["serviceAccountName"]:
        spec["serviceAccountName"] = v["serviceAccountName"]
    if v["priorityClassName"]:
        spec["priorityClassName"] = v["priorityClassName"]
    if v["imagePullSecrets"]:
        spec["imagePullSecrets"] = [{"name": n} for n in v["imagePullSecrets"]]
    for key in ("nodeSelector", "affinity", "tolerations"):
        if v[key]:
            spec[key] = copy.deepcopy(v[key])
    if init:
        spec["initContainers"] = init
    spec["containers"] = containers
    spec["volumes"] = vols
    return spec


def pod_metadata(v, component, serving):
    md = {"labels": dict(labels(v, component), **v["podLabels"])}
    annotations = dict(v["podAnnotations"])
    if serving and v["prometheusAnnotations"]:
        annotations.update({"prometheus.io/scrape": "true",
                            "prometheus.io/port": str(v["server"]["metricsPort"]),
                            "prometheus.io/path": "/metrics"})
    if annotations:
        md["annotations"] = annotations
    return md


IMAGE_REF = re.compile(r"^(?P<repository>[a-z0-9][a-z0-9._/:-]*?[a-z0-9]|[a-z0-9])"
                       r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")


def parse_image(where, ref):
    """(repository, tag or "", digest or "") of an image reference; a registry host:port may
    precede the repository."""
    m = IMAGE_REF.match(str(ref))
    if not m or not (m.group("tag") or m.group("digest")):
        raise ValuesError(f"{where}: '{ref}' is not an image reference like "
                          "registry.example.com/tessera:0.2.0 (a tag or @sha256 digest is "
                          "required)")
    return m.group("repository"), m.group("tag") or "", m.group("digest") or ""


def image(v):
    return v["image"]["ref"]


def fetch_image(v):
    """model.download.image, or the server image's repository + "-fetch" at the same tag: the
    Dockerfile's model-fetch target, pushed beside the server image."""
    d = v["model"]["download"]
    if d["image"]:
        return d["image"]
    repository, tag, digest = parse_image("image.ref", v["image"]["ref"])
    if not tag or digest:
        raise ValuesError("image.ref is pinned by digest: set model.download.image too")
    return f"{repository}-fetch:{tag}"


def server_pod(v, layout, mode):
    """The pod that runs rank 0: `serve` (one node) or `leader` (LWS)."""
    s = v["server"]
    ssh = mode == "leader"
    vols, mounts = volumes(v, layout, ssh)
    env = server_env(v, layout)
    if ssh:
        env.append({"name": "TESSERA_SSH_PORT", "value": str(v["ssh"]["port"])})
        env.append({"name": "TESSERA_WORKER_WAIT_SECONDS",
                    "value": str(v["ssh"]["workerWaitSeconds"])})
    container = {
        "name": "tessera",
        "image": image(v),
        "imagePullPolicy": v["image"]["pullPolicy"],
        "args": [mode] + serve_args(v, layout),
        "env": env,
        "ports": [{"name": "grpc", "containerPort": s["grpcPort"]}] +
                 ([{"name": "http", "containerPort": s["httpPort"]}] if s["httpPort"] else []) +
                 [{"name": "metrics", "containerPort": s["metricsPort"]}],
    }
    container.update(probes(v))
    if s["preStopSleepSeconds"]:
        container["lifecycle"] = {"preStop": {"exec": {
            "command": ["sleep", str(s["preStopSleepSeconds"])]}}}
    container["resources"] = resources(v, layout)
    container["securityContext"] = container_security(v)
    container["volumeMounts"] = mounts
    init = None
    if v["model"]["download"]["enabled"]:
        vols.append({"name": "models-rw", "persistentVolumeClaim": {
            "claimName": v["model"]["claimName"]}})
        init = [fetch_init_container(v)]
    return {"metadata": pod_metadata(v, "server", True),
            "spec": pod_spec(v, layout, [container], vols, init)}


def worker_pod(v, layout):
    vols, mounts = volumes(v, layout, ssh=True)
    port = v["ssh"]["port"]
    container = {
        "name": "tessera",
        "image": image(v),
        "imagePullPolicy": v["image"]["pullPolicy"],
        "args": ["worker"],
        # Only sshd runs here from the container's environment: the ranks mpirun starts on this
        # pod get theirs from the leader (exported with mpirun -x), like every other setting.
        "env": [{"name": "TESSERA_SSH_PORT", "value": str(port)}],
        "ports": [{"name": "ssh", "containerPort": port}],
        "readinessProbe": {"tcpSocket": {"port": "ssh"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "ssh"}, "periodSeconds": 10,
                          "failureThreshold": 6},
        "resources": resources(v, layout),
        "securityContext": container_security(v),
        "volumeMounts": mounts,
    }
    return {"metadata": pod_metadata(v, "worker", False),
            "spec": pod_spec(v, layout, [container], vols)}


def deployment(v, layout):
    u = v["update"]
    spec = {}
    if not v["autoscaling"]["enabled"]:  # otherwise the autoscaler owns the count
        spec["replicas"] = v["replicas"]
    spec.update({
        "selector": {"matchLabels": labels(v, "server")},
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {
            "maxUnavailable": u["maxUnavailable"], "maxSurge": u["maxSurge"]}},
        "template": server_pod(v, layout, "serve"),
    })
    return {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": metadata(v),
            "spec": spec}


def leader_worker_set(v, layout):
    u = v["update"]
    annotations = None
    if v["lws"]["exclusiveTopology"]:
        annotations = {"leaderworkerset.sigs.k8s.io/exclusive-topology":
                       v["lws"]["exclusiveTopology"]}
    spec = {}
    if not v["autoscaling"]["enabled"]:
        spec["replicas"] = v["replicas"]
    spec.update({
        # Workers start with the leader; the leader waits for their sshd.
        "startupPolicy": "LeaderCreated",
        "rolloutStrategy": {"type": "RollingUpdate", "rollingUpdateConfiguration": {
            "maxUnavailable": u["maxUnavailable"], "maxSurge": u["maxSurge"]}},
        "leaderWorkerTemplate": {
            "size": layout.nodes,
            "restartPolicy": v["lws"]["restartPolicy"],
            "leaderTemplate": server_pod(v, layout, "leader"),
            "workerTemplate": worker_pod(v, layout),
        },
    })
    return {"apiVersion": LWS_API, "kind": "LeaderWorkerSet",
            "metadata": metadata(v, annotations=annotations), "spec": spec}


def service(v):
    s = v["server"]
    spec = {"type": v["service"]["type"]}
    if v["service"]["clusterIP"]:
        spec["clusterIP"] = v["service"]["clusterIP"]
    spec.update({
        # Rank 0's pods only: Deployment pods, or LWS leaders.
        "selector": labels(v, "server"),
        "ports": [{"name": "grpc", "port": s["grpcPort"], "targetPort": "grpc",
                   "appProtocol": "kubernetes.io/h2c"}] +
                 ([{"name": "http", "port": s["httpPort"], "targetPort": "http",
                    "appProtocol": "http"}] if s["httpPort"] else []) +
                 [{"name": "metrics", "port": s["metricsPort"], "targetPort": "metrics",
                   "appProtocol": "http"}],
    })
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": metadata(v, annotations=v["service"]["annotations"] or None),
            "spec": spec}


def disruption_budget(v):
    # Every pod of the release: evicting a worker takes its whole group down too.
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": metadata(v),
            "spec": {"maxUnavailable": v["podDisruptionBudget"]["maxUnavailable"],
                     "selector": {"matchLabels": labels(v)}}}


def claim(v):
    c = v["model"]["claim"]
    spec = {"accessModes": list(c["accessModes"]),
            "resources": {"requests": {"storage": c["size"]}}}
    if c["storageClassName"]:
        spec["storageClassName"] = c["storageClassName"]
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": metadata(v, name=v["model"]["claimName"]), "spec": spec}


def autoscaler(v, layout):
    a = v["autoscaling"]
    target = scale_target(v, layout)
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": metadata(v),
        "spec": {
            # For a LeaderWorkerSet the scale selector picks the leaders: rank 0's metrics.
            "scaleTargetRef": target,
            "minReplicas": a["minReplicas"], "maxReplicas": a["maxReplicas"],
            "metrics": [{"type": "Pods", "pods": {
                "metric": {"name": a["metric"]},
                "target": {"type": "AverageValue", "averageValue": str(a["averageWaiting"])}}}],
            "behavior": scale_behavior(a),
        },
    }


PROMETHEUS_OPERATOR_API = "monitoring.coreos.com/v1"
KEDA_API = "keda.sh/v1alpha1"
DASHBOARD = os.path.join(REPO, "deploy", "monitoring", "grafana-dashboard.json")
# Pod labels that Prometheus keeps on tessera's series (as app_kubernetes_io_instance, ...): the
# dashboard's and the KEDA query's selectors.
TARGET_LABELS = ["app.kubernetes.io/instance", "app.kubernetes.io/component"]


def with_labels(md, extra):
    if extra:
        md["labels"].update(extra)
    return md


def service_monitor(v):
    m = v["monitoring"]["serviceMonitor"]
    return {"apiVersion": PROMETHEUS_OPERATOR_API, "kind": "ServiceMonitor",
            "metadata": with_labels(metadata(v), m["labels"]),
            "spec": {
                # The Service selects rank 0's pods only: the one rank that exports metrics.
                "selector": {"matchLabels": labels(v)},
                "podTargetLabels": list(TARGET_LABELS),
                "endpoints": [{"port": "metrics", "path": "/metrics",
                               "interval": m["interval"]}]}}


def pod_monitor(v):
    m = v["monitoring"]["podMonitor"]
    return {"apiVersion": PROMETHEUS_OPERATOR_API, "kind": "PodMonitor",
            "metadata": with_labels(metadata(v), m["labels"]),
            "spec": {
                "selector": {"matchLabels": labels(v, "server")},
                "podTargetLabels": list(TARGET_LABELS),
                "podMetricsEndpoints": [{"port": "metrics", "path": "/metrics",
                                         "interval": m["interval"]}]}}


def dashboard_config_map(v):
    d = v["monitoring"]["dashboard"]
    md = with_labels(metadata(v, name=f"{v['name']}-dashboard"), d["labels"])
    # The label Grafana's dashboard sidecar watches (kube-prometheus-stack: grafana_dashboard).
    md["labels"][d["sidecarLabel"]] = str(d["sidecarLabelValue"])
    if d["annotations"]:
        md["annotations"] = dict(d["annotations"])
    with open(DASHBOARD) as f:
        text = f.read()
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": md,
            "data": {"tessera.json": text}}


def scale_behavior(a):
    return {
        "scaleUp": {"stabilizationWindowSeconds": 60,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}]},
        # A copy of the model is expensive to start: shed capacity slowly.
        "scaleDown": {"stabilizationWindowSeconds": a["scaleDownStabilizationSeconds"],
                      "policies": [{"type": "Pods", "value": 1, "periodSeconds": 600}]},
    }


def scale_target(v, layout):
    return ({"apiVersion": LWS_API, "kind": "LeaderWorkerSet", "name": v["name"]}
            if layout.multi_node else
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": v["name"]})


def scaled_object(v, layout):
    """KEDA: the same policy as the HorizontalPodAutoscaler, from Prometheus directly (no
    custom-metrics adapter). KEDA creates and owns the HPA."""
    a, k = v["autoscaling"], v["autoscaling"]["keda"]
    selector = f'app_kubernetes_io_instance="{v["name"]}"'
    if v["namespace"]:
        selector = f'namespace="{v["namespace"]}",' + selector
    return {
        "apiVersion": KEDA_API, "kind": "ScaledObject", "metadata": metadata(v),
        "spec": {
            "scaleTargetRef": scale_target(v, layout),
            "pollingInterval": k["pollingIntervalSeconds"],
            "minReplicaCount": a["minReplicas"], "maxReplicaCount": a["maxReplicas"],
            "advanced": {"horizontalPodAutoscalerConfig": {"behavior": scale_behavior(a)}},
            "triggers": [{
                "type": "prometheus",
                # AverageValue: the HPA divides the sum by the number of copies.
                "metricType": "AverageValue",
                "metadata": {"serverAddress": k["prometheusAddress"],
                             "query": f"sum(tessera:num_requests_waiting{{{selector}}})",
                             "threshold": str(a["averageWaiting"])}}],
        },
    }


def render(v):
    layout = Layout(v)
    check(v, layout)
    objects = []
    if v["model"]["createClaim"]:
        objects.append(claim(v))
    objects.append(service(v))
    objects.append(leader_worker_set(v, layout) if layout.multi_node else deployment(v, layout))
    if v["podDisruptionBudget"]["enabled"]:
        objects.append(disruption_budget(v))
    a = v["autoscaling"]
    if a["enabled"]:
        objects.append(autoscaler(v, layout) if a["kind"] == "hpa" else scaled_object(v, layout))
    m = v["monitoring"]
    if m["serviceMonitor"]["enabled"]:
        objects.append(service_monitor(v))
    if m["podMonitor"]["enabled"]:
        objects.append(pod_monitor(v))
    if m["dashboard"]["enabled"]:
        objects.append(dashboard_config_map(v))
    return objects


class Dumper(yaml.SafeDumper):
    """Block style, insertion order, and lists indented under their key (yamllint's default)."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def represent_str(dumper, text):
    # Multi-line text (the dashboard's JSON) as a literal block, readable in the output.
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


Dumper.add_representer(str, represent_str)


def dump(objects, header):
    body = yaml.dump_all(objects, Dumper=Dumper, sort_keys=False, default_flow_style=False,
                         explicit_start=True, width=100)
    return header + body


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-f", "--values", action="append", default=[],
                        help="values file (repeatable; later files win)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="one value, e.g. --set image.ref=REGISTRY/tessera:TAG "
                        "(repeatable; wins over -f)")
    parser.add_argument("-o", "--output", help="write here instead of stdout")
    args = parser.parse_args(argv)
    try:
        values = load_values(args.values, args.set)
        objects = render(values)
    except ValuesError as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 2
    sources = " ".join(["-f " + os.path.relpath(os.path.abspath(f), REPO) for f in args.values] +
                       ["--set " + s for s in args.set])
    header = (f"# Rendered by deploy/k8s/render.py {sources}".rstrip() +
              "\n# Do not edit: change the values and render again.\n")
    text = dump(objects, header)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
