#!/usr/bin/env bash
# The multi-node path for real, on one machine: a LeaderWorkerSet group of two "pods" where the
# worker runs a real, non-root sshd with deploy/entrypoint.sh's configuration and keys from
# deploy/k8s/make-ssh-secret.sh, and the leader's mpirun starts rank 1 there over real ssh. A stream
# is in flight when the worker and then the leader get SIGTERM (a group being deleted): the stream
# must complete, the leader exit 0, the worker leave once its rank is gone.
#
#   ssh_group_test.sh TESSERA_BINARY ENTRYPOINT MAKE_SSH_SECRET
#
# Needs root (a private mount namespace provides a second user and a host name for the worker,
# 127.0.0.2, without touching the machine), setpriv, ssh, and an sshd binary: TESSERA_TEST_SSHD,
# default /usr/sbin/sshd. Skips (exit 77) otherwise, which is the case in CI: its Debian packages
# include the ssh client, not the server. To run it without installing openssh-server:
#   apt-get download openssh-server libwrap0 && for d in *.deb; do dpkg-deb -x "$d" root; done
#   printf '#!/bin/sh\nLD_LIBRARY_PATH=%s exec %s "$@"\n' "$PWD/root/usr/lib/x86_64-linux-gnu" \
#     "$PWD/root/usr/sbin/sshd" > sshd && chmod 755 sshd && export TESSERA_TEST_SSHD=$PWD/sshd
set -euo pipefail

skip() {
  echo "SKIP: $*"
  exit 77
}
if [[ ${1:-} != --inside ]]; then
  [[ $# -eq 3 ]] || {
    echo "usage: $0 TESSERA_BINARY ENTRYPOINT MAKE_SSH_SECRET" >&2
    exit 2
  }
  [[ $(id -u) == 0 ]] || skip "needs root (mount namespace, a second user)"
  [[ -x ${TESSERA_TEST_SSHD:-/usr/sbin/sshd} ]] ||
    skip "no sshd at ${TESSERA_TEST_SSHD:-/usr/sbin/sshd} (set TESSERA_TEST_SSHD)"
  for tool in setpriv unshare ssh ssh-keygen curl; do
    command -v "$tool" >/dev/null || skip "needs $tool"
  done
  unshare -m true 2>/dev/null || skip "cannot create a mount namespace"
  exec unshare -m "$0" --inside "$@"
fi
shift
tessera=$1
entrypoint=$2
make_secret=$3
sshd=${TESSERA_TEST_SSHD:-/usr/sbin/sshd}
uid=$((20000 + RANDOM % 10000))
port=$((30000 + RANDOM % 10000))
lws=group$RANDOM
worker_host=$lws-0-1.$lws.test
tokens=1000

fail() {
  echo "FAIL: $*" >&2
  for f in worker leader; do
    echo "== $f log" >&2
    cat "$work/$f.log" >&2 || true
  done
  exit 1
}

work=$(mktemp -d /tmp/ssh-group-XXXXXX)
chmod 755 "$work"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  # The worker's Open MPI daemon detaches; it and the ranks run as the test user only.
  for proc in /proc/[0-9]*; do
    [[ $(stat -c %u "$proc" 2>/dev/null) == "$uid" ]] && kill -KILL "${proc#/proc/}" 2>/dev/null
  done
  rm -rf "$work"
}
trap cleanup EXIT

# A user "tessera" and a resolvable worker, visible in this mount namespace only.
cp /etc/passwd "$work/passwd"
cp /etc/group "$work/group"
cp /etc/hosts "$work/hosts"
echo "tessera:x:$uid:$uid::$work/home:/bin/bash" >>"$work/passwd"
echo "tessera:x:$uid:" >>"$work/group"
echo "127.0.0.2 $worker_host" >>"$work/hosts"
mount --bind "$work/passwd" /etc/passwd
mount --bind "$work/group" /etc/group
mount --bind "$work/hosts" /etc/hosts

# The Secret's files as a Secret volume with fsGroup shows them: group-readable, root-owned.
mkdir -p "$work/home" "$work/cache" "$work/secret" "$work/leader" "$work/worker"
"$make_secret" test-ssh >"$work/secret.yaml"
while read -r key value; do
  base64 -d <<<"$value" >"$work/secret/${key%:}"
