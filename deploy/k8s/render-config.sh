#!/bin/sh
# Init container: makes this pod's node key and admission certificate, then renders node.toml.
# Inputs (env): HOST_IP (downward API), SEEDS_DNS, MESH_ID, ROOT_PUB, API_TOKEN, and
# TOPOLOGY_ZONE / TOPOLOGY_REGION (the node's topology labels, downward API; may be empty); the
# mesh root key at $ROOT_KEY. Outputs in $STATE_DIR: node.key (0600), node.id, node.cert, node.toml.
# Only this container mounts the root key. scripts/validate-k8s runs it outside a cluster.
set -eu
dir=${STATE_DIR:-/var/lib/agentmesh}
etc=${CONFIG_DIR:-/etc/agentmesh}
root_key=${ROOT_KEY:-/etc/agentmesh-root/root.key}
mkdir -p "$dir/state"
# The key outlives the pod ($dir is a per-host hostPath): made once, reused by every restart.
# Written beside and renamed, key first: a crash in between leaves no node.id, and the next
# start makes a fresh pair instead of pairing an id with the wrong key.
if [ ! -s "$dir/node.key" ] || [ ! -s "$dir/node.id" ]; then
  rm -f "$dir/node.key.new" "$dir/node.id.new"
  agentmesh keygen --out "$dir/node.key.new" >"$dir/node.id.new"
  mv -f "$dir/node.key.new" "$dir/node.key"
  mv -f "$dir/node.id.new" "$dir/node.id"
fi
id=$(cat "$dir/node.id")
# A fresh certificate on every pod start (admit refuses to overwrite, hence the rename).
rm -f "$dir/node.cert.new"
agentmesh admit --root "$root_key" --mesh-id "$MESH_ID" \
  --node-pub "$id" --roles "${NODE_ROLES:-agent}" --ttl "${CERT_TTL:-30d}" --out "$dir/node.cert.new"
mv -f "$dir/node.cert.new" "$dir/node.cert"
# Seeds: every node pod's host IP except ours (the headless Service lists all of them).
seeds=""
for ip in $(getent ahostsv4 "$SEEDS_DNS" 2>/dev/null | awk '{print $1}' | sort -u); do
  [ "$ip" = "$HOST_IP" ] && continue
  seeds="$seeds${seeds:+, }\"/ip4/$ip/udp/4001/quic-v1\""
done
# Locality labels: a Kubernetes label value or nothing (anything else is dropped, loudly, so
# a strange label cannot break the rendered file or the node's start).
label() {
  case "$1" in
    "") echo "" ;;
    *[!A-Za-z0-9._-]* | [!A-Za-z0-9]* | *[!A-Za-z0-9]) echo "ignoring $2 label \"$1\"" >&2; echo "" ;;
    *) if [ ${#1} -le 63 ]; then echo "$1"; else echo "ignoring $2 label: over 63 characters" >&2; echo ""; fi ;;
  esac
}
zone=$(label "${TOPOLOGY_ZONE:-}" zone)
region=$(label "${TOPOLOGY_REGION:-}" region)
sed -e "s|@HOST_IP@|$HOST_IP|g" -e "s|@ZONE@|$zone|g" -e "s|@REGION@|$region|g" -e "s|@SEEDS@|$seeds|g" -e "s|@API_TOKEN@|$API_TOKEN|g" \
  -e "s|@ROOT_PUB@|$ROOT_PUB|g" -e "s|@MESH_ID@|$MESH_ID|g" \
  "$etc/node.toml.tmpl" >"$dir/node.toml"
cat "$etc/policy.toml" >>"$dir/node.toml"
cp "$etc/rbac-policy.toml" "$dir/rbac-policy.toml"
agentmesh config validate "$dir/node.toml" >/dev/null
echo "node $id on $HOST_IP, zone ${zone:-none}, region ${region:-none}, seeds: ${seeds:-none (first node)}"
