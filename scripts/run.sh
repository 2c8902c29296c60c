#!/usr/bin/env bash
# `make run`: a local tokenizer and the sidecar, wired together, working offline.
# - OPEN_KEY: taken from the environment if given, else a fresh one for this run.
# - Placeholder tokens are sealed at start for api.github.com, api.anthropic.com, api.openai.com.
# - Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release/proxypilot
TOKENIZER_ADDR=127.0.0.1:8080
SIDECAR_PORT=8443
mkdir -p run

for port in 8080 8443; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    echo "make run: port $port is already in use on 127.0.0.1; stop what uses it and retry" >&2
    exit 1
  fi
done

if [ -z "${OPEN_KEY:-}" ]; then
  OPEN_KEY=$("$BIN" keygen | sed -n 's/^OPEN_KEY=//p')
fi
export OPEN_KEY
SEAL_KEY=$("$BIN" sealkey)
export SEAL_KEY

seal() { # token host [extra seal flags]
  local token=$1 host=$2; shift 2
  printf '%s' "$token" | "$BIN" seal --host "$host" "$@"
}
PP_SEALED_GITHUB=$(seal "ghp_placeholder_not_a_real_token" api.github.com)
PP_SEALED_ANTHROPIC=$(seal "sk-ant-placeholder" api.anthropic.com --header x-api-key)
PP_SEALED_OPENAI=$(seal "sk-placeholder" api.openai.com)
export PP_SEALED_GITHUB PP_SEALED_ANTHROPIC PP_SEALED_OPENAI

pids=()
cleanup() {
  trap - INT TERM EXIT
  for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo "make run: stopped"
}
trap cleanup INT TERM EXIT

# PP_TOKENIZER_ARGS: extra tokenizer flags (the tests pin api.github.com to loopback with it).
# shellcheck disable=SC2086
"$BIN" tokenizer --listen "$TOKENIZER_ADDR" ${PP_TOKENIZER_ARGS:-} &
pids+=($!)
"$BIN" serve -c conf/local.yaml &
pids+=($!)

for _ in $(seq 100); do
  [ -f run/ca/ca.pem ] && curl -sf --max-time 1 --cacert run/ca/ca.pem \
    --resolve "localhost:$SIDECAR_PORT:127.0.0.1" "https://localhost:$SIDECAR_PORT/healthz" \
    >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

proxypilot is running: sidecar https://127.0.0.1:$SIDECAR_PORT -> tokenizer http://$TOKENIZER_ADDR
The sidecar holds only sealed placeholder tokens; the tokenizer (SEAL_KEY=$SEAL_KEY) opens them.

Call GitHub through it with a dummy token (as an agent's shell would):

  curl --resolve api.github.com:$SIDECAR_PORT:127.0.0.1 --cacert run/ca/ca.pem \\
       -H 'Authorization: Bearer dummy' https://api.github.com:$SIDECAR_PORT/user

Online, GitHub answers 401 (it received the sealed placeholder token, not "dummy").
Offline, the tokenizer answers 502 with the reason it could not reach api.github.com.
Also try: the CA at https://localhost:$SIDECAR_PORT/ca-cert.pem, metrics at /metrics.

Ctrl-C stops both.
MSG
wait -n "${pids[@]}" || true
