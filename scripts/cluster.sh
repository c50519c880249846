#!/usr/bin/env bash
# A local agentmesh cluster: N nodes, each beside a demo agent, admitted by a fresh mesh root.
#
#   scripts/cluster.sh up N      build, create keys/certs/configs, start, wait until converged
#   scripts/cluster.sh status    which processes run; members as node 1 sees them
#   scripts/cluster.sh down      SIGTERM everything (graceful leave), SIGKILL stragglers
#
# State (keys, certificates, configs, logs, pid files) lives under $AGENTMESH_HOME (default
# ./.agentmesh). Node i serves its API on 127.0.0.1:$((7600+i-1)) (node 1 on the CLI's default),
# QUIC on UDP $((QUIC_PORT_BASE+i)), and its demo agent on TCP $((AGENT_PORT_BASE+i)).
#
# Secure by default: every node runs RBAC with examples/policy.toml (deny by default; roles
# agent,node<i>; set CLUSTER_AUDITOR_ROLE=1 to also grant `auditor`, which may read other
# nodes' audit logs) and writes a signed audit log in node<i>/audit.
#
# Environment: AGENTMESH_HOME, CARGO_TARGET_DIR, QUIC_PORT_BASE (4100), AGENT_PORT_BASE (8100),
# API_PORT_BASE (7600), CLUSTER_WAIT_S (30 + N), RUST_LOG (info), CLUSTER_PROFILE (release),
# CLUSTER_CERT_TTL (30d; the node warns when its certificate has less than 7 days left),
# CLUSTER_NO_BUILD=1 (use the existing binary), CLUSTER_NO_WAIT=1 (return once all processes are
# launched, without waiting for convergence; benches poll themselves), CLUSTER_ZONES (0: no
# locality labels; k: node i in zone-((i-1) % k + 1), region local). `up` records the launch
# window in $AGENTMESH_HOME/launch_start.ms and launch_end.ms (Unix ms).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${AGENTMESH_HOME:-./.agentmesh}"
TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
PROFILE="${CLUSTER_PROFILE:-release}"
BIN="$TARGET_DIR/$PROFILE/agentmesh"
QUIC_PORT_BASE="${QUIC_PORT_BASE:-4100}"
AGENT_PORT_BASE="${AGENT_PORT_BASE:-8100}"
API_PORT_BASE="${API_PORT_BASE:-7600}"
NODES_MAX=200

die() { echo "cluster.sh: $*" >&2; exit 1; }
log() { echo "cluster.sh: $*" >&2; }

usage() {
  sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 2
}

build() {
  if [[ "${CLUSTER_NO_BUILD:-0}" == 1 && -x "$BIN" ]]; then return 0; fi
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup)"
  # ring and mimalloc compile C; scripts/install-system-deps installs a compiler (apt, root).
  command -v cc >/dev/null 2>&1 || die "no C compiler (cc): run scripts/install-system-deps"
  log "building agentmesh ($PROFILE) into $TARGET_DIR"
  local flag=()
  if [[ "$PROFILE" == release ]]; then flag=(--release); fi
  (cd "$ROOT" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build "${flag[@]}" -q -p agentmesh-node --bin agentmesh)
  [[ -x "$BIN" ]] || die "build produced no $BIN"
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Capabilities of node i (1-based): distinct per node, partly overlapping across nodes.
# Prints lines "name|proficiency|cost|attributes-toml".
caps_for() {
  # CLUSTER_CAPS_<i>="a,b" replaces node i's capabilities (examples/workflows uses it).
  local override="CLUSTER_CAPS_$1"
  if [[ -n "${!override:-}" ]]; then
    tr ',' '\n' <<<"${!override}" | sed 's/$/|experienced|0.1|{}/'
    return
  fi
  case $(( ($1 - 1) % 5 )) in
    0) echo 'inventory.query|expert|0.5|{ warehouses = ["A", "B"] }'
       echo 'pricing.quote|experienced|1.0|{}' ;;
    1) echo 'pricing.quote|expert|2.0|{ currency = ["EUR", "USD"] }'
       echo 'text.summarize|experienced|0.2|{ languages = ["en"] }' ;;
    2) echo 'text.summarize|expert|0.8|{ languages = ["en", "fr"] }'
       echo 'text.translate|experienced|0.4|{ languages = ["fr", "de"] }' ;;
    3) echo 'inventory.query|novice|0.1|{ warehouses = ["C"] }'
       echo 'geo.lookup|expert|0.3|{}' ;;
    4) echo 'text.translate|expert|0.9|{ languages = ["fr", "es"] }'
       echo 'sentiment.score|experienced|0.1|{}' ;;
  esac
}

