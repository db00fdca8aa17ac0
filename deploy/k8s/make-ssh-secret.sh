#!/usr/bin/env bash
# Prints a Kubernetes Secret with fresh ssh keys for a multi-node tessera group:
#   id_ed25519            the leader's client key (mpirun starts the workers' ranks over ssh)
#   authorized_keys       its public half, which the workers' sshd accepts
#   ssh_host_ed25519_key  the workers' host key (the same on every worker)
#   known_hosts           "* <host public key>": the leader checks every worker against it, so no
#                         host is trusted blindly and no key changes when pods are recreated
#
#   deploy/k8s/make-ssh-secret.sh [NAME [NAMESPACE]] | kubectl apply -f -
#
# The keys are valid only inside the group's pods (sshd listens on the pod network, port 2222).
# To rotate them, apply a new Secret and restart the groups.
set -euo pipefail
name=${1:-tessera-ssh}
namespace=${2:-}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ssh-keygen -q -t ed25519 -N '' -C "$name leader" -f "$tmp/id_ed25519"
ssh-keygen -q -t ed25519 -N '' -C "$name worker host" -f "$tmp/ssh_host_ed25519_key"
cp "$tmp/id_ed25519.pub" "$tmp/authorized_keys"
echo "* $(cut -d ' ' -f 1,2 "$tmp/ssh_host_ed25519_key.pub")" >"$tmp/known_hosts"

echo "apiVersion: v1"
echo "kind: Secret"
echo "metadata:"
echo "  name: $name"
if [[ -n $namespace ]]; then echo "  namespace: $namespace"; fi
echo "  labels:"
echo "    app.kubernetes.io/name: tessera"
echo "type: Opaque"
echo "data:"
for file in id_ed25519 authorized_keys ssh_host_ed25519_key known_hosts; do
  echo "  $file: $(base64 -w 0 <"$tmp/$file")"
done
