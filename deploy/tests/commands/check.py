"""Every command the README shows, run as written, and the one build every script shares.

`deploy/tests/commands/run` calls this twice:

  check.py static   no system needed: the scripts under deploy/ call cargo only through the
                    preamble (deploy/preamble.sh), whose build_system builds the one package
                    list; and the test build resolves every dependency the system's build
                    needs with the same features, so neither compiles a dependency twice.
  check.py live     inside deploy/with-system (a system as deploy/up starts it, debug
                    profile): each script's build compiles nothing after deploy/up's; then
                    the README's commands, as written.

What "as written" means here. The README marks each shell block with the comment before it:

  <!-- commands: run[; expects: TEXT] -->    each line runs, in order, in one shell; the
                                            block exits 0 and its output contains TEXT
  <!-- commands: serve[; expects: TEXT] -->  a command that runs until Ctrl-C: it must
                                            become ready (the health address it prints
                                            answers /readyz), its /metrics contain TEXT, and
                                            Ctrl-C (SIGINT) stops it with status 0
  <!-- commands: help -->                   each line's script answers --help with status 0
                                            (deploy/up is the system this test runs in, and
                                            deploy/test the runner of this very test)

An unmarked shell block fails the test. Commands written inline in the prose are checked
too: a script at deploy/'s root (deploy/chaos, deploy/cluster up, deploy/bench ...) answers
--help with status 0 (they run for minutes or need a cluster: not here), a test runner
under deploy/tests/ or .ci/ exists and is executable (deploy/test and CI run them), any
other inline command (curl, a binary under target/) must be in a marked block, or the test
fails. The commands run in a scratch directory whose deploy/ links to the repository's,
with no REG_* variable but REG_DATA_DIR (the system's data directory, as a reader's shell
would have ./data); the addresses are deploy/up's defaults, and this system listens on free
ports, so each default address in a command is replaced by the one in use (printed).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import threading
import urllib.error
import urllib.request

ROOT = os.path.realpath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
README = os.path.join(ROOT, "README.md")

# Generous bounds that only keep a broken run from hanging CI; nothing is timed.
COMMAND_LIMIT_S = 600
READY_LIMIT_S = 120


def fail(message):
    print(f"deploy/tests/commands: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


STARTED = time.monotonic()


def note(message):
    elapsed = time.monotonic() - STARTED
    print(f"deploy/tests/commands [{elapsed:5.1f} s]: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# static


def scripts():
    """Every shell script of deploy/ and CI: path relative to the root, text."""
    found = []
    for name in sorted(os.listdir(os.path.join(ROOT, "deploy"))):
        path = os.path.join("deploy", name)
        full = os.path.join(ROOT, path)
        if os.path.isfile(full) and (os.access(full, os.X_OK) or name.endswith(".sh")):
            found.append(path)
    tests = os.path.join(ROOT, "deploy", "tests")
    for name in sorted(os.listdir(tests)):
        run = os.path.join("deploy", "tests", name, "run")
        if os.path.isfile(os.path.join(ROOT, run)):
            found.append(run)
    found.append(".ci/run")
    return [(path, open(os.path.join(ROOT, path), encoding="utf-8").read()) for path in found]


def code_lines(text):
    """The lines of a shell script that are not comments (nor heredoc usage text)."""
    lines, heredoc = [], None
    for line in text.splitlines():
        if heredoc:
            if line.strip() == heredoc:
                heredoc = None
            continue
        stripped = line.strip()
        if stripped.startswith("#"):
            continue
        match = re.search(r"<<-?\s*'?\"?([A-Z_]+)'?\"?", line)
        if match:
            heredoc = match.group(1)
        lines.append(line)
    return lines


# Where cargo may be called, and why.
CARGO_ALLOWED = {
    "deploy/preamble.sh": "build_system, build_alone, build_bench and need_surreal_build",
    "deploy/test": "the test build (cargo nextest), checked against the system's below",
    ".ci/run": "fmt and clippy",
}
# Which scripts may build something other than the whole system, and why.
OWN_BUILDS = {
    "build_bench": ("deploy/bench", "deploy/bench-contention", "deploy/bench-takeover",
                    "deploy/bench-scale"),
    "build_alone": ("deploy/replay",),
    # SurrealDB's server, a package outside the workspace, in a target directory of its own.
    "need_surreal_build": ("deploy/install-surreal", "deploy/up", "deploy/test"),
}


def workspace_members():
    out = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
                         cwd=ROOT, check=True, capture_output=True, text=True).stdout
    return {p["name"] for p in json.loads(out)["packages"]}


def system_packages():
    preamble = open(os.path.join(ROOT, "deploy", "preamble.sh"), encoding="utf-8").read()
    match = re.search(r"^system_packages=\(([^)]*)\)", preamble, re.M)
    if not match:
        fail("deploy/preamble.sh has no system_packages=(...) list")
    return match.group(1).split()


def features(args):
    """Resolved features per package (name version -> set of feature lists), as cargo tree
    prints them for one invocation."""
    out = subprocess.run(
        ["cargo", "tree", "--locked", "--prefix", "none", "-f", "{p} [{f}]", *args],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    resolved = {}
    for line in out.splitlines():
        line = re.sub(r" \(\*\)$| \(proc-macro\)", "", line)
        line = re.sub(r" \(/[^)]*\)", "", line)
        match = re.match(r"^(\S+ v\S+) \[(.*)\]$", line)
        if match:
            resolved.setdefault(match.group(1), set()).add(match.group(2))
    return resolved


def static():
    for path, text in scripts():
        code = code_lines(text)
        calls = [l for l in code if re.search(r"(^|[\s;&|(])cargo\s", l)]
        if calls and path not in CARGO_ALLOWED:
            fail(f"{path} calls cargo itself ({calls[0].strip()!r}): build through "
                 "deploy/preamble.sh's build_system, so that it builds what deploy/up built")
        for function, allowed in OWN_BUILDS.items():
            uses = [l for l in code if re.search(rf"(^|\s){function}\s", l)]
            if uses and path not in allowed and path != "deploy/preamble.sh":
                fail(f"{path} calls {function}; only {', '.join(allowed)} may")
        runs_binary = any("target_dir" in l for l in code) and path != "deploy/preamble.sh"
        builds = any(re.search(r"(^|\s)build_(system|alone|bench)(\s|$)", l) for l in code)
        if runs_binary and not builds:
            fail(f"{path} runs a binary it does not build through the preamble")
    note("the scripts build only through deploy/preamble.sh (" + "; ".join(
        f"{k}: {v}" for k, v in CARGO_ALLOWED.items()) + ")")

    packages = system_packages()
    system = features([a for p in packages for a in ("-p", p)] + ["-e", "normal,build"])
    tests = features(["--workspace", "--exclude", "bench", "-e", "normal,build,dev"])
    # Workspace members may differ (the tests turn on streams' samples): they are compiled
    # for the tests anyway. Dependencies may not.
    workspace = workspace_members()
    shared = [k for k in system if k in tests and k.split()[0] not in workspace]
    apart = sorted(
        f"{k}: system {sorted(system[k])}, tests {sorted(tests[k])}"
        for k in shared
        if not system[k] <= tests[k]
    )
    if apart:
        fail("the system's build and the test build resolve these dependencies with other "
             "features, so CI would compile them (and what depends on them) twice:\n  "
             + "\n  ".join(apart))
    note(f"the test build resolves the {len(shared)} dependencies it shares with the system's "
         f"build ({' '.join(packages)}) with the same features")


# ---------------------------------------------------------------------------------------
# live


def readme_env():
    """A reader's shell: no REG_* setting but where the system's data is."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REG_")}
    env["REG_DATA_DIR"] = os.environ["REG_DATA_DIR"]
    return env


