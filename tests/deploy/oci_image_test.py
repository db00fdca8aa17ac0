"""The container image, built for real and started: deploy/build-image.sh turns this build into an
OCI archive (Debian 12 from Debian packages, CUDA libraries from the toolkit when the build uses
them, /opt/tessera from deploy/install-tree.sh), then

- the archive is a well-formed OCI image layout whose configuration is the Dockerfile's runtime
  stage (user, entrypoint, command, working directory, ports, environment);
- its /opt/tessera holds exactly the files the Dockerfile's build stage installs (the same
  install-tree.sh command on the same build), and its root filesystem every package the
  Dockerfile's runtime stage installs, set up by the same image-setup.sh;
- the CPU demo runs inside it: the image's own entrypoint starts two ranks of the image's own
  tessera as uid 10001, and the image's tessera client gets SERVING and a streamed chat reply;
  SIGTERM drains it and the entrypoint exits 0.

Containers cannot start on CI's machine (podman's runtime fails to set resource limits there), so
the image runs as a chroot in a private mount namespace with /proc, /sys and /dev mounted, which
is what a container runtime provides to the process, minus isolation. Needs root, mmdebstrap,
umoci (scripts/install-deps.sh) and a Debian mirror; exits 77 (skipped) only when not root.

    python3 oci_image_test.py SOURCE_DIR BUILD_DIR TESSERA_BINARY
"""

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import unittest

