#!/bin/sh
# Forms a Tendis cluster (Redis Cluster protocol) from the pods of the tendis StatefulSet, the way
# `redis-cli --cluster create --cluster-replicas R` does, with explicit steps that Tendis supports:
# CLUSTER MEET every node, CLUSTER ADDSLOTS an equal share of the 16384 slots to each master, then
# CLUSTER REPLICATE each remaining node to a master. Idempotent: a formed cluster is left alone, and a
# half-formed one is completed (nodes that already hold slots or already replicate are skipped).
#
# Nodes meet by DNS name (Tendis `domain-enabled yes`): each pod's full name, tendis-<i>.tendis-headless.<the
# namespace's search domain>, the name the pod binds and announces, so the cluster re-forms by itself after every pod
# restarts with a new IP. TENDIS_MEET_BY=ip meets by the resolved IP instead (Redis Cluster accepts IPs only).
#
# Environment:
#   TENDIS_NODES        space-separated host:port list (default: built from the variables below)
#   TENDIS_STATEFULSET  StatefulSet name (tendis)      TENDIS_SERVICE  headless Service (tendis-headless)
#   TENDIS_REPLICAS     number of pods (6)             TENDIS_PORT     client port (51002)
#   TENDIS_DOMAIN       suffix after the Service (default: the first search domain of /etc/resolv.conf,
#                       <namespace>.svc.<cluster domain> in a pod)
#   TENDIS_MEET_BY      name (default) or ip
#   CLUSTER_REPLICAS    replicas per master (1)        WAIT_TIMEOUT_S  how long to wait for nodes (600)
#   REDIS_CLI           redis-cli binary (redis-cli)  POLL_S          seconds between checks (2)
set -eu

STS="${TENDIS_STATEFULSET:-tendis}"
SVC="${TENDIS_SERVICE:-tendis-headless}"
COUNT="${TENDIS_REPLICAS:-6}"
PORT="${TENDIS_PORT:-51002}"
R="${CLUSTER_REPLICAS:-1}"
TIMEOUT="${WAIT_TIMEOUT_S:-600}"
CLI="${REDIS_CLI:-redis-cli}"
POLL="${POLL_S:-2}"

MEET_BY="${TENDIS_MEET_BY:-name}"
case "$MEET_BY" in name | ip) ;; *) echo "TENDIS_MEET_BY must be name or ip, not $MEET_BY" >&2; exit 2 ;; esac

if [ -z "${TENDIS_NODES:-}" ]; then
  DOMAIN="${TENDIS_DOMAIN:-$(awk '$1 == "search" { print $2; exit }' /etc/resolv.conf 2>/dev/null || true)}"
  TENDIS_NODES=""
  i=0
  while [ "$i" -lt "$COUNT" ]; do
    TENDIS_NODES="$TENDIS_NODES ${STS}-${i}.${SVC}${DOMAIN:+.$DOMAIN}:${PORT}"
    i=$((i + 1))
  done
fi

set -- $TENDIS_NODES
N=$#
if [ $((N % (R + 1))) -ne 0 ]; then
  echo "cannot split $N nodes into masters with $R replicas each" >&2; exit 2
fi
M=$((N / (R + 1)))
if [ "$M" -lt 3 ]; then
  echo "a cluster needs at least 3 masters, got $M from $N nodes" >&2; exit 2
fi

host_of() { echo "${1%:*}"; }
port_of() { echo "${1##*:}"; }
cli() { _node="$1"; shift; "$CLI" -h "$(host_of "$_node")" -p "$(port_of "$_node")" "$@"; }
nth() { _k="$1"; shift; eval "echo \${$((_k + 1))}"; }
ip_of() {
  _h="$(host_of "$1")"
  case "$_h" in
    *[!0-9.]*) getent hosts "$_h" | awk '{ print $1; exit }' ;;
    *) echo "$_h" ;;
  esac
}
info_field() { cli "$1" cluster info | tr -d '\r' | awk -F: -v k="$2" '$1 == k { print $2 }'; }
myself_line() { cli "$1" cluster nodes | tr -d '\r' | awk '$3 ~ /myself/ { print; exit }'; }

deadline=$(( $(date +%s) + TIMEOUT ))
wait_until() {  # wait_until DESCRIPTION COMMAND...
  _what="$1"; shift
  until "$@" >/dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then echo "timed out waiting for $_what" >&2; exit 1; fi
    sleep "$POLL"
  done
}
answers_ping() { [ "$(cli "$1" ping | tr -d '\r')" = "PONG" ]; }
knows_all() { [ "$(info_field "$1" cluster_known_nodes)" = "$N" ]; }
cluster_ok() { [ "$(info_field "$1" cluster_state)" = "ok" ]; }
resolves() { [ -n "$(ip_of "$1")" ]; }
knows_node() { cli "$1" cluster nodes | grep -q "^$2 "; }

for node in "$@"; do
  wait_until "$node to answer PING" answers_ping "$node"
  wait_until "$node to resolve" resolves "$node"
done

first="$1"
if cluster_ok "$first" && knows_all "$first"; then
  echo "cluster already formed:"; cli "$first" cluster nodes; exit 0
fi

for node in "$@"; do
  [ "$node" = "$first" ] && continue
  if [ "$MEET_BY" = ip ]; then host="$(ip_of "$node")"; else host="$(host_of "$node")"; fi
  cli "$first" cluster meet "$host" "$(port_of "$node")"
done
for node in "$@"; do wait_until "$node to see all $N nodes" knows_all "$node"; done

j=0
while [ "$j" -lt "$M" ]; do
  node="$(nth "$j" "$@")"
  start=$((j * 16384 / M)); end=$(((j + 1) * 16384 / M - 1))
  if [ "$(myself_line "$node" | awk '{ print NF }')" -gt 8 ]; then
    echo "$node already holds slots"
  else
    echo "$node: slots $start-$end"
    cli "$node" cluster addslots $(seq "$start" "$end") >/dev/null
  fi
  j=$((j + 1))
done

k="$M"
while [ "$k" -lt "$N" ]; do
  node="$(nth "$k" "$@")"
  master="$(nth $(( (k - M) % M )) "$@")"
  master_id="$(myself_line "$master" | awk '{ print $1 }')"
  if myself_line "$node" | awk '{ print $3 }' | grep -q slave; then
    echo "$node already replicates"
  else
    wait_until "$node to know master $master" knows_node "$node" "$master_id"
    echo "$node replicates $master ($master_id)"
    cli "$node" cluster replicate "$master_id"
  fi
  k=$((k + 1))
done

for node in "$@"; do wait_until "cluster_state:ok on $node" cluster_ok "$node"; done
# CLUSTER REPLICATE is told to one node; the others learn of it by gossip. Done when every node sees every replica.
sees_replicas() { [ "$(cli "$1" cluster nodes | tr -d '\r' | awk '$3 ~ /slave/' | wc -l)" -eq $((N - M)) ]; }
for node in "$@"; do wait_until "$node to see all $((N - M)) replicas" sees_replicas "$node"; done
echo "cluster formed:"
cli "$first" cluster nodes
