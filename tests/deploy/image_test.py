"""Checks of the container image's recipe that need no Docker (this CI has none):

- deploy/Dockerfile passes hadolint and has the promised shape (CUDA devel -> CUDA runtime, the
  README's build steps, non-root, the entrypoint);
- .dockerignore keeps every file the build reads (Dockerfile COPY sources, CMake sources, install
  rules) and leaves the rest out;
- deploy/runtime-packages.sh, which picks the runtime stage's packages, resolves every library the
  real tessera binary links, and fails loudly on one it cannot place;
- deploy/fetch-model.sh (the Hugging Face init container) downloads once, with a stand-in `hf`;
- shellcheck on every deploy script.

    python3 image_test.py SOURCE_DIR TESSERA_BINARY
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import unittest

SOURCE = None
TESSERA = None
TOOLS = os.path.dirname(os.path.abspath(sys.executable))  # hadolint, shellcheck: pip-installed


def tool(name):
    path = os.path.join(TOOLS, name)
    return path if os.path.exists(path) else shutil.which(name)


def read(path):
    with open(os.path.join(SOURCE, path)) as f:
        return f.read()


def dockerfile_instructions():
    """[(instruction, arguments)] with continuation lines joined and comments dropped."""
    out, pending = [], ""
    for line in read("deploy/Dockerfile").splitlines():
        if line.lstrip().startswith("#") and not pending:
            continue
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if line.endswith("\\"):
            continue
        if pending:
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages():
    """{stage name: [(instruction, arguments)]}, in order."""
    result, current = {}, None
    for word, rest in dockerfile_instructions():
        if word == "FROM":
            current = rest.split()[-1]
            result[current] = [(word, rest)]
        elif current:
            result[current].append((word, rest))
    return result


class DockerfileTest(unittest.TestCase):
    def test_hadolint(self):
        hadolint = tool("hadolint")
        self.assertIsNotNone(hadolint, "hadolint missing: run scripts/install-test-deps.sh")
        result = subprocess.run([hadolint, "--failure-threshold", "info",
                                 os.path.join(SOURCE, "deploy/Dockerfile")],
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_stages(self):
        s = stages()
        self.assertEqual(list(s), ["build", "model-fetch", "runtime"],
                         "runtime must be the last stage: docker build's default target")
        self.assertRegex(s["build"][0][1], r"^nvidia/cuda:\$\{CUDA_VERSION\}-devel-\$\{BASE_OS\}")
        self.assertRegex(s["runtime"][0][1],
                         r"^nvidia/cuda:\$\{CUDA_VERSION\}-runtime-\$\{BASE_OS\}")

    def test_build_stage_runs_the_readme_steps(self):
        runs = " ".join(rest for word, rest in stages()["build"] if word == "RUN")
        self.assertIn("./scripts/install-deps.sh", runs)
        self.assertIn("./scripts/install-deps.sh", read("README.md"))
        self.assertRegex(runs, r"cmake -S \. -B build -G Ninja -DTESSERA_CUDA=ON")
        self.assertIn("cmake --build build", runs)
        # The same script deploy/build-image.sh runs: both images get the same /opt/tessera.
        self.assertIn("deploy/install-tree.sh build /opt/tessera", runs)
        self.assertIn('"$here/install-tree.sh" "$build" "$work/tree/opt/tessera"',
                      read("deploy/build-image.sh"))

    def test_runtime_stage_is_non_root_and_uses_the_entrypoint(self):
        runtime = stages()["runtime"]
        users = [rest for word, rest in runtime if word == "USER"]
        self.assertEqual(users, ["10001"], "numeric, so runAsNonRoot can verify it")
        entrypoint = [rest for word, rest in runtime if word == "ENTRYPOINT"]
        self.assertEqual(entrypoint, ['["/opt/tessera/bin/tessera-entrypoint"]'])
        runs = " ".join(rest for word, rest in runtime if word == "RUN")
        for step in ("xargs -a /opt/tessera/share/tessera/image-packages.txt",
                     "/opt/tessera/libexec/tessera/image-setup.sh"):
            self.assertIn(step, runs)
        self.assertIn("image-setup.sh", read("deploy/build-image.sh"))
        self.assertIn("rm -rf /var/lib/apt/lists/*", runs)
        copies = [rest for word, rest in runtime if word == "COPY"]
        self.assertEqual(copies, ["--from=build /opt/tessera /opt/tessera"],
                         "the runtime stage takes only the install tree from the build")

    def test_install_rules_give_the_image_its_files(self):
        build = tempfile.mkdtemp(prefix="image-install-")
        self.addCleanup(shutil.rmtree, build, True)
        # The installed tree the build stage copies: bin/tessera and the tokenizer files.
        result = subprocess.run(
            ["cmake", "--install", os.path.dirname(TESSERA), "--prefix", build],
            capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        for path in ("bin/tessera", "share/tessera/qwen3-tokenizer/tokenizer.json",
                     "share/tessera/qwen3-tokenizer/tokenizer_config.json"):
            self.assertTrue(os.path.exists(os.path.join(build, path)), path)
        # The installed binary finds its data beside itself: the embedded model it writes on
        # first use is the one with Qwen3's tokenizer (tiny-qwen3-*-tok).
        cache = os.path.join(build, "cache")
        result = subprocess.run(
            [os.path.join(build, "bin/tessera"), "run", "--prompt-ids", "151644,872,198",
             "--max-new-tokens", "2", "--json"],
            capture_output=True, text=True, timeout=120,
            env=dict(os.environ, XDG_CACHE_HOME=cache, OMP_NUM_THREADS="1"))
        self.assertEqual(result.returncode, 0, result.stderr)
        models = os.listdir(os.path.join(cache, "tessera"))
        self.assertTrue(models and all(m.endswith("-tok") for m in models), models)


def docker_ignored(patterns, path):
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parent
    directories decides; `!` re-includes; `*` stays within a path element, `**` spans any."""
    def to_regex(pattern):
        out, i = "", 0
        while i < len(pattern):
            if pattern.startswith("**", i):
                out += ".*"
                i += 2
                if pattern.startswith("/", i):
                    out, i = out[:-2] + "(?:.*/)?", i + 1
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return re.compile(out + r"\Z")

    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        regex = to_regex(pattern.lstrip("!").strip("/"))
        if any(regex.match(p) for p in prefixes):
            ignored = not negate
    return ignored