write_config() { # i dir seed
  local i=$1 dir=$2 seed=$3
  local api=$((API_PORT_BASE + i - 1)) quic=$((QUIC_PORT_BASE + i)) agent=$((AGENT_PORT_BASE + i))
  {
    echo "[node]"
    echo "key_file = \"node.key\""
    echo "cert_file = \"node.cert\""
    echo "state_dir = \"state\""
    echo "listen = [\"/ip4/127.0.0.1/udp/$quic/quic-v1\"]"
    echo "api_listen = \"127.0.0.1:$api\""
    if [[ -n "$seed" ]]; then echo "seeds = [\"$seed\"]"; else echo "seeds = []"; fi
    echo "gossip_profile = \"lan\""
    echo "drain_timeout_ms = 3000"
    # CLUSTER_ZONES=k spreads the nodes over zones zone-1..zone-k of region local (locality
    # routing keeps calls in the caller's zone; see docs/routing.md).
    if [[ "${CLUSTER_ZONES:-0}" -gt 0 ]]; then
      echo "zone = \"zone-$(( (i - 1) % CLUSTER_ZONES + 1 ))\""
      echo "region = \"local\""
    fi
    echo
    echo "[mesh]"
    echo "admission = \"enforced\""
    echo "root_pub = \"$ROOT_PUB\""
    echo "mesh_id = \"$MESH_ID\""
    echo
    echo "[agent]"
    echo "name = \"agent-$i\""
    echo "handler = \"http://127.0.0.1:$agent\""
    echo "max_concurrency = 64"
    echo
    echo "[rbac]"
    echo "policy_file = \"$ROOT/examples/policy.toml\""
    echo
    echo "[audit]"
    echo "dir = \"audit\""
    while IFS='|' read -r name prof cost attrs; do
      echo
      echo "[[agent.capabilities]]"
      echo "name = \"$name\""
      echo "proficiency = \"$prof\""
      echo "cost = $cost"
      echo "attributes = $attrs"
    done < <(caps_for "$i")
  } > "$dir/node.toml"
}

member_count() { # api-port -> number of alive members seen
  "$BIN" members --json --api "http://127.0.0.1:$1" 2>/dev/null | grep -c '"state": "alive"' || true
}

