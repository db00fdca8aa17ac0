#!/usr/bin/env bash
# tessera-entrypoint: the container's entrypoint. It starts `tessera serve` under mpirun and owns
# the job's shutdown.
#
#   tessera-entrypoint serve  [SERVE FLAGS...]  this pod is the whole job: mpirun -np RANKS_PER_NODE
#   tessera-entrypoint leader [SERVE FLAGS...]  LeaderWorkerSet leader: mpirun across the group
#   tessera-entrypoint worker                   LeaderWorkerSet worker: sshd for the leader's mpirun
#   tessera-entrypoint plan   [SERVE FLAGS...]  print the leader's hostfile and mpirun command only
#   tessera-entrypoint COMMAND [ARGS...]        anything else runs as given (tessera client, bash)
#
# Why SIGTERM goes through here: Open MPI's mpirun (4.1), when it is signalled itself, sends every
# rank SIGCONT, then SIGTERM one odls_base_sigkill_timeout later (1 s), then SIGKILL one more
# timeout later, which cuts a drain short. So mpirun never sees the pod's SIGTERM: it runs in its
# own process group, and this script sends SIGTERM to rank 0 alone (its pid is the third field of
# the --port-file). Rank 0 drains (health NOT_SERVING, in-flight requests finish within
# --drain-timeout) and ends the job; the script exits with mpirun's status. docs/deploy.md has the
# measurements.
#
# Environment (all optional):
#   TESSERA_RANKS_PER_NODE   ranks in this pod, one per GPU (default 1)
#   TESSERA_RUN_DIR          writable scratch: port file, hostfile, ssh files (default /tmp/tessera)
#   TESSERA_BIN, TESSERA_MPIRUN, TESSERA_SSHD   programs (default: tessera and mpirun on PATH,
#                            /usr/sbin/sshd)
#   TESSERA_MPIRUN_ARGS      extra mpirun arguments, split on whitespace
#   TESSERA_API_KEY          passed to the server as --api-key
#   TESSERA_SSH_PORT         the workers' sshd port (default 2222)
#   TESSERA_SSH_SECRET_DIR   the mounted ssh Secret (default /etc/tessera/ssh): id_ed25519 (the
#                            leader's key), authorized_keys, ssh_host_ed25519_key, known_hosts
#   TESSERA_SSH_COMMAND      the remote shell mpirun and the worker wait use (default ssh)
#   TESSERA_WORKER_WAIT_SECONDS  how long the leader waits for every worker's sshd (default 900)
#   TESSERA_FORWARD_ENV      name prefixes of the variables exported to the ranks on other pods,
#                            which sshd starts with a bare environment (default "NCCL_ CUDA_ UCX_
#                            OMP_ TESSERA_ HF_ XDG_CACHE_HOME PATH LD_LIBRARY_PATH"; Open MPI
#                            passes OMPI_MCA_* itself)
#   TESSERA_RANK_PROCESSES   process names a stopping worker waits for (default "tessera orted")
# LeaderWorkerSet sets LWS_LEADER_ADDRESS (<lws>-<group>.<subdomain>.<namespace>), LWS_GROUP_SIZE
# (pods in the group) and LWS_WORKER_INDEX (0 on the leader); worker i's address is
# <lws>-<group>-<i>.<subdomain>.<namespace>.
set -euo pipefail

run_dir=${TESSERA_RUN_DIR:-/tmp/tessera}
tessera_bin=${TESSERA_BIN:-tessera}
mpirun_bin=${TESSERA_MPIRUN:-mpirun}
ranks_per_node=${TESSERA_RANKS_PER_NODE:-1}
ssh_port=${TESSERA_SSH_PORT:-2222}
ssh_secret_dir=${TESSERA_SSH_SECRET_DIR:-/etc/tessera/ssh}
ssh_dir=$run_dir/ssh
ssh_command=${TESSERA_SSH_COMMAND:-ssh}
default_forward="NCCL_ CUDA_ UCX_ OMP_ TESSERA_ HF_ XDG_CACHE_HOME PATH LD_LIBRARY_PATH"
forward_prefixes=${TESSERA_FORWARD_ENV:-$default_forward}
rank_process_names=${TESSERA_RANK_PROCESSES:-tessera orted}

log() { echo "tessera-entrypoint: $*" >&2; }
die() {
  log "$*"
  exit 2
}