class DockerignoreTest(unittest.TestCase):
    def setUp(self):
        self.patterns = [line.strip() for line in read(".dockerignore").splitlines()
                         if line.strip() and not line.startswith("#")]
        self.tracked = subprocess.run(["git", "-C", SOURCE, "ls-files"], capture_output=True,
                                      text=True, check=True).stdout.split()

    def test_matcher(self):
        self.assertTrue(docker_ignored(["**", "!a"], "b/c"))
        self.assertFalse(docker_ignored(["**", "!a"], "a/b/c"))
        self.assertTrue(docker_ignored(["**", "!a", "**/*.pyc"], "a/x.pyc"))
        self.assertTrue(docker_ignored(["build*"], "build-fuzz/x"))

    def test_what_the_build_reads_is_in_the_context(self):
        needed = []
        for word, rest in dockerfile_instructions():
            if word == "COPY" and not rest.startswith("--from"):
                needed += rest.split()[:-1]
        needed.remove(".")  # COPY . . : the sources below
        # The CMake project: every directory add_subdirectory'd outside tests, every include().
        cmake = read("CMakeLists.txt")
        dirs = [d for d in re.findall(r"add_subdirectory\((\w+)\)", cmake) if d != "tests"]
        dirs += [os.path.dirname(f) for f in re.findall(r"include\(([\w/]+\.cmake)\)", cmake)]
        for d in dirs:
            needed += [f for f in self.tracked if f.startswith(d + "/")]
        needed.append("CMakeLists.txt")
        # Files the CMake install and configure rules read from outside those directories.
        for text in (read(f) for f in self.tracked if f.endswith("CMakeLists.txt")
                     and not f.startswith("tests/")):
            needed += re.findall(r"\$\{PROJECT_SOURCE_DIR\}/([\w./-]+\.json)", text)
        needed += ["deploy/entrypoint.sh", "deploy/runtime-packages.sh", "deploy/image-setup.sh"]
        needed += re.findall(r"deploy/[\w-]+\.sh", " ".join(
            rest for word, rest in dockerfile_instructions() if word == "RUN"))
        for path in needed:
            self.assertTrue(os.path.exists(os.path.join(SOURCE, path)), path)
            self.assertFalse(docker_ignored(self.patterns, path), path + " is left out")

    def test_the_rest_stays_out(self):
        for path in (".git/HEAD", "build/tessera", "build-fuzz/x", "docs/deploy.md",
                     "tests/golden/fixtures/x", "deploy/k8s/values.yaml",
                     "runtime/__pycache__/x.pyc"):
            self.assertTrue(docker_ignored(self.patterns, path), path + " is in the context")


