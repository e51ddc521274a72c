#!/usr/bin/env bash
# Runs a built gateway image the way the rendered Deployment does (uid 65532, read-only root filesystem, /tmp
# the only writable path, the config mounted read-only) in front of a simulated engine on this host. Checks
# /health, the image's HEALTHCHECK command, a completion through the gateway, and that no route headers leak.
# Runs the image's filesystem with chroot in a private mount namespace (buildah mount; needs root), because
# container runtimes do not start in every sandbox; the CI workflow runs the same image with docker --read-only.
#   bash scripts/check-gateway-image.sh [IMAGE]      (default localhost/eksinfer-gateway:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${1:-localhost/eksinfer-gateway:dev}
EKSINFER=${EKSINFER:-$PWD/.venv/bin/eksinfer}
ENGINE_PORT=18431
GATEWAY_PORT=18432
work=$(mktemp -d)
ctr=$(buildah from "$IMAGE")
rootfs=$(buildah mount "$ctr")
cleanup() {
  [ -n "${gw:-}" ] && kill "$gw" 2>/dev/null || true
  [ -n "${sim:-}" ] && kill "$sim" 2>/dev/null || true
  wait 2>/dev/null || true
  buildah rm "$ctr" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

"$EKSINFER" sim --port "$ENGINE_PORT" >"$work/sim.log" 2>&1 &
sim=$!
cat >"$work/gateway.yaml" <<YAML
server: {host: 127.0.0.1, port: $GATEWAY_PORT}
endpoints:
  static: [{url: "http://127.0.0.1:$ENGINE_PORT"}]
routing: {preset: load}
YAML
chmod 755 "$work" && chmod 644 "$work/gateway.yaml"

# The image's own environment, user and entry point, read from its config.
mapfile -t env < <(buildah inspect --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$IMAGE" | sed '/^$/d')
user=$(buildah inspect --format '{{.OCIv1.Config.User}}' "$IMAGE")
entry=$(buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{.}} {{end}}' "$IMAGE")
health=$(buildah inspect --format '{{range .Docker.Config.Healthcheck.Test}}{{.}}{{"\x1f"}}{{end}}' "$IMAGE")
echo "image user $user, entry point: $entry"

in_image() {  # run a command as the image user on the read-only root
  unshare --mount --propagation private bash -c '
    set -e
    r=$1; cfg=$2; user=$3; shift 3
    mkdir -p /tmp/eksinfer-ro && mount --bind "$r" /tmp/eksinfer-ro
    mount -o remount,bind,ro /tmp/eksinfer-ro
    mount -t tmpfs -o size=64m tmpfs /tmp/eksinfer-ro/tmp
    mount -t proc proc /tmp/eksinfer-ro/proc
    mount --bind /dev /tmp/eksinfer-ro/dev
    exec chroot --userspec="$user" /tmp/eksinfer-ro env -i "$@"
  ' _ "$rootfs" "$work" "$user" "${env[@]}" "$@"
}

# The gateway, with the config bound where the Deployment mounts it.
unshare --mount --propagation private bash -c '
  set -e
  r=$1; work=$2; user=$3; shift 3
  mkdir -p /tmp/eksinfer-gw && mount --bind "$r" /tmp/eksinfer-gw && mount -o remount,bind,ro /tmp/eksinfer-gw
  mount -t tmpfs -o size=64m tmpfs /tmp/eksinfer-gw/tmp
  mount -t proc proc /tmp/eksinfer-gw/proc
  mount --bind /dev /tmp/eksinfer-gw/dev
  mount --bind "$work" /tmp/eksinfer-gw/etc/eksinfer
  exec chroot --userspec="$user" /tmp/eksinfer-gw env -i "$@"
' _ "$rootfs" "$work" "$user" "${env[@]}" $entry --config /etc/eksinfer/gateway.yaml >"$work/gw.log" 2>&1 &
gw=$!

for _ in $(seq 1 150); do
  curl -fsS "http://127.0.0.1:$GATEWAY_PORT/ready" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "health: $(curl -fsS "http://127.0.0.1:$GATEWAY_PORT/health" || { cat "$work/gw.log"; exit 1; })"
env+=("EKSINFER_HEALTH_URL=http://127.0.0.1:$GATEWAY_PORT/health")
IFS=$'\x1f' read -r -a check <<<"$health"
[ "${check[0]}" = "CMD" ] && in_image "${check[@]:1}" && echo "HEALTHCHECK command: healthy"
curl -fsS -D "$work/headers" "http://127.0.0.1:$GATEWAY_PORT/v1/completions" \
  -H 'content-type: application/json' -d '{"model": "llama-3.1-8b", "prompt": "Hello", "max_tokens": 8}' \
  | head -c 240
echo
if grep -qi '^x-eksinfer-' "$work/headers"; then
  echo "FAIL: route headers sent by default"; exit 1
fi
echo "as uid: $(in_image id -u); write to /opt: $(in_image sh -c 'touch /opt/x 2>&1 || true' | head -1)"
echo "venv /opt/eksinfer: $(du -sh "$rootfs/opt/eksinfer" | cut -f1)"
echo "gateway log:"; sed 's/^/  /' "$work/gw.log" | head -5
echo OK