up() {
  local n=${1:-}
  [[ "$n" =~ ^[0-9]+$ ]] && (( n >= 1 && n <= NODES_MAX )) || die "up N: N must be 1..$NODES_MAX"
  if compgen -G "$HOME_DIR/node*/node.pid" >/dev/null; then
    for p in "$HOME_DIR"/node*/node.pid; do
      alive "$p" && die "a cluster is running under $HOME_DIR; run: $0 down"
    done
  fi
  build
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  HOME_DIR="$(cd "$HOME_DIR" && pwd)"
  ROOT_PUB=$("$BIN" mesh init --dir "$HOME_DIR/root" --mesh-id "local-$(date +%s)" 2>/dev/null)
  MESH_ID=$(sed -n 's/^mesh_id = "\(.*\)"$/\1/p' "$HOME_DIR/root/mesh.toml")
  log "mesh $MESH_ID, root $ROOT_PUB"

  local seed="" i
  for i in $(seq 1 "$n"); do
    local dir="$HOME_DIR/node$i"
    mkdir -p "$dir"
    local id
    id=$("$BIN" keygen --out "$dir/node.key")
    # 30 days: well beyond the node's 7-day expiry warning, so a fresh cluster starts quiet.
    "$BIN" admit --root "$HOME_DIR/root/root.key" --node-pub "$id" --roles "agent,node$i${CLUSTER_AUDITOR_ROLE:+,auditor}" \
      --ttl "${CLUSTER_CERT_TTL:-30d}" --out "$dir/node.cert" >/dev/null
    echo "$id" > "$dir/node.id"
    write_config "$i" "$dir" "$seed"
    [[ -n "$seed" ]] || seed="/ip4/127.0.0.1/udp/$((QUIC_PORT_BASE + 1))/quic-v1/p2p/$id"
  done

  local t0; t0=$(date +%s%3N)
  echo "$t0" > "$HOME_DIR/launch_start.ms"
  for i in $(seq 1 "$n"); do
    local dir="$HOME_DIR/node$i" caps
    caps=$(caps_for "$i" | cut -d'|' -f1 | paste -sd, -)
    # CLUSTER_AGENT_ARGS_<i>: extra demo-agent flags for node i (space-separated, no spaces
    # inside one flag), e.g. --answer 'x={"ok":true}' --error-rate 0.5.
    local extra_var="CLUSTER_AGENT_ARGS_$i" extra=()
    read -ra extra <<<"${!extra_var:-}"
    "$BIN" demo-agent --listen "127.0.0.1:$((AGENT_PORT_BASE + i))" --name "agent-$i" \
      --latency-ms-p50 1 --latency-ms-p99 5 --seed "$i" --capabilities "$caps" \
      "${extra[@]}" > "$dir/agent.log" 2>&1 &
    echo $! > "$dir/agent.pid"
    RUST_LOG="${RUST_LOG:-info}" "$BIN" node --config "$dir/node.toml" > "$dir/node.log" 2>&1 &
    echo $! > "$dir/node.pid"
  done
  date +%s%3N > "$HOME_DIR/launch_end.ms"
  if [[ "${CLUSTER_NO_WAIT:-0}" == 1 ]]; then
    log "started $n nodes and $n demo agents; not waiting (CLUSTER_NO_WAIT=1)"
    return 0
  fi
  log "started $n nodes and $n demo agents; waiting for every node to see all $n"

  local wait_s=${CLUSTER_WAIT_S:-$((30 + n))} deadline=$(( $(date +%s) + ${CLUSTER_WAIT_S:-$((30 + n))} ))
  while :; do
    local done_nodes=0
    for i in $(seq 1 "$n"); do
      alive "$HOME_DIR/node$i/node.pid" || die "node $i exited; see $HOME_DIR/node$i/node.log"
      if (( $(member_count $((API_PORT_BASE + i - 1))) >= n )); then done_nodes=$((done_nodes + 1)); fi
    done
    if (( done_nodes == n )); then break; fi
    (( $(date +%s) < deadline )) || die "not converged after ${wait_s}s ($done_nodes/$n nodes see all); logs in $HOME_DIR/node*/node.log"
    sleep 0.2
  done
  local ms=$(( $(date +%s%3N) - t0 ))
  printf 'cluster.sh: converged: all %d nodes see all %d members in %d.%03ds\n' "$n" "$n" \
    $((ms / 1000)) $((ms % 1000)) >&2

  cat <<EOF

Mesh of $n nodes is up (state in $HOME_DIR). Try:
  $BIN members
  $BIN routes inventory.query
  $BIN call inventory.query --data '{"sku":"A-1"}' --attr warehouses=A
  $BIN call text.summarize --data '{"text":"hello mesh"}' --api http://127.0.0.1:$((API_PORT_BASE + n - 1))
  curl -s -XPOST 127.0.0.1:$API_PORT_BASE/v1/call/pricing.quote -d '{"sku":"A-1"}' -i
  $0 status
  $0 down
EOF
}

status() {
  [[ -d "$HOME_DIR" ]] || die "no cluster under $HOME_DIR"
  local d running=0 total=0
  for d in "$HOME_DIR"/node*/; do
    [[ -f "$d/node.toml" ]] || continue
    total=$((total + 1))
    if alive "$d/node.pid"; then running=$((running + 1)); s=running; else s=stopped; fi
    a=stopped; if alive "$d/agent.pid"; then a=running; fi
    printf '%-8s node %-8s agent %-8s %s\n' "$(basename "$d")" "$s" "$a" "$(cat "$d/node.id" 2>/dev/null)"
  done
  echo "$running/$total nodes running"
  [[ -x "$BIN" ]] && (( running > 0 )) && "$BIN" members --api "http://127.0.0.1:$API_PORT_BASE" || true
}

down() {
  [[ -d "$HOME_DIR" ]] || { log "nothing to stop under $HOME_DIR"; return 0; }
  local p pids=()
  for p in "$HOME_DIR"/node*/node.pid "$HOME_DIR"/node*/agent.pid; do
    [[ -f "$p" ]] || continue
    if alive "$p"; then kill -TERM "$(cat "$p")" 2>/dev/null || true; pids+=("$(cat "$p")"); fi
  done
  local deadline=$(( $(date +%s) + 15 ))
  while (( ${#pids[@]} > 0 )) && (( $(date +%s) < deadline )); do
    local left=()
    for p in "${pids[@]}"; do if kill -0 "$p" 2>/dev/null; then left+=("$p"); fi; done
    pids=("${left[@]+"${left[@]}"}")
    if (( ${#pids[@]} > 0 )); then sleep 0.1; fi
  done
  for p in "${pids[@]+"${pids[@]}"}"; do
    log "pid $p ignored SIGTERM for 15s; killing"
    kill -KILL "$p" 2>/dev/null || true
  done
  rm -f "$HOME_DIR"/node*/node.pid "$HOME_DIR"/node*/agent.pid
  log "stopped"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  status) status ;;
  down) down ;;
  *) usage ;;
esac