def system_settings():
    settings = {}
    with open(os.path.join(os.environ["REG_DATA_DIR"], "system.env"), encoding="utf-8") as f:
        for line in f:
            match = re.match(r"^([A-Z_][A-Z0-9_]*)=(.*)$", line.rstrip("\n"))
            if match:
                settings[match.group(1)] = match.group(2)
    return settings


def address_map(settings):
    """deploy/up's default port -> the address this system uses instead."""
    mapping = {
        "8080": settings["REG_INGEST_LISTEN"],
        "8081": settings["REG_READ_LISTEN"],
        "8082": settings["REG_PROCESSOR_LISTEN"],
        "8090": settings["REG_REGISTRY_LISTEN"],
        "8091": settings["REG_WEBHOOK_LISTEN"],
        "2525": settings["REG_SMTP_LISTEN"],
        "4222": "127.0.0.1:" + settings["REG_NATS_PORT"],
    }
    return mapping


def localise(command, mapping):
    return re.sub(
        r"\b(?:127\.0\.0\.1|localhost):(\d+)\b",
        lambda m: mapping.get(m.group(1), m.group(0)),
        command,
    )


def run(argv, env, cwd, what, input_text=None):
    try:
        done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True,
                              timeout=COMMAND_LIMIT_S, input=input_text)
    except subprocess.TimeoutExpired:
        fail(f"{what} did not finish within {COMMAND_LIMIT_S} s")
    return done


