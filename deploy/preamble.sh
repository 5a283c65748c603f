# The shared preamble of the scripts under deploy/: sourced, never run. It gives each script
# the repository root, the pinned nats-server, the one way to build the system's binaries
# (so that every script builds with deploy/up's cargo invocation and, after deploy/up, finds
# its binary already built, in the profile deploy/up used), and the settings of the system
# deploy/up started.
#
#   . "$(dirname "${BASH_SOURCE[0]}")/preamble.sh"          # a script at deploy/'s root
#   . "$(dirname "${BASH_SOURCE[0]}")/../../preamble.sh"    # one in a folder below it
set -euo pipefail

# The repository root, whichever directory the script was started from (and through a
# symbolic link to deploy/, as the README's commands are run by deploy/tests/commands).
root="$(cd -P "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Installs the pinned nats-server when missing (deploy/install-nats) and exports its path for
# the programs that start one.
need_nats() {
  "$root/deploy/install-nats" >&2
  export NATS_SERVER_BIN="${NATS_SERVER_BIN:-$root/.tools/bin/nats-server}"
}

# Builds SurrealDB's server (deploy/surreal-server, a package outside the workspace) in a
# profile and installs it as .tools/bin/surreal: need_surreal_build release|debug. It shares
# the workspace's target directory: cargo keeps each crate's builds apart by features, so the
# dependencies the server resolves as the services do are compiled once, and only SurrealDB's
# crates (other features) a second time.
need_surreal_build() {
  local profile="$1" args=() target
  target="${CARGO_TARGET_DIR:-$root/target}"
  [[ "$profile" == release ]] && args+=(--release)
  echo "Building SurrealDB's server ($profile; the first build takes several minutes) ..." >&2
  CARGO_TARGET_DIR="$target" cargo build --locked --manifest-path "$root/deploy/surreal-server/Cargo.toml" "${args[@]}" >&2
  mkdir -p "$root/.tools/bin"
  install -m 0755 "$target/$profile/surreal" "$root/.tools/bin/surreal"
  export SURREAL_SERVER_BIN="$root/.tools/bin/surreal"
}

# The directory cargo writes a profile's binaries to: target_dir release|debug.
target_dir() {
  echo "${CARGO_TARGET_DIR:-$root/target}/$1"
}

# The system's packages: every binary deploy/up starts, and every one another script runs
# beside it (the analysts' replay, the chaos and failover harness). Cargo resolves dependency
# features over the packages one invocation selects, so a script that built fewer of them
# would resolve SurrealDB and its neighbours with other features and compile them again
# (13 minutes on a fresh machine). Every script therefore builds this whole list in one
# invocation, build_system: after deploy/up, each script's build compiles nothing
# (deploy/tests/commands/run checks it).
system_packages=(ingest processors projections registry-sim receivers nats-accounts replay e2e)

# Builds every binary of the system in a profile: build_system release|debug.
# Progress goes to stderr, so a script's standard output stays its own. With
# REG_BUILD_ONLY=1 the script stops once built: how the check above runs each script's build.
build_system() {
  local profile="$1" args=()
  local package
  for package in "${system_packages[@]}"; do args+=(-p "$package"); done
  [[ "$profile" == release ]] && args+=(--release)
  cargo build --manifest-path "$root/Cargo.toml" "${args[@]}" >&2
  if [[ "${REG_BUILD_ONLY:-0}" == 1 ]]; then exit 0; fi
}

# Builds one package by itself, on a machine where no system was built (no system.env in
# the data directory): build_alone release|debug PACKAGE. For deploy/replay against another
# machine's system, whose build needs no database. With a system built here, scripts use
# build_system instead: a build of fewer packages would resolve other features.
build_alone() {
  local profile="$1" package="$2" args=()
  [[ "$profile" == release ]] && args+=(--release)
  cargo build --manifest-path "$root/Cargo.toml" -p "$package" "${args[@]}" >&2
  if [[ "${REG_BUILD_ONLY:-0}" == 1 ]]; then exit 0; fi
}

# Builds the benchmarks (package bench) in release: build_bench CARGO-ARGUMENTS...
# Kept apart from the system's build on purpose: the contention benchmark's redis client
# turns on num-bigint's std feature, which SurrealDB's JWT support also builds (through
# jsonwebtoken and simple_asn1), so with
# bench in the system's list every build of the system and every test build would compile
# SurrealDB twice. The benchmarks therefore compile that chain once more, in their own
# feature set, the first time they are built.
build_bench() {
  cargo build --release --manifest-path "$root/Cargo.toml" -p bench "$@" >&2
  if [[ "${REG_BUILD_ONLY:-0}" == 1 ]]; then exit 0; fi
}

# --help of a benchmark script, without the release build of the benchmarks: the script's
# opening comment, then the benchmark's own options when a run has built it.
bench_help() { # script, binary, the binary's help arguments...
  local script="$1" binary
  binary="$(target_dir release)/$2"
  shift 2
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$script"
  echo
  if [[ -x "$binary" ]]; then
    "$binary" "$@"
  else
    echo "Every option: this script's --help lists them once a first run has built the benchmarks."
  fi
}

# The data directory of the system the operator and analyst scripts speak to: REG_DATA_DIR,
# or deploy/up's default.
system_data_dir() {
  echo "${REG_DATA_DIR:-$root/data}"
}

# Loads DATA_DIR/system.env, which deploy/up writes before it starts the services: the
# settings they run with (REG_NATS_URL, TLS, listen addresses, the registry's and
# receivers' addresses...), the profile and target directory they were built in, and the
# names of the secrets it was given but did not write. A variable already set in the
# environment wins over the file. Returns 1 (loading nothing) when there is no such file.
load_system_env() { # data-dir
  local file="$1/system.env" line name
  [[ -r "$file" ]] || return 1
  while IFS= read -r line; do
    [[ "$line" =~ ^([A-Z_][A-Z0-9_]*)= ]] || continue
    name="${BASH_REMATCH[1]}"
    [[ -n "${!name+set}" ]] && continue
    eval "export $line"
  done <"$file"
  # Build where the system was built, so the build is deploy/up's and compiles nothing.
  export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${REG_SYSTEM_TARGET_DIR:-$root/target}}"
}

# The profile of the system's last deploy/up in a data directory (release when none ran):
# scripts run the binaries it built rather than build another profile.
system_profile() { # data-dir
  local file="$1/system.env" profile=release
  if [[ -r "$file" ]]; then
    profile="$(sed -n 's/^REG_SYSTEM_PROFILE=//p' "$file")"
  fi
  echo "${profile:-release}"
}

# Free loopback TCP ports: free_ports COUNT prints COUNT port numbers, distinct.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}