done < <(sed -n '/^data:/,$p' "$work/secret.yaml" | tail -n +2)
chown root:"$uid" "$work/secret" "$work/secret"/*
chmod 750 "$work/secret"
chmod 440 "$work/secret"/*
chown "$uid:$uid" "$work/home" "$work/cache" "$work/leader"
chmod 777 "$work/worker" # like an emptyDir

as_user() {
  exec setpriv --reuid="$uid" --regid="$uid" --clear-groups \
    env -i PATH=/usr/local/bin:/usr/bin:/bin HOME="$work/home" USER=tessera "$@"
}
(as_user TESSERA_RUN_DIR="$work/worker" TESSERA_SSH_SECRET_DIR="$work/secret" \
  TESSERA_SSHD="$sshd" TESSERA_SSH_PORT="$port" LWS_WORKER_INDEX=1 \
  "$entrypoint" worker >"$work/worker.log" 2>&1) &
worker=$!
pids+=("$worker")
(as_user TESSERA_RUN_DIR="$work/leader" TESSERA_SSH_SECRET_DIR="$work/secret" \
  TESSERA_SSH_PORT="$port" LWS_LEADER_ADDRESS="$lws-0.$lws.test" LWS_GROUP_SIZE=2 \
  LWS_WORKER_INDEX=0 TESSERA_RANKS_PER_NODE=1 TESSERA_BIN="$tessera" \
  XDG_CACHE_HOME="$work/cache" OMP_NUM_THREADS=1 TESSERA_WORKER_WAIT_SECONDS=60 \
  TESSERA_MPIRUN_ARGS="--mca btl_tcp_if_include lo --mca oob_tcp_if_include lo" \
  "$entrypoint" leader --host 127.0.0.1 --port 0 --metrics-port 0 --http-port 0 --drain-timeout 60 \
  >"$work/leader.log" 2>&1) &
leader=$!
pids+=("$leader")

for _ in $(seq 600); do
  [[ -s $work/leader/port ]] && break
  kill -0 "$leader" 2>/dev/null || fail "the leader exited before serving"
  sleep 0.1
done
[[ -s $work/leader/port ]] || fail "the group did not start serving"
read -r grpc metrics rank0 _http <"$work/leader/port"
grep -q "world 2 " "$work/leader.log" || fail "not a world of 2"
grep -q "Accepted publickey for tessera" "$work/worker.log" || fail "no ssh login on the worker"

"$tessera" client --address "127.0.0.1:$grpc" generate --prompt hi --max-tokens "$tokens" \
  --ignore-eos --json >"$work/stream.json" 2>"$work/stream.err" &
stream=$!
pids+=("$stream")
for _ in $(seq 300); do
  curl -s "http://127.0.0.1:$metrics/metrics" | grep -Eq '^tessera:num_requests_running(\{[^}]*\})? 1$' && break
  sleep 0.05
done

# A group being deleted: the worker may get SIGTERM first.
kill -TERM "$worker"
sleep 0.5
kill -0 "$worker" 2>/dev/null || fail "the worker left while its rank was running"
kill -TERM "$leader"
sleep 0.5
if "$tessera" client --address "127.0.0.1:$grpc" health >/dev/null 2>&1; then
  fail "health still SERVING after SIGTERM"
fi
kill -0 "$stream" 2>/dev/null || fail "the stream ended before the drain was observed"

wait "$stream" || fail "the stream failed: $(cat "$work/stream.err")"
grep -q "\"completion_tokens\":$tokens" "$work/stream.json" || fail "the stream was cut short"
status=0
wait "$leader" || status=$?
[[ $status == 0 ]] || fail "the leader exited $status"
grep -q "draining rank 0 (pid $rank0)" "$work/leader.log" || fail "rank 0 was not drained"
status=0
wait "$worker" || status=$?
[[ $status == 0 ]] || fail "the worker exited $status"
grep -q "no ranks left; exiting" "$work/worker.log" || fail "the worker did not wait for its rank"
echo "PASS: 2-pod group drained over ssh; $tokens-token stream completed; both pods exited 0"