class RuntimePackagesTest(unittest.TestCase):
    script = None

    def setUp(self):
        self.script = os.path.join(SOURCE, "deploy/runtime-packages.sh")

    def test_every_library_of_tessera_has_an_installed_package(self):
        result = subprocess.run([self.script, TESSERA], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        packages = result.stdout.split()
        self.assertEqual(packages, sorted(set(packages)))
        for expected in ("libopenmpi3", "libgrpc++1.51", "libprotobuf32", "libicu72"):
            self.assertIn(expected, packages)  # Debian 12 names; the image computes its own
        status = subprocess.run(["dpkg-query", "-W", "-f", "${db:Status-Abbrev}\n"] + packages,
                                capture_output=True, text=True)
        self.assertEqual(status.returncode, 0, status.stderr)
        self.assertTrue(all(s.startswith("ii") for s in status.stdout.split("\n") if s))
        # Every directly linked library is accounted for.
        needed = re.findall(r"\(NEEDED\).*\[(.*)\]",
                            subprocess.run(["readelf", "-d", TESSERA], capture_output=True,
                                           text=True).stdout)
        self.assertGreater(len(needed), 5)

    def program_linking(self, soname):
        """A program linked against a library of our own with `soname`, both in a fresh
        directory (the program finds it by rpath). Returns (directory, program)."""
        tmp = tempfile.mkdtemp(prefix="runtime-packages-")
        self.addCleanup(shutil.rmtree, tmp, True)
        with open(os.path.join(tmp, "lib.c"), "w") as f:
            f.write("int library_function(void) { return 1; }\n")
        with open(os.path.join(tmp, "main.c"), "w") as f:
            f.write("int library_function(void);\nint main(void) { return library_function(); }\n")
        subprocess.run(["cc", "-shared", "-fPIC", f"-Wl,-soname,{soname}", "-o", f"{tmp}/{soname}",
                        f"{tmp}/lib.c"], check=True)
        link_name = soname[:soname.index(".so") + 3]  # libfoo.so.N -> libfoo.so, for -l
        if link_name != soname:
            os.symlink(soname, f"{tmp}/{link_name}")
        subprocess.run(["cc", "-o", f"{tmp}/main", f"{tmp}/main.c", f"-L{tmp}",
                        f"-l{link_name[3:-3]}", f"-Wl,-rpath,{tmp}"], check=True)
        return tmp, f"{tmp}/main"

    def test_a_library_no_package_owns_is_an_error(self):
        tmp, main = self.program_linking("libprivate.so")
        result = subprocess.run([self.script, main], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn(f"{tmp}/libprivate.so, which no package owns", result.stderr)
        os.remove(f"{tmp}/libprivate.so")
        result = subprocess.run([self.script, main], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("needs libprivate.so, which does not resolve", result.stderr)

    def test_cuda_libraries_of_the_base_image_need_no_package_but_must_resolve(self):
        # A toolkit from NVIDIA's tarball (no package owns it) is what CI machines have; the
        # nvidia/cuda runtime image ships these libraries itself. (A soname no real toolkit has,
        # so that removing it really leaves it unresolved.)
        tmp, main = self.program_linking("libcublas.so.99")
        result = subprocess.run([self.script, main], capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertNotIn("cublas", result.stdout)
        self.assertIn("libc6", result.stdout.split())
        os.remove(f"{tmp}/libcublas.so.99")
        result = subprocess.run([self.script, main], capture_output=True, text=True)
        self.assertEqual(result.returncode, 1)
        self.assertIn("needs libcublas.so.99, which does not resolve", result.stderr)


class FetchModelTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="fetch-model-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.calls = os.path.join(self.tmp, "hf.calls")
        self.hf = os.path.join(self.tmp, "hf")
        self.write_hf("touch \"$dir/config.json\" \"$dir/model.safetensors\"")
        self.dir = os.path.join(self.tmp, "models", "Qwen3-14B")

    def write_hf(self, body):
        with open(self.hf, "w") as f:
            f.write(textwrap.dedent(f"""\
                #!/usr/bin/env bash
                echo "$@" >> {self.calls}
                while [[ $# -gt 0 ]]; do [[ $1 == --local-dir ]] && dir=$2; shift; done
                sleep 0.3
                """) + body + "\n")
        os.chmod(self.hf, 0o755)

    def fetch(self, *args, **env):
        return subprocess.run([os.path.join(SOURCE, "deploy/fetch-model.sh")] + list(args),
                              capture_output=True, text=True, timeout=60,
                              env=dict(os.environ, TESSERA_HF=self.hf, **env))

    def hf_calls(self):
        if not os.path.exists(self.calls):
            return []
        with open(self.calls) as f:
            return f.read().splitlines()

    def test_downloads_once_per_revision(self):
        r = self.fetch("Qwen/Qwen3-14B", self.dir, "abc123",
                       TESSERA_FETCH_ARGS="--include *.json --include *.safetensors")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(self.hf_calls(), [
            f"download Qwen/Qwen3-14B --revision abc123 --local-dir {self.dir} "
            "--include *.json --include *.safetensors"])
        with open(os.path.join(self.dir, ".tessera-fetched")) as f:
            self.assertEqual(f.read(), "Qwen/Qwen3-14B@abc123\n")
        r = self.fetch("Qwen/Qwen3-14B", self.dir, "abc123")
        self.assertEqual(r.returncode, 0)
        self.assertIn("already holds Qwen/Qwen3-14B@abc123", r.stderr)
        self.assertEqual(len(self.hf_calls()), 1)
        r = self.fetch("Qwen/Qwen3-14B", self.dir, "def456")
        self.assertEqual(r.returncode, 0)
        self.assertEqual(len(self.hf_calls()), 2)

    def test_pods_starting_together_download_once(self):
        results = []
        threads = [threading.Thread(target=lambda: results.append(
            self.fetch("Qwen/Qwen3-14B", self.dir))) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.assertEqual([r.returncode for r in results], [0, 0, 0])
        self.assertEqual(len(self.hf_calls()), 1)

    def test_failures_leave_no_marker(self):
        self.write_hf("exit 7")
        r = self.fetch("Qwen/Qwen3-14B", self.dir)
        self.assertEqual(r.returncode, 7)
        self.assertFalse(os.path.exists(os.path.join(self.dir, ".tessera-fetched")))
        self.write_hf("touch \"$dir/README.md\"")
        r = self.fetch("someone/not-a-model", self.dir)
        self.assertEqual(r.returncode, 1)
        self.assertIn("has no config.json", r.stderr)
        self.assertFalse(os.path.exists(os.path.join(self.dir, ".tessera-fetched")))
        self.assertEqual(self.fetch().returncode, 2)


class ShellcheckTest(unittest.TestCase):
    def test_deploy_scripts(self):  # and the shell tests of tests/deploy
        shellcheck = tool("shellcheck")
        self.assertIsNotNone(shellcheck, "shellcheck missing: run scripts/install-test-deps.sh")
        scripts = sorted(os.path.join(root, f)
                         for top in ("deploy", "tests/deploy")
                         for root, _, files in os.walk(os.path.join(SOURCE, top))
                         for f in files if f.endswith(".sh"))
        self.assertGreaterEqual(len(scripts), 3)
        result = subprocess.run([shellcheck, "--severity=style"] + scripts,
                                capture_output=True, text=True)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)


if __name__ == "__main__":
    SOURCE = os.path.abspath(sys.argv.pop(1))
    TESSERA = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
