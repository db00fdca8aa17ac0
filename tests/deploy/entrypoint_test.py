"""Unit tests of deploy/entrypoint.sh without a server: how the LeaderWorkerSet environment becomes
the hostfile and the mpirun command (`plan`), the worker's sshd setup and shutdown, and the leader's
wait for its workers. Stand-ins replace sshd and ssh; nothing listens on the network.

    python3 entrypoint_test.py ENTRYPOINT
"""

import os
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import unittest

ENTRYPOINT = None


def run(args, env, timeout=30):
    return subprocess.run([ENTRYPOINT] + args, env=env, capture_output=True, text=True,
                          timeout=timeout)


def base_env(tmp, **extra):
    """A clean environment: PATH only, plus what the test sets."""
    env = {"PATH": os.environ["PATH"], "TESSERA_RUN_DIR": os.path.join(tmp, "run")}
    env.update(extra)
    return env


def parse_plan(stdout):
    """-> (hostfile lines, mpirun argv)."""
    hostfile, argv, section = [], [], None
    for line in stdout.splitlines():
        if line.startswith("# hostfile"):
            section = hostfile
        elif line.startswith("# mpirun"):
            section = argv
        elif section is hostfile:
            hostfile.append(line)
        else:
            argv.extend(shlex.split(line))
    return hostfile, argv


def mca(argv, name):
    for i, arg in enumerate(argv):
        if arg == "--mca" and argv[i + 1] == name:
            return argv[i + 2]
    return None


def write_script(path, body):
    with open(path, "w") as f:
        f.write("#!/usr/bin/env bash\n" + textwrap.dedent(body))
    os.chmod(path, 0o755)


class PlanTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="entrypoint-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.env = base_env(self.tmp, LWS_LEADER_ADDRESS="tessera-2.tessera.prod",
                            LWS_GROUP_SIZE="2", LWS_WORKER_INDEX="0",
                            TESSERA_RANKS_PER_NODE="8")

    def plan(self, *serve_flags, **env):
        e = dict(self.env, **env)
        result = run(["plan"] + list(serve_flags), e)
        self.assertEqual(result.returncode, 0, result.stderr)
        return parse_plan(result.stdout)

    def test_two_nodes_of_eight(self):
        hostfile, argv = self.plan("--tp", "8", "--dp", "2", "--ep", "16")
        local = os.uname().nodename
        # The leader is listed by its own hostname (so mpirun knows it is local), the worker by the
        # name LWS gives its pod: <lws>-<group>-<index>.<subdomain>.<namespace>.
        self.assertEqual(hostfile, [f"{local} slots=8", "tessera-2-1.tessera.prod slots=8"])
        self.assertEqual(argv[0], "mpirun")
        self.assertEqual(argv[argv.index("-np") + 1], "16")
        self.assertEqual(argv[argv.index("--map-by") + 1], "ppr:8:node")
        self.assertEqual(argv[argv.index("--hostfile") + 1],
                         os.path.join(self.tmp, "run", "hostfile"))
        self.assertEqual(mca(argv, "orte_keep_fqdn_hostnames"), "1")
        self.assertEqual(mca(argv, "plm_rsh_no_tree_spawn"), "1")
        self.assertEqual(mca(argv, "plm_rsh_agent"), "ssh")
        self.assertEqual(mca(argv, "plm_rsh_args"),
                         "-F " + os.path.join(self.tmp, "run", "ssh", "ssh_config"))
        serve = argv[argv.index("tessera"):]
        self.assertEqual(serve, ["tessera", "serve", "--tp", "8", "--dp", "2", "--ep", "16",
                                 "--port-file", os.path.join(self.tmp, "run", "port")])

    def test_tessera_is_named_by_absolute_path(self):
        # Ranks on other pods are started through sshd, whose PATH lacks /opt/tessera/bin.
        bin_dir = os.path.join(self.tmp, "bin")
        os.makedirs(bin_dir)
        write_script(os.path.join(bin_dir, "tessera"), "exit 0\n")
        _, argv = self.plan(PATH=bin_dir + ":" + os.environ["PATH"])
        self.assertIn(os.path.join(bin_dir, "tessera"), argv)
        forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
        self.assertIn("PATH", forwarded)

    def test_group_sizes(self):
        for size in (1, 3, 4):
            hostfile, argv = self.plan(LWS_GROUP_SIZE=str(size), TESSERA_RANKS_PER_NODE="4")
            self.assertEqual(len(hostfile), size)
            self.assertEqual(argv[argv.index("-np") + 1], str(4 * size))
            for i, line in enumerate(hostfile[1:], start=1):
                self.assertEqual(line, f"tessera-2-{i}.tessera.prod slots=4")

    def test_leader_address_without_domain(self):
        hostfile, _ = self.plan(LWS_LEADER_ADDRESS="job-0", LWS_GROUP_SIZE="3")
        self.assertEqual(hostfile[1:], ["job-0-1 slots=8", "job-0-2 slots=8"])

    def test_environment_forwarded_to_remote_ranks(self):
        _, argv = self.plan(NCCL_SOCKET_IFNAME="eth0", NCCL_IB_HCA="mlx5", OMP_NUM_THREADS="4",
                            TESSERA_FAULT="x", UNRELATED="1", TESSERA_API_KEY="secret-key",
                            HF_HOME="/models/hf")
        forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
        for name in ("NCCL_SOCKET_IFNAME", "NCCL_IB_HCA", "OMP_NUM_THREADS", "TESSERA_FAULT",
                     "HF_HOME"):
            self.assertIn(name, forwarded)
        self.assertNotIn("UNRELATED", forwarded)
        # The API key goes to the server as a flag and is shown hidden; it is not exported.
        self.assertNotIn("TESSERA_API_KEY", forwarded)
        self.assertEqual(argv[argv.index("--api-key") + 1], "<hidden>")
        self.assertNotIn("secret-key", " ".join(argv))

    def test_forward_prefixes_and_extra_args_are_configurable(self):
        _, argv = self.plan(TESSERA_FORWARD_ENV="MY_", MY_VAR="1", NCCL_DEBUG="INFO",
                            TESSERA_MPIRUN_ARGS="--mca btl_tcp_if_include eth0  --report-bindings")
        forwarded = [argv[i + 1] for i, a in enumerate(argv) if a == "-x"]
        self.assertEqual(forwarded, ["MY_VAR"])
        self.assertEqual(mca(argv, "btl_tcp_if_include"), "eth0")
        self.assertIn("--report-bindings", argv)
        self.assertLess(argv.index("--report-bindings"), argv.index("tessera"))

    def test_callers_port_file_wins(self):
        _, argv = self.plan("--port-file", "/x/p")
        self.assertEqual(argv.count("--port-file"), 1)
        self.assertEqual(argv[argv.index("--port-file") + 1], "/x/p")
        _, argv = self.plan("--port-file=/y/p")
        self.assertNotIn("--port-file", argv)
        self.assertIn("--port-file=/y/p", argv)

    def test_bad_environment_is_refused_with_a_reason(self):
        cases = [
            (dict(LWS_LEADER_ADDRESS=""), "LWS_LEADER_ADDRESS is not set"),
            (dict(LWS_GROUP_SIZE="0"), "LWS_GROUP_SIZE must be a positive integer"),
            (dict(LWS_GROUP_SIZE="two"), "LWS_GROUP_SIZE must be a positive integer"),
            (dict(LWS_WORKER_INDEX="1"), "LWS_WORKER_INDEX must be 0"),
            (dict(TESSERA_RANKS_PER_NODE="0"), "TESSERA_RANKS_PER_NODE must be a positive"),
        ]
        for env, message in cases:
            result = run(["plan"], dict(self.env, **env))
            self.assertEqual(result.returncode, 2, env)
            self.assertIn(message, result.stderr)


class WorkerTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="entrypoint-worker-")
        self.secret = os.path.join(self.tmp, "secret")
        os.makedirs(self.secret)
        for name in ("ssh_host_ed25519_key", "authorized_keys"):
            with open(os.path.join(self.secret, name), "w") as f:
                f.write(name + "\n")
            # A Secret volume with fsGroup is group-readable: the copies must not be.
            os.chmod(os.path.join(self.secret, name), 0o440)
        self.sshd_args = os.path.join(self.tmp, "sshd.args")
        self.fake_sshd = os.path.join(self.tmp, "sshd")
        self.sshd_pid = os.path.join(self.tmp, "sshd.pid")
        write_script(self.fake_sshd, f"""\
            echo $$ > {self.sshd_pid}
            echo "$@" > {self.sshd_args}
            trap 'exit 0' TERM
            while true; do sleep 0.1; done
            """)
        # A stopping worker waits for this pod's ranks, found by process name; on a shared
        # machine "tessera" may be another job's, so the tests name processes of their own.
        self.env = base_env(self.tmp, TESSERA_SSH_SECRET_DIR=self.secret,
                            TESSERA_SSHD=self.fake_sshd, TESSERA_SSH_PORT="2345",
                            LWS_WORKER_INDEX="1",
                            TESSERA_RANK_PROCESSES=f"norank{os.getpid()}"[:15])
        self.ssh_dir = os.path.join(self.tmp, "run", "ssh")

    def tearDown(self):
        try:  # a failed test may leave the stand-in sshd behind
            with open(self.sshd_pid) as f:
                os.kill(int(f.read()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def start(self):
        proc = subprocess.Popen([ENTRYPOINT, "worker"], env=self.env, stderr=subprocess.PIPE,
                                text=True)
        self.addCleanup(proc.stderr.close)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        deadline = time.time() + 20
        while not os.path.exists(self.sshd_args):
            if proc.poll() is not None:
                self.fail("the worker exited: " + proc.stderr.read())
            self.assertLess(time.time(), deadline, "sshd was not started")
            time.sleep(0.05)
        return proc

    def test_sshd_config_and_private_key_copies(self):
        proc = self.start()
        try:
            with open(self.sshd_args) as f:
                args = f.read().split()
            config = os.path.join(self.ssh_dir, "sshd_config")
            self.assertEqual(args, ["-D", "-e", "-f", config])
            with open(config) as f:
                lines = dict(line.split(" ", 1) for line in f.read().splitlines())
            self.assertEqual(lines["Port"], "2345")
            self.assertEqual(lines["PasswordAuthentication"], "no")
            self.assertEqual(lines["HostKey"], os.path.join(self.ssh_dir, "ssh_host_ed25519_key"))
            self.assertEqual(lines["AuthorizedKeysFile"],
                             os.path.join(self.ssh_dir, "authorized_keys"))
            for name in ("ssh_host_ed25519_key", "authorized_keys"):
                mode = stat.S_IMODE(os.stat(os.path.join(self.ssh_dir, name)).st_mode)
                self.assertEqual(mode, 0o600, name)
            self.assertEqual(stat.S_IMODE(os.stat(self.ssh_dir).st_mode), 0o700)
        finally:
            proc.send_signal(signal.SIGTERM)
            self.assertEqual(proc.wait(timeout=20), 0)

    def test_sigterm_waits_for_this_pods_ranks(self):
        # A process with a name of its own stands for a rank the leader's mpirun started here (in
        # a pod the names are tessera and orted; this machine may run other tessera processes).
        name = f"rank{os.getpid()}"[:15]
        rank = os.path.join(self.tmp, name)
        os.symlink("/bin/sleep", rank)
        ranks = subprocess.Popen([rank, "3"])
        self.env["TESSERA_RANK_PROCESSES"] = f"orted-{name} {name}"
        proc = self.start()
        start = time.time()
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=30), 0)
        self.assertIsNotNone(ranks.poll(), "the worker exited while a rank was running")
        self.assertGreater(time.time() - start, 1.0)
        self.assertIn("waiting for this pod's ranks", proc.stderr.read())

    def test_missing_secret_is_named(self):
        os.remove(os.path.join(self.secret, "authorized_keys"))
        result = run(["worker"], self.env)
        self.assertEqual(result.returncode, 2)
        self.assertIn(os.path.join(self.secret, "authorized_keys"), result.stderr)
        self.assertIn("make-ssh-secret.sh", result.stderr)

    def test_sshd_failure_ends_the_worker(self):
        write_script(self.fake_sshd, f"echo \"$@\" > {self.sshd_args}; exit 3\n")
        result = run(["worker"], self.env)
        self.assertEqual(result.returncode, 3)