def builds_compile_nothing(env):
    """After deploy/up's build (with-system's deploy/up --debug), each script's build, run
    by the script itself up to its build (REG_BUILD_ONLY=1), compiles nothing. The system's
    profile is picked by deploy/replay and deploy/replica from the data directory; chaos and
    failover take --debug (a run defaults to release, on purpose)."""
    checks = [
        ("deploy/up", ["--debug", "--data-dir", os.path.join(os.environ["REG_DATA_DIR"], "build-check")]),
        ("deploy/replay", ["decisions"]),
        ("deploy/replica", ["--region", "mazowieckie"]),
        ("deploy/chaos", ["--debug"]),
        ("deploy/failover", ["--debug"]),
    ]
    building = {p for p, text in scripts() if p != "deploy/preamble.sh"
                and any(re.search(r"(^|\s)build_system(\s|$)", l) for l in code_lines(text))}
    missing = building - {script for script, _ in checks}
    if missing:
        fail(f"{', '.join(sorted(missing))} build(s) the system: add them to this check")
    for script, args in checks:
        done = run([os.path.join(ROOT, script), *args], {**env, "REG_BUILD_ONLY": "1"}, ROOT,
                   f"{script}'s build")
        compiled = [l.strip() for l in done.stderr.splitlines() if l.strip().startswith("Compiling ")]
        if done.returncode != 0:
            fail(f"{script}'s build exited {done.returncode}:\n{done.stderr[-3000:]}")
        if compiled:
            fail(f"{script}'s build after deploy/up's compiled {len(compiled)} crate(s): "
                 + ", ".join(compiled[:10]))
        note(f"{script} {' '.join(args)}: its build after deploy/up's compiled nothing")


