#!/usr/bin/env bash
# Runs the support pipeline on a local 4-node cluster of demo agents: node 1 classifies,
# node 2 is a slow specialist (p50 400 ms), node 3 a specialist failing half its calls with
# a retryable 503, node 4 approves, executes, records and is the generalist fallback.
# Then `agentmesh workflow run` five times, and the cluster goes down.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
export AGENTMESH_HOME="${AGENTMESH_HOME:-$(mktemp -d)}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/agentmesh-target}"
export CLUSTER_CAPS_1=ticket.classify
export CLUSTER_AGENT_ARGS_1='--answer ticket.classify={"category":"billing"}'
export CLUSTER_CAPS_2=support.specialist
export CLUSTER_AGENT_ARGS_2='--latency-ms-p50 400 --latency-ms-p99 600 --answer *={"resolution":"refund","by":"slow"}'
export CLUSTER_CAPS_3=support.specialist
export CLUSTER_AGENT_ARGS_3='--error-rate 0.5 --error-status 503 --answer *={"resolution":"refund","by":"flaky"}'
export CLUSTER_CAPS_4=ticket.approve,ticket.execute,audit.record,support.generalist
export CLUSTER_AGENT_ARGS_4='--answer ticket.approve={"approved":true} --answer ticket.execute={"executed":true} --answer audit.record={"recorded":true} --answer support.generalist={"resolution":"escalate"}'
trap 'scripts/cluster.sh down || true' EXIT
scripts/cluster.sh up 4
BIN="$CARGO_TARGET_DIR/${CLUSTER_PROFILE:-release}/agentmesh"
API="http://127.0.0.1:${API_PORT_BASE:-7600}"
for i in 1 2 3 4 5; do
  "$BIN" workflow run examples/workflows/support-pipeline.toml --api "$API" \
    --input "{\"text\":\"refund order $i\"}"
done
