#!/usr/bin/env python3
"""Runs docker/Dockerfile's build stage without Docker, on exactly the files its COPY lines take from a plain
checkout (git's tracked files) after .dockerignore, so the suite proves that the Dockerfile users run builds.

    docker/run-build-stage.py [WORKDIR]      (default: .build-docker)

WORKDIR/src stands for the stage's WORKDIR and WORKDIR/out for its /out; the RUN commands run there with bash.
`RUN apt-get …` lines are skipped: scripts/install-deps.sh installs the same packages on this machine. The
context is synced, not recopied, so SwiftPM's build inside it stays incremental between runs.
"""
import os, re, shlex, shutil, subprocess, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
work = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".build-docker"))


def ignore_rules():
    rules = []
    with open(os.path.join(root, ".dockerignore")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = line.lstrip("!").strip("/")
            # Docker's matching: `*` within one path element, `**` across any number of them, a match on a
            # directory covers everything under it.
            regex = ""
            for part in re.split(r"(\*\*/?|\*|\?)", pattern):
                regex += {"**/": "(.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
            rules.append((re.compile(regex + "(/.*)?$"), negate))
    return rules


def ignored(path, rules):
    result = False
    for regex, negate in rules:
        if regex.match(path):
            result = not negate
    return result


def build_stage():
    """The first stage's instructions, continuation lines joined."""
    lines, current = [], ""
    with open(os.path.join(root, "docker", "Dockerfile")) as f:
        for raw in f:
            line = raw.rstrip("\n")
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += line[:-1] + " " if line.endswith("\\") else line
            if not line.endswith("\\"):
                lines.append(current.strip())
                current = ""
    stage = []
    for line in lines:
        if line.upper().startswith("FROM ") and stage:
            break
        stage.append(line)
    return stage


def main():
    rules = ignore_rules()
    tracked = subprocess.run(["git", "ls-files"], cwd=root, check=True, capture_output=True, text=True).stdout.split()
    context = [path for path in tracked if not ignored(path, rules) and os.path.isfile(os.path.join(root, path))]
    src, out = os.path.join(work, "src"), os.path.join(work, "out")
    workdir = None
    selected = set()
    commands = []
    for instruction in build_stage():
        keyword, _, rest = instruction.partition(" ")
        keyword = keyword.upper()
        if keyword == "WORKDIR":
            workdir = rest.strip()
        elif keyword == "COPY":
            *sources, destination = shlex.split(rest)
            assert not any(s.startswith("--") for s in sources), "COPY flags are not supported here"
            for source in sources:
                source = source.strip("/")
                for path in context:
                    if path == source or path.startswith(source + "/"):
                        relative = os.path.relpath(path, os.path.dirname(source)) if destination.endswith("/") or destination == "." \
                            else os.path.join(destination, os.path.relpath(path, source)) if path != source else destination
                        selected.add((path, os.path.normpath(relative)))
        elif keyword == "RUN":
            if rest.strip().startswith("apt-get"):
                continue
            commands.append(rest.replace("/out/", out + "/"))
    assert workdir == "/src", "the build stage's WORKDIR is /src"
    # Sync the context into src/: copy what changed, delete what the COPY lines no longer take (not .build).
    wanted = {}
    for path, relative in selected:
        wanted[relative] = path
    for directory, folders, files in os.walk(src):
        if directory == src and ".build" in folders:
            folders.remove(".build")
        for name in files:
            relative = os.path.relpath(os.path.join(directory, name), src)
            if relative not in wanted:
                os.remove(os.path.join(directory, name))
    for relative, path in wanted.items():
        target = os.path.join(src, relative)
        source = os.path.join(root, path)
        if not os.path.exists(target) or open(target, "rb").read() != open(source, "rb").read():
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(source, target)
    shutil.rmtree(out, ignore_errors=True)
    print(f"build stage: {len(wanted)} files from the context, {len(commands)} RUN command(s) in {src}", flush=True)
    for command in commands:
        subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=src, check=True)
    for name in sorted(os.listdir(os.path.join(out, "usr", "bin"))):
        print(os.path.join(out, "usr", "bin", name))


main()
