#!/usr/bin/env bash
# Deploy proxypilot to Fly.io: one Machine with the `sidecar` and the example `shell` container
# (deploy/fly/fly.toml + machine.json). Walkthrough: docs/deploy-fly.md.
#
#   SEAL_KEY=... GH_TOKEN=... ANTHROPIC_API_KEY=... OPENAI_API_KEY=... \
#     scripts/fly-deploy.sh --org ORG [--app APP] [--instance ID] [--targets FILE] [--dry-run]
#
#   --org ORG        the Fly organization (slug) the secrets are sealed for (or FLY_ORG)
#   --app APP        the app (default: `app` in deploy/fly/fly.toml)
#   --instance ID    also bind the secrets to this Machine (after the first deploy: `fly
#                    machines list`; the Machine keeps its ID across deploys)
#   --targets FILE   NAME=HOST[:HEADER] lines, the token for each read from the environment
#                    variable NAME (default: ./targets); see README "Seal a token"
#   --dry-run        print every command and run none of them
#
# SEAL_KEY: the tokenizer's public key (`proxypilot keygen` prints it). FLYCTL: the flyctl
# binary (default fly, else flyctl). PROXYPILOT: the proxypilot binary that seals (default
# proxypilot on PATH, else target/release/proxypilot). PROXYPILOT_DEPLOY_TAG: the label of the
# sidecar image (default the UTC time).
#
# Steps, each printed as "+ command" before it runs:
#  1. seal every token for the org and app (fly_src_auth: only this app's Machines can use them)
#     into a private temporary file: `proxypilot seal --env-file`;
#  2. stage them as the app's secrets: `fly secrets import --stage` (the deploy applies them);
#  3. build and push the sidecar image (./Dockerfile) and, when machine.json names
#     registry.fly.io/APP:shell, the example shell image (examples/shell/Dockerfile), from the
#     repository root, the build context (deploy/fly/build.toml: an empty app config);
#  4. deploy the Machine from deploy/fly: flyctl opens machine_config relative to the current
#     directory;
#  5. smoke test: `proxypilot-trust --check` in the shell container (a few tries while it starts).
# Tokens are read from the environment by `proxypilot seal`, never put on a command line; the
# sealed values go from a mode-0600 temporary file to flyctl's stdin and are never printed.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
FLYDIR=$ROOT/deploy/fly
me=fly-deploy

die() { echo "$me: $*" >&2; exit 1; }
show() { # the command as one line a shell would read back the same
  local out="" a q="'"
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then out+=" $a"; else out+=" '${a//$q/$q\\$q$q}'"; fi
  done
  echo "${out# }"
}

dry=0
org=${FLY_ORG:-}
app=""
targets=targets
seal_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1; shift ;;
    --org) [ $# -ge 2 ] || die "--org needs a value"; org=$2; shift 2 ;;
    --app) [ $# -ge 2 ] || die "--app needs a value"; app=$2; shift 2 ;;
    --targets) [ $# -ge 2 ] || die "--targets needs a value"; targets=$2; shift 2 ;;
    --instance) [ $# -ge 2 ] || die "--instance needs a value"; seal_args+=(--instance "$2"); shift 2 ;;
    -h|--help) sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done

# ---- everything is checked before anything runs
[ -n "${SEAL_KEY:-}" ] || die "SEAL_KEY is not set: the tokenizer's public key, printed by \`proxypilot keygen\` (docs/deploy-fly.md, step 1)"
[[ $SEAL_KEY =~ ^[0-9a-fA-F]{64}$ ]] || die "SEAL_KEY is not 64 hex digits (a tokenizer public key)"
[ -n "$org" ] || die "--org is missing: the Fly organization the secrets are sealed for (or set FLY_ORG)"

# FLY / PP: the names printed; FLY_BIN / PP_BIN: the paths run.
FLY=${FLYCTL:-fly}
if [ -z "${FLYCTL:-}" ] && ! command -v fly >/dev/null 2>&1; then FLY=flyctl; fi
FLY_BIN=$(command -v "$FLY") ||
  die "flyctl is not installed (no fly or flyctl on PATH): https://fly.io/docs/flyctl/install/"

PP=${PROXYPILOT:-proxypilot}
if [ -z "${PROXYPILOT:-}" ] && ! command -v proxypilot >/dev/null 2>&1; then
  PP=$ROOT/target/release/proxypilot
fi
PP_BIN=$(command -v "$PP") || die "no proxypilot binary to seal with: \`make build\`, or set PROXYPILOT"