class LeaderWaitTest(unittest.TestCase):
    """The leader waits for every worker's sshd before it starts mpirun."""

    def test_leader_waits_until_workers_answer(self):
        tmp = tempfile.mkdtemp(prefix="entrypoint-leader-")
        self.addCleanup(shutil.rmtree, tmp, True)
        secret = os.path.join(tmp, "secret")
        os.makedirs(secret)
        for name in ("id_ed25519", "known_hosts"):
            with open(os.path.join(secret, name), "w") as f:
                f.write(name + "\n")
        calls = os.path.join(tmp, "ssh.calls")
        fake_ssh = os.path.join(tmp, "ssh")
        # Fails once for each host (sshd not up yet), then succeeds.
        write_script(fake_ssh, f"""\
            while [[ $1 == -* ]]; do shift 2; done
            echo "$1 ${{*:2}}" >> {calls}
            n=$(grep -c "^$1 " {calls})
            [[ $n -gt 1 ]]
            """)
        fake_mpirun = os.path.join(tmp, "mpirun")
        write_script(fake_mpirun, f"echo \"$@\" > {tmp}/mpirun.args\n")
        env = base_env(tmp, LWS_LEADER_ADDRESS="t-0.t.ns", LWS_GROUP_SIZE="3",
                       LWS_WORKER_INDEX="0", TESSERA_SSH_SECRET_DIR=secret,
                       TESSERA_SSH_COMMAND=fake_ssh, TESSERA_MPIRUN=fake_mpirun)
        result = run(["leader", "--tp", "2"], env, timeout=60)
        self.assertEqual(result.returncode, 0, result.stderr)
        with open(calls) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines, ["t-0-1.t.ns true"] * 2 + ["t-0-2.t.ns true"] * 2)
        with open(os.path.join(tmp, "run", "hostfile")) as f:
            self.assertEqual(f.read().splitlines()[1:], ["t-0-1.t.ns slots=1",
                                                         "t-0-2.t.ns slots=1"])
        with open(os.path.join(tmp, "run", "ssh", "ssh_config")) as f:
            config = f.read()
        self.assertIn("StrictHostKeyChecking yes", config)
        self.assertIn("Port 2222", config)
        with open(os.path.join(tmp, "mpirun.args")) as f:
            self.assertIn("serve --tp 2 --port-file", f.read())

    def test_leader_gives_up_after_the_wait_limit(self):
        tmp = tempfile.mkdtemp(prefix="entrypoint-leader-")
        self.addCleanup(shutil.rmtree, tmp, True)
        secret = os.path.join(tmp, "secret")
        os.makedirs(secret)
        for name in ("id_ed25519", "known_hosts"):
            open(os.path.join(secret, name), "w").close()
        env = base_env(tmp, LWS_LEADER_ADDRESS="t-0.t.ns", LWS_GROUP_SIZE="2",
                       TESSERA_SSH_SECRET_DIR=secret, TESSERA_SSH_COMMAND="false",
                       TESSERA_WORKER_WAIT_SECONDS="1")
        result = run(["leader"], env, timeout=60)
        self.assertEqual(result.returncode, 2)
        self.assertIn("worker t-0-1.t.ns did not accept ssh", result.stderr)


class EarlySignalTest(unittest.TestCase):
    def test_sigterm_while_loading_stops_mpirun(self):
        # Before the port file exists there is no rank 0 to drain: mpirun itself is stopped, and
        # the entrypoint exits with its status.
        tmp = tempfile.mkdtemp(prefix="entrypoint-early-")
        self.addCleanup(shutil.rmtree, tmp, True)
        log = os.path.join(tmp, "mpirun.log")
        fake_mpirun = os.path.join(tmp, "mpirun")
        write_script(fake_mpirun, f"""\
            echo "started $*" > {log}
            trap 'echo "got TERM" >> {log}; exit 7' TERM
            while true; do sleep 0.05; done
            """)
        env = base_env(tmp, TESSERA_MPIRUN=fake_mpirun, TESSERA_RANKS_PER_NODE="2")
        proc = subprocess.Popen([ENTRYPOINT, "serve", "--model", "/m"], env=env,
                                stderr=subprocess.PIPE, text=True)
        self.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
        deadline = time.time() + 20
        while not os.path.exists(log):
            self.assertLess(time.time(), deadline)
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        self.assertEqual(proc.wait(timeout=20), 7)
        with open(log) as f:
            lines = f.read().splitlines()
        self.assertEqual(lines[0], "started -np 2 --bind-to none tessera serve --model /m "
                         f"--port-file {tmp}/run/port")
        self.assertEqual(lines[1:], ["got TERM"])
        err = proc.stderr.read()
        proc.stderr.close()
        self.assertIn("SIGTERM before the server was up: stopping mpirun", err)
        self.assertIn("job ended with status 7", err)


class PassThroughTest(unittest.TestCase):
    def test_other_commands_run_as_given(self):
        result = run(["echo", "hello", "world"], {"PATH": os.environ["PATH"]})
        self.assertEqual(result.returncode, 0)
        self.assertEqual(result.stdout, "hello world\n")


if __name__ == "__main__":
    ENTRYPOINT = os.path.abspath(sys.argv.pop(1))
    unittest.main(verbosity=2)
