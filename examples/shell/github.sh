#!/bin/sh
# GitHub through the sidecar with a dummy token: gh sends "Authorization: token dummy", the
# sidecar drops it and the tokenizer injects the real token. Prints who that token belongs to.
set -eu
: "${GH_TOKEN:=dummy}"
export GH_TOKEN
gh api /user --jq '"logged in to api.github.com as " + .login'