machine=$FLYDIR/machine.json
[ -f "$machine" ] || die "$machine is missing"
if [ -z "$app" ]; then
  app=$(sed -n 's/^app[[:space:]]*=[[:space:]]*"\([^"]*\)".*/\1/p' "$FLYDIR/fly.toml" | head -n 1)
  [ -n "$app" ] || die "no app in $FLYDIR/fly.toml: give --app"
fi

[ -f "$targets" ] || die "no targets file $targets (NAME=HOST[:HEADER] lines; give --targets)"
n=0
while IFS= read -r line || [ -n "$line" ]; do
  line=${line%%#*}
  line=$(echo "$line" | tr -d '[:space:]')
  [ -n "$line" ] || continue
  [[ $line =~ ^([A-Za-z_][A-Za-z0-9_]*)=([a-z0-9.-]+)(:[A-Za-z0-9-]+)?$ ]] ||
    die "$targets: '$line' is not NAME=HOST[:HEADER]"
  name=${BASH_REMATCH[1]} host=${BASH_REMATCH[2]}
  [ -n "${!name:-}" ] || die "$targets: the environment variable $name (the token for $host) is not set"
  # The sidecar must route HOST with the secret NAME (its TARGETS in machine.json), and only the
  # sidecar gets the secret: otherwise the sealed value would go nowhere.
  grep -Eq "\"TARGETS\"[^\"]*\"([^\"]*,)?${host//./\\.}=${name}(,[^\"]*)?\"" "$machine" ||
    die "$targets: $host=$name is not in the sidecar's TARGETS in $machine"
  n=$((n + 1))
done < "$targets"
[ "$n" -gt 0 ] || die "$targets names no token"

tag=${PROXYPILOT_DEPLOY_TAG:-$(date -u +%Y%m%d%H%M%S)}
sidecar_image=registry.fly.io/$app:sidecar-$tag
shell_image=registry.fly.io/$app:shell
build_shell=0
if grep -q "\"image\"[[:space:]]*:[[:space:]]*\"$shell_image\"" "$machine"; then
  build_shell=1
else
  echo "$me: machine.json's shell image is not $shell_image: not building examples/shell"
fi

# fly ARGS...: print the flyctl command, then run it (not with --dry-run) in the directory $cwd.
cwd=$ROOT
fly() {
  echo "+ ${prefix:-}$(show "$FLY" "$@")"
  [ "$dry" = 1 ] || (cd "$cwd" && "$FLY_BIN" "$@")
}

[ "$dry" = 1 ] && echo "$me: dry run: nothing below is run"

# 1-2. seal into a private file, then stage the secrets from it
seal=("$PP_BIN" seal --env-file "$targets" --org "$org" --app "$app" ${seal_args[@]+"${seal_args[@]}"})
echo "+ $(show "$PP" "${seal[@]:1}") > \$SEALED"
echo "+ $(show "$FLY" secrets import --stage -a "$app") < \$SEALED"
if [ "$dry" = 0 ]; then
  sealed=$(umask 077 && mktemp)
  trap 'rm -f "$sealed"' EXIT
  "${seal[@]}" > "$sealed"
  "$FLY_BIN" secrets import --stage -a "$app" < "$sealed"
  rm -f "$sealed"
fi

# 3. the images, from the repository root (the build context)
fly deploy --build-only --push -a "$app" -c deploy/fly/build.toml \
  --dockerfile Dockerfile --image-label "sidecar-$tag"
if [ "$build_shell" = 1 ]; then
  fly deploy --build-only --push -a "$app" -c deploy/fly/build.toml \
    --dockerfile examples/shell/Dockerfile --ignorefile examples/shell/Dockerfile.dockerignore \
    --image-label shell
fi

# 4. the Machine, from deploy/fly (where machine_config is found)
cwd=$FLYDIR prefix="cd deploy/fly && " fly deploy -a "$app" -c fly.toml --image "$sidecar_image" --ha=false

# 5. the smoke test, a few times while the shell container starts
smoke=(ssh console -a "$app" --container shell -C "proxypilot-trust --check")
if [ "$dry" = 1 ]; then
  fly "${smoke[@]}"
  exit 0
fi
for try in 1 2 3 4 5 6; do
  if fly "${smoke[@]}"; then
    echo "$me: deployed $app; the shell container trusts the sidecar"
    exit 0
  fi
  [ "$try" = 6 ] || { echo "$me: the shell is not ready yet; trying again in 10 s"; sleep 10; }
done
die "the smoke test failed (logs: $(show "$FLY" logs -a "$app"))"