SOURCE = None
BUILD = None
TESSERA = None
IMAGE = "localhost/tessera:ci"
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def runtime_stage():
    """[(instruction, arguments)] of the Dockerfile's runtime stage, continuation lines joined."""
    out, pending, stage = [], "", None
    with open(os.path.join(SOURCE, "deploy", "Dockerfile")) as f:
        for line in f.read().splitlines():
            if line.lstrip().startswith("#") and not pending:
                continue
            pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
            if line.endswith("\\"):
                continue
            if pending:
                word, _, rest = pending.partition(" ")
                if word.upper() == "FROM":
                    stage = rest.split()[-1]
                elif stage == "runtime":
                    out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def tree(root):
    """{relative path: (mode, sha256 or link target)} of every file under root."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                value = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    value = hashlib.sha256(f.read()).hexdigest()
            out[os.path.relpath(path, root)] = (oct(st.st_mode & 0o7777), value)
    return out


class ImageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="oci-image-")
        cls.archive = os.path.join(cls.tmp, "tessera.oci.tar")
        start = time.monotonic()
        result = subprocess.run(
            [os.path.join(SOURCE, "deploy", "build-image.sh"), "--build", BUILD,
             "--out", cls.archive], env=dict(os.environ, IMAGE=IMAGE, TMPDIR=cls.tmp),
            capture_output=True, text=True, timeout=1500)
        cls.build_seconds = time.monotonic() - start
        sys.stderr.write(result.stderr[-3000:])
        if result.returncode != 0:
            raise AssertionError(f"build-image.sh exited {result.returncode}")
        # The OCI layout, unpacked by umoci into a runtime bundle (rootfs/ + config.json).
        cls.layout = os.path.join(cls.tmp, "layout")
        os.mkdir(cls.layout)
        subprocess.run(["tar", "-xf", cls.archive, "-C", cls.layout], check=True)
        cls.bundle = os.path.join(cls.tmp, "bundle")
        subprocess.run(["umoci", "unpack", "--image", f"{cls.layout}:{IMAGE}", cls.bundle],
                       check=True, capture_output=True)
        cls.root = os.path.join(cls.bundle, "rootfs")

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, True)

    def blob(self, descriptor):
        algorithm, digest = descriptor["digest"].split(":")
        with open(os.path.join(self.layout, "blobs", algorithm, digest), "rb") as f:
            data = f.read()
        self.assertEqual(hashlib.sha256(data).hexdigest(), digest)
        self.assertEqual(len(data), descriptor["size"])
        return data

    def image_config(self):
        """The configuration, after checking every blob's digest and size (once)."""
        if not hasattr(ImageTest, "config"):
            ImageTest.config = self.read_image_config()
        return ImageTest.config

    def read_image_config(self):
        with open(os.path.join(self.layout, "index.json")) as f:
            index = json.load(f)
        [entry] = index["manifests"]
        # The full name, so `podman load` and `skopeo copy oci-archive:FILE:NAME` use it.
        self.assertEqual(entry["annotations"]["org.opencontainers.image.ref.name"], IMAGE)
        manifest = json.loads(self.blob(entry))
        self.assertEqual(manifest["config"]["mediaType"],
                         "application/vnd.oci.image.config.v1+json")
        self.assertEqual(len(manifest["layers"]), 2, "Debian + tessera, /opt/tessera on top")
        for layer in manifest["layers"]:
            self.blob(layer)
        return json.loads(self.blob(manifest["config"]))

    def test_build_time(self):
        sys.stderr.write(f"image built in {self.build_seconds:.0f} s, "
                         f"{os.path.getsize(self.archive) / 2**20:.0f} MiB\n")

    def test_configuration_is_the_dockerfiles(self):
        config = self.image_config()
        self.assertEqual((config["os"], config["architecture"]), ("linux", "amd64"))
        c = config["config"]
        stage = runtime_stage()
        expected = {word: rest for word, rest in stage if word in
                    ("USER", "WORKDIR", "ENTRYPOINT", "CMD", "EXPOSE")}
        self.assertEqual(c["User"], expected["USER"])
        self.assertEqual(c["WorkingDir"], expected["WORKDIR"])
        self.assertEqual(c["Entrypoint"], json.loads(expected["ENTRYPOINT"]))
        self.assertEqual(c["Cmd"], json.loads(expected["CMD"]))
        self.assertEqual(set(c["ExposedPorts"]), {f"{p}/tcp" for p in expected["EXPOSE"].split()})
        env = dict(e.split("=", 1) for e in c["Env"])
        for word, rest in stage:
            if word == "ENV":
                for pair in shlex.split(rest):
                    name, value = pair.split("=", 1)
                    self.assertEqual(env[name], value.replace("${PATH}", DEBIAN_PATH), name)
        self.assertEqual(config["config"]["Labels"]["org.opencontainers.image.ref.name"], IMAGE)

    def test_same_files_as_the_dockerfile(self):
        # The Dockerfile's build stage runs this command (tests/deploy/image_test.py checks).
        prefix = os.path.join(self.tmp, "dockerfile-tree")
        subprocess.run([os.path.join(SOURCE, "deploy", "install-tree.sh"), BUILD, prefix],
                       check=True, capture_output=True)
        image_tree = tree(os.path.join(self.root, "opt", "tessera"))
        self.assertEqual(image_tree, tree(prefix))
        for path in ("bin/tessera", "bin/tessera-entrypoint", "libexec/tessera/image-setup.sh",
                     "share/tessera/image-packages.txt",
                     "share/tessera/qwen3-tokenizer/tokenizer.json"):
            self.assertIn(path, image_tree)

    def test_packages_and_setup(self):
        with open(os.path.join(self.root, "opt/tessera/share/tessera/image-packages.txt")) as f:
            packages = f.read().split()
        self.assertLessEqual({"openmpi-bin", "openssh-server", "libgrpc++1.51"}, set(packages))
        status = subprocess.run(["dpkg-query", "--admindir",
                                 os.path.join(self.root, "var/lib/dpkg"),
                                 "-W", "-f", "${Package} ${db:Status-Abbrev}\n"] + packages,
                                capture_output=True, text=True)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertTrue(all(line.split()[1] == "ii" for line in status.stdout.splitlines()),
                        status.stdout)
        with open(os.path.join(self.root, "etc/passwd")) as f:
            self.assertIn("tessera:x:10001:10001:", f.read())
        self.assertTrue(os.path.isdir(os.path.join(self.root, "run/sshd")))
        self.assertEqual([f for f in os.listdir(os.path.join(self.root, "etc/ssh"))
                          if f.startswith("ssh_host_")], [])
        # CUDA libraries: exactly those tessera links, from the toolkit.
        needed = subprocess.run(["readelf", "-d", TESSERA],
                                capture_output=True, text=True).stdout
        cuda_dir = os.path.join(self.root, "usr/local/cuda/lib64")
        for lib in ("libcudart.so", "libcublasLt.so", "libnccl.so"):
            if f"[{lib}." in needed:
                self.assertTrue(any(f.startswith(lib) for f in os.listdir(cuda_dir)), lib)

    def in_image(self, scratch, *command, **kwargs):
        """Runs command in the image as uid 10001 with the image's environment: a chroot into
        the unpacked root filesystem in a private mount namespace, /tmp on scratch (so this side
        sees the port file). The process keeps its pid through unshare, sh and chroot, so
        signals sent to it reach the command."""
        env = dict(e.split("=", 1) for e in self.image_config()["config"]["Env"])
        env.update(HOME="/home/tessera", OMP_NUM_THREADS="1")
        r = shlex.quote(self.root)
        setup = "; ".join([
            "set -e", "mount --make-rprivate /",
            f"mount --rbind /dev {r}/dev", f"mount -t tmpfs -o size=512m shm {r}/dev/shm",
            f"mount -t proc proc {r}/proc", f"mount --rbind /sys {r}/sys",
            f"mount --bind {shlex.quote(scratch)} {r}/tmp",
            f'exec chroot --userspec=10001:10001 {r} env -i "$@"'])
        argv = ["unshare", "--mount", "sh", "-c", setup, "sh"]
        argv += [f"{k}={v}" for k, v in env.items()] + list(command)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, **kwargs)

    def test_demo_runs_inside(self):
        scratch = tempfile.mkdtemp(prefix="scratch-", dir=self.tmp)
        os.chmod(scratch, 0o1777)
        server = self.in_image(scratch, "TESSERA_RANKS_PER_NODE=2",
                               "TESSERA_MPIRUN_ARGS=--oversubscribe",
                               "/opt/tessera/bin/tessera-entrypoint", "serve", "--device", "cpu",
                               "--host", "127.0.0.1", "--port", "0", "--metrics-port", "0",
                               "--http-port", "0",
                               "--drain-timeout", "30")
        try:
            port_file = os.path.join(scratch, "tessera", "port")
            deadline = time.monotonic() + 300
            while not (os.path.exists(port_file) and os.path.getsize(port_file)):
                self.assertIsNone(server.poll(), server.stdout.read() if server.poll() is not None
                                  else "")
                self.assertLess(time.monotonic(), deadline, "no port file after 300 s")
                time.sleep(0.2)
            time.sleep(0.2)  # the line is written whole, but let the writer finish
            with open(port_file) as f:
                port = f.read().split()[0]

            def client(*args):
                p = self.in_image(scratch, "/opt/tessera/bin/tessera", "client", "--address",
                                  f"127.0.0.1:{port}", *args)
                out, _ = p.communicate(timeout=120)
                self.assertEqual(p.returncode, 0, out)
                return out
            self.assertIn("SERVING", client("health"))
            out = client("chat", "--user", "Write a haiku about containers.", "--no-thinking",
                         "--max-tokens", "16", "--seed", "1", "--json")
            reply = json.loads(next(line for line in reversed(out.splitlines())
                                    if line.startswith("{")))
            self.assertTrue(reply["token_ids"], out)
            sys.stderr.write(f"reply from inside the image: {reply['text'][:200]!r} "
                             f"({len(reply['token_ids'])} tokens)\n")
            server.send_signal(15)
            out, _ = server.communicate(timeout=120)
            self.assertEqual(server.returncode, 0, out[-3000:])
            self.assertIn("draining rank 0", out)
        finally:
            if server.poll() is None:
                server.kill()
                server.communicate()


if __name__ == "__main__":
    SOURCE = os.path.abspath(sys.argv.pop(1))
    BUILD = os.path.abspath(sys.argv.pop(1))
    TESSERA = os.path.abspath(sys.argv.pop(1))
    if os.geteuid() != 0:
        print("skipped: building the image needs root (mmdebstrap's root mode, chroot)")
        sys.exit(77)
    unittest.main(verbosity=2)
