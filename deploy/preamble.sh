# The shared preamble of the scripts under deploy/: sourced, never run. It gives each script
# the repository root, the pinned nats-server and the one way to build the project's
# binaries, so that every script builds with the same cargo invocation and profile and,
# after deploy/up, finds its binary already built.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/preamble.sh"          # a script at deploy/'s root
#   . "$(dirname "${BASH_SOURCE[0]}")/../../preamble.sh"    # one in a folder below it
set -euo pipefail

# The repository root, whichever directory the script was started from.
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Installs the pinned nats-server when missing (deploy/install-nats) and exports its path for
# the programs that start one.
need_nats() {
  "$root/deploy/install-nats" >&2
  export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$root/.tools/bin/nats-server}"
}

# The directory cargo writes a profile's binaries to: target_dir release|debug.
target_dir() {
  echo "${CARGO_TARGET_DIR:-$root/target}/$1"
}

# Builds packages or binaries in a profile: build release|debug CARGO-ARGUMENTS...
# Progress goes to stderr, so a script's standard output stays its own.
build() {
  local profile="$1"; shift
  if [[ "$profile" == release ]]; then
    cargo build --release --manifest-path "$root/Cargo.toml" "$@" >&2
  else
    cargo build --manifest-path "$root/Cargo.toml" "$@" >&2
  fi
}