positive_int() { [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer, got '$2'"; }

# The serve flags plus the port file (the caller's --port-file wins if given), into serve_argv.
serve_args() {
  # By absolute path: ranks on other pods resolve it with sshd's PATH.
  local resolved
  if resolved=$(command -v "$tessera_bin"); then tessera_bin=$resolved; fi
  serve_argv=("$tessera_bin" serve)
  port_file=
  local prev=
  for arg in "$@"; do
    [[ $prev == --port-file ]] && port_file=$arg
    [[ $arg == --port-file=* ]] && port_file=${arg#--port-file=}
    prev=$arg
  done
  serve_argv+=("$@")
  if [[ -z $port_file ]]; then
    port_file=$run_dir/port
    serve_argv+=(--port-file "$port_file")
  fi
  if [[ -n ${TESSERA_API_KEY:-} ]]; then serve_argv+=(--api-key "$TESSERA_API_KEY"); fi
}

extra_mpirun_args() {
  extra_argv=()
  if [[ -n ${TESSERA_MPIRUN_ARGS:-} ]]; then
    read -r -a extra_argv <<<"$TESSERA_MPIRUN_ARGS"
  fi
}

# The group's hosts, one per pod, leader first, into hosts; from the LWS environment.
group_hosts() {
  local address=${LWS_LEADER_ADDRESS:-} size=${LWS_GROUP_SIZE:-}
  [[ -n $address ]] || die "LWS_LEADER_ADDRESS is not set (is this pod part of a LeaderWorkerSet?)"
  positive_int LWS_GROUP_SIZE "$size"
  if [[ -n ${LWS_WORKER_INDEX:-} && $LWS_WORKER_INDEX != 0 ]]; then
    die "leader mode on worker $LWS_WORKER_INDEX (LWS_WORKER_INDEX must be 0)"
  fi
  local leader=${address%%.*} domain=
  [[ $address == *.* ]] && domain=.${address#*.}
  # mpirun must recognise the first host as itself, so the leader is listed by its own hostname.
  hosts=("$(uname -n)")
  for ((i = 1; i < size; i++)); do hosts+=("$leader-$i$domain"); done
}

# ssh options for the leader's client side (files prepared by ssh_client_setup).
ssh_client_options() {
  ssh_argv=(-F "$ssh_dir/ssh_config")
}

leader_plan() {
  positive_int TESSERA_RANKS_PER_NODE "$ranks_per_node"
  group_hosts
  serve_args "$@"
  extra_mpirun_args
  ssh_client_options
  hostfile=$run_dir/hostfile
  local nranks=$((${#hosts[@]} * ranks_per_node))
  local -a forward=()
  local name prefix
  while IFS= read -r name; do
    [[ $name == TESSERA_API_KEY ]] && continue # it travels as the --api-key flag instead
    for prefix in $forward_prefixes; do
      if [[ $name == "$prefix"* ]]; then
        forward+=(-x "$name")
        break
      fi
    done
  done < <(compgen -e | LC_ALL=C sort)
  # keep_fqdn: Open MPI would otherwise cut worker names at the first dot, and the short name does
  # not resolve. no_tree_spawn: only the leader opens ssh connections (workers hold no client key).
  mpirun_argv=("$mpirun_bin" --hostfile "$hostfile" -np "$nranks"
    --map-by "ppr:$ranks_per_node:node" --bind-to none
    --mca plm_rsh_agent "$ssh_command" --mca plm_rsh_args "${ssh_argv[*]}"
    --mca orte_keep_fqdn_hostnames 1 --mca plm_rsh_no_tree_spawn 1
    "${forward[@]}" "${extra_argv[@]}" "${serve_argv[@]}")
}

write_hostfile() {
  mkdir -p "$run_dir"
  : >"$hostfile.tmp"
  for host in "${hosts[@]}"; do echo "$host slots=$ranks_per_node" >>"$hostfile.tmp"; done
  mv "$hostfile.tmp" "$hostfile"
}

# Copies the Secret's files into a private directory: ssh refuses keys that others can read, and a
# Secret volume with fsGroup is group-readable.
copy_secret_file() { # name mode [required]
  local src=$ssh_secret_dir/$1
  if [[ -f $src ]]; then
    install -m "$2" "$src" "$ssh_dir/$1"
  elif [[ ${3:-} == required ]]; then
    die "missing $src: create the ssh Secret (deploy/k8s/make-ssh-secret.sh)"
  fi
}

ssh_client_setup() {
  mkdir -p "$ssh_dir"
  chmod 700 "$ssh_dir"
  copy_secret_file id_ed25519 600 required
  copy_secret_file known_hosts 644 required
  cat >"$ssh_dir/ssh_config" <<EOF
Host *
  Port $ssh_port
  IdentityFile $ssh_dir/id_ed25519
  IdentitiesOnly yes
  UserKnownHostsFile $ssh_dir/known_hosts
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 10
  ServerAliveInterval 15
  ServerAliveCountMax 4
  LogLevel ERROR
EOF
}

wait_for_workers() {
  local deadline=$((SECONDS + ${TESSERA_WORKER_WAIT_SECONDS:-900}))
  local host
  for host in "${hosts[@]:1}"; do
    until "$ssh_command" "${ssh_argv[@]}" "$host" true </dev/null; do
      if ((SECONDS >= deadline)); then
        die "worker $host did not accept ssh on port $ssh_port in time"
      fi
      log "waiting for worker $host"
      sleep 2
    done
  done
  log "all ${#hosts[@]} pods of the group are reachable"
}

# Runs the job (mpirun ...) in its own process group and waits for it, turning SIGTERM/SIGINT into
# a drain of rank 0. Exits with the job's status.
run_job() {
  mkdir -p "$run_dir"
  rm -f "$port_file" "$run_dir/job.status"
  draining=
  trap 'on_signal TERM' TERM
  trap 'on_signal INT' INT
  # The subshell records mpirun's status, so a signal that interrupts `wait` cannot lose it.
  set -m
  (
    "$@" &
    echo $! >"$run_dir/mpirun.pid"
    wait $! && status=0 || status=$?
    echo "$status" >"$run_dir/job.status"
  ) &
  job=$!
  set +m
  while kill -0 "$job" 2>/dev/null; do wait "$job" || true; done
  local status
  status=$(cat "$run_dir/job.status" 2>/dev/null || echo 1)
  log "job ended with status $status"
  exit "$status"
}

on_signal() {
  if [[ -n $draining ]]; then
    log "SIG$1 again: already draining"
    return
  fi
  draining=1
  local _grpc _metrics pid=
  if [[ -s $port_file ]]; then read -r _grpc _metrics pid _http <"$port_file" || true; fi
  if [[ $pid =~ ^[0-9]+$ ]] && kill -TERM "$pid" 2>/dev/null; then
    log "SIG$1: draining rank 0 (pid $pid)"
  else
    # Not serving yet (still loading): nothing to drain, stop the job.
    log "SIG$1 before the server was up: stopping mpirun"
    local mpirun_pid
    mpirun_pid=$(cat "$run_dir/mpirun.pid" 2>/dev/null) || true
    kill -TERM "$mpirun_pid" 2>/dev/null || kill -TERM -- "-$job" 2>/dev/null || true
  fi
}

# Worker: sshd in the foreground. On SIGTERM it stops taking connections, then stays until this
# pod's ranks are gone (the leader's drain ends them), so a group being deleted drains as a whole.
local_ranks_running() {
  local proc name stat
  for proc in /proc/[0-9]*; do
    [[ -O $proc ]] || continue # this user's processes only
    name=$(cat "$proc/comm" 2>/dev/null) || continue
    [[ " $rank_process_names " == *" $name "* ]] || continue
    stat=$(cat "$proc/stat" 2>/dev/null) || continue
    stat=${stat##*) }
    [[ ${stat%% *} == Z ]] || return 0 # a zombie has finished
  done
  return 1
}

worker() {
  mkdir -p "$ssh_dir"
  chmod 700 "$ssh_dir"
  copy_secret_file ssh_host_ed25519_key 600 required
  copy_secret_file authorized_keys 600 required
  cat >"$ssh_dir/sshd_config" <<EOF
Port $ssh_port
HostKey $ssh_dir/ssh_host_ed25519_key
AuthorizedKeysFile $ssh_dir/authorized_keys
PidFile $ssh_dir/sshd.pid
AllowUsers $(id -un)
# The files above sit in a 0700 directory of this user, under an emptyDir that Kubernetes makes
# world-writable, which StrictModes would refuse. One user owns the container, so nothing is lost.
StrictModes no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
LogLevel INFO
EOF
  local sshd_bin=${TESSERA_SSHD:-/usr/sbin/sshd}
  stopping=
  trap 'stopping=1' TERM INT
  set -m
  "$sshd_bin" -D -e -f "$ssh_dir/sshd_config" &
  local sshd=$!
  set +m
  log "worker ${LWS_WORKER_INDEX:-?}: sshd on port $ssh_port"
  while [[ -z $stopping ]] && kill -0 "$sshd" 2>/dev/null; do wait "$sshd" || true; done
  if [[ -z $stopping ]]; then
    wait "$sshd" && status=0 || status=$?
    log "sshd exited with status $status"
    exit "$status"
  fi
  log "stopping: no new connections; waiting for this pod's ranks to finish"
  kill -TERM "$sshd" 2>/dev/null || true
  while local_ranks_running; do sleep 1; done
  log "no ranks left; exiting"
  exit 0
}

mode=${1:-serve}
[[ $# -gt 0 ]] && shift
case $mode in
  serve)
    positive_int TESSERA_RANKS_PER_NODE "$ranks_per_node"
    serve_args "$@"
    extra_mpirun_args
    run_job "$mpirun_bin" -np "$ranks_per_node" --bind-to none "${extra_argv[@]}" "${serve_argv[@]}"
    ;;
  leader)
    leader_plan "$@"
    write_hostfile
    ssh_client_setup
    wait_for_workers
    log "mpirun over ${#hosts[@]} pods x $ranks_per_node ranks"
    run_job "${mpirun_argv[@]}"
    ;;
  plan)
    leader_plan "$@"
    echo "# hostfile $hostfile"
    for host in "${hosts[@]}"; do echo "$host slots=$ranks_per_node"; done
    echo "# mpirun"
    hide=
    for arg in "${mpirun_argv[@]}"; do
      if [[ -n $hide ]]; then arg='<hidden>'; fi
      hide=
      [[ $arg == --api-key ]] && hide=1
      printf '%q\n' "$arg"
    done
    ;;
  worker)
    worker
    ;;
  *)
    exec "$mode" "$@"
    ;;
esac