def http(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except OSError as error:
        return None, str(error)


def eventually(what, check, limit_s=READY_LIMIT_S):
    deadline = time.monotonic() + limit_s
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            fail(f"{what}: not within {limit_s} s")
        time.sleep(0.2)


def one_decision():
    """A registration in mazowieckie, and its decision stored: what the README's replay
    of that region's decisions shows."""
    date = subprocess.run(["date", "-d", "+60 days", "+%F"], env={**os.environ, "TZ": "Europe/Warsaw"},
                          check=True, capture_output=True, text=True).stdout.strip()
    body = json.dumps({
        "national_id": "44051401359", "full_name": "Jan Kowalski", "birth_date": "1944-05-14",
        "email": "jan@example.pl", "region": "mazowieckie", "location": "warszawa-narodowy",
        "date": date,
    }).encode()
    status, text = http(os.environ["REG_TEST_INGEST_URL"] + "/v1/registrations", "POST", body,
                        {"Content-Type": "application/json"})
    if status != 202:
        fail(f"the setup registration was answered {status}: {text}")
    answer = json.loads(text)
    url = f"{os.environ['REG_TEST_READ_URL']}/v1/registrations/{answer['registration_id']}"
    auth = {"Authorization": f"Bearer {answer['token']}"}

    def decided():
        status, text = http(url, headers=auth)
        return status == 200 and json.loads(text)["status"] != "received" and text

    note(f"setup: a registration in mazowieckie, decided: {eventually('its decision', decided)}")


def blocks():
    """The README's shell blocks: (line number, marker or None, block text)."""
    lines = open(README, encoding="utf-8").read().splitlines()
    found, i = [], 0
    while i < len(lines):
        fence = re.match(r"^(\s*)```(\w*)\s*$", lines[i])
        if not fence:
            i += 1
            continue
        indent, language, start = fence.group(1), fence.group(2), i
        i += 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        if language not in ("sh", "bash", "shell", "console"):
            continue
        marker = None
        if start > 0:
            m = re.match(r"^\s*<!--\s*commands:\s*(\w+)(?:;\s*expects:\s*(.*?))?\s*-->\s*$",
                         lines[start - 1])
            if m:
                marker = (m.group(1), m.group(2))
        found.append((start + 1, marker, "\n".join(body)))
    return found


def inline_commands():
    """Code spans in the README's prose that start with a path of this repository or a
    command, outside fenced blocks."""
    text = re.sub(r"```.*?```", "", open(README, encoding="utf-8").read(), flags=re.S)
    spans = re.findall(r"`([^`\n]+)`", text)
    return [s for s in spans if re.match(r"^(deploy/|\.ci/|curl\s|target/|REG_[A-Z_]+=\S*\s)", s)]


def help_ok(script, env, cwd):
    done = run([script, "--help"], env, cwd, f"{script} --help")
    if done.returncode != 0 or not done.stdout.strip():
        fail(f"{script} --help exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")


def live():
    env = readme_env()
    builds_compile_nothing(env)
    one_decision()
    mapping = address_map(system_settings())
    work = tempfile.mkdtemp(prefix="readme-commands.")
    os.symlink(os.path.join(ROOT, "deploy"), os.path.join(work, "deploy"))
    marked_text = []
    helped, ran = set(), set()
    try:
        for line, marker, body in blocks():
            if marker is None:
                fail(f"README.md:{line}: a shell block with no <!-- commands: run|serve|help --> "
                     "before it: mark how this test runs it")
            kind, expects = marker
            marked_text.append(body)
            if kind in ("run", "serve"):
                ran.update(l.split()[0] for l in body.splitlines()
                           if l.strip() and not l.lstrip().startswith("#"))
            if kind == "help":
                for command in body.splitlines():
                    command = command.split("#")[0].strip()
                    if command:
                        script = command.split()[0]
                        help_ok(script, env, work)
                        helped.add(script)
                        note(f"README.md:{line}: {script} --help: ok")
            elif kind == "run":
                local = localise(body, mapping)
                if local != body:
                    note(f"README.md:{line}: on this system's addresses:\n{local}")
                done = run(["bash", "-euo", "pipefail", "-c", local], env, work, f"README.md:{line}")
                if done.returncode != 0:
                    fail(f"README.md:{line} exited {done.returncode}:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
                if expects and expects not in done.stdout:
                    fail(f"README.md:{line}: the output lacks {expects!r}:\n{done.stdout[-3000:]}")
                note(f"README.md:{line}: ran, exit 0" + (f", output has {expects}" if expects else "")
                     + ":\n" + "\n".join("    " + l for l in done.stdout.splitlines()[:6]))
            elif kind == "serve":
                serve(line, localise(body, mapping), expects, env, work)
            else:
                fail(f"README.md:{line}: unknown marker {kind!r}")

        # Inline commands: scripts answer --help; test runners exist; nothing else unrun.
        for span in inline_commands():
            first = span.split()[0]
            path = os.path.join(ROOT, first)
            if (first.startswith("deploy/") and os.path.dirname(first) == "deploy"
                    and os.path.isfile(path) and os.access(path, os.X_OK)):
                if first in ran:
                    note(f"README: `{span}`: ran above")
                elif first not in helped:
                    help_ok(first, env, work)
                    helped.add(first)
                    note(f"README: `{span}`: {first} --help: ok (not run here: long, or needs a cluster)")
            elif first.startswith(("deploy/", ".ci/")) and os.access(path, os.X_OK) and os.path.isfile(path):
                note(f"README: `{span}`: exists (deploy/test and CI run it)")
            elif first.startswith(("deploy/", ".ci/")):
                if not os.path.exists(path.rstrip("/")):
                    fail(f"README names `{span}`, which does not exist")
            elif first.startswith("target/"):
                if "/release/" in first or "/debug/" in first:
                    if not any(span in text for text in marked_text):
                        fail(f"README: `{span}` runs a binary no marked block runs")
            elif not any(span in text for text in marked_text):
                fail(f"README: the inline command `{span}` is in no marked block: put it in one, "
                     "so that this test runs it")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    note("every command the README shows ran as written")


def serve(line, command, expects, env, cwd):
    """Starts a command that runs until Ctrl-C, waits for its health address to answer
    /readyz, checks its /metrics, then stops it as Ctrl-C does."""
    process = subprocess.Popen(["bash", "-c", command], env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output = []
    try:
        address = None
        deadline = time.monotonic() + COMMAND_LIMIT_S
        while address is None:
            text = process.stdout.readline()
            if not text:
                fail(f"README.md:{line}: `{command}` exited {process.wait()} before it was up:\n"
                     + "".join(output[-40:]))
            output.append(text)
            match = re.search(r"health and metrics on (http://\S+?)[;\s]", text)
            if match:
                address = match.group(1)
            if time.monotonic() > deadline:
                fail(f"README.md:{line}: `{command}` printed no health address")
        # Its log goes on while it runs: keep reading it, so it never blocks on a full pipe.
        threading.Thread(target=lambda: output.extend(process.stdout), daemon=True).start()
        eventually(f"README.md:{line}: {address}/readyz", lambda: http(address + "/readyz")[0] == 200)
        status, metrics = http(address + "/metrics")
        if status != 200 or (expects and expects not in metrics):
            fail(f"README.md:{line}: its /metrics ({status}) lack {expects!r}")
        sample = [l for l in metrics.splitlines() if expects and l.startswith(expects)]
        # Ctrl-C: SIGINT to the foreground process group.
        os.killpg(process.pid, signal.SIGINT)
        try:
            code = process.wait(timeout=READY_LIMIT_S)
        except subprocess.TimeoutExpired:
            fail(f"README.md:{line}: `{command}` did not stop on Ctrl-C")
        if code != 0:
            fail(f"README.md:{line}: `{command}` exited {code} on Ctrl-C:\n" + "".join(output[-30:]))
        note(f"README.md:{line}: `{command}` was ready at {address} ({'; '.join(sample)}) "
             "and stopped on Ctrl-C with status 0")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


if __name__ == "__main__":
    {"static": static, "live": live}[sys.argv[1]]()
