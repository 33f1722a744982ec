"""The Dockerfile, parsed with BuildKit's own parser (PyPI `dockerfile`): there is no Docker
engine here to build it, so check what the issue asks of the image's shape."""

from __future__ import annotations

import pathlib

import dockerfile


def check_dockerfile(root: pathlib.Path, ports: dict) -> list[str]:
    path = root / "Dockerfile"
    try:
        cmds = dockerfile.parse_file(str(path))
    except (dockerfile.GoParseError, FileNotFoundError) as e:
        return [f"Dockerfile: {e}"]
    problems = []
    froms = [i for i, c in enumerate(cmds) if c.cmd.upper() == "FROM"]
    if len(froms) < 2:
        problems.append("Dockerfile: not a multi-stage build")
        return problems
    final = cmds[froms[-1]:]
    base = final[0].value[0]
    if not (base.startswith("gcr.io/distroless/") or base == "scratch"):
        problems.append(f"Dockerfile: runtime base {base} is not minimal (distroless or scratch)")
    users = [c.value[0] for c in final if c.cmd.upper() == "USER"]
    if not users or users[-1].split(":")[0] in ("0", "root") or not users[-1].split(":")[0].isdigit():
        problems.append("Dockerfile: the runtime stage must end with a numeric non-root USER")
    for c in final[1:]:
        op = c.cmd.upper()
        if op in ("RUN", "ADD"):
            problems.append(f"Dockerfile: runtime stage runs {op}; it should only copy the binary")
        if op == "COPY" and (not any(f.startswith("--from=") for f in c.flags) or c.value[-1] != "/usr/local/bin/carehub"):
            problems.append(f"Dockerfile: runtime stage copies {c.value}; only the carehub binary belongs there")
    entry = [c.value for c in final if c.cmd.upper() == "ENTRYPOINT"]
    if not entry or entry[-1][0] != "/usr/local/bin/carehub":
        problems.append("Dockerfile: ENTRYPOINT must be /usr/local/bin/carehub (the chart passes only args)")
    exposed = {v for c in final if c.cmd.upper() == "EXPOSE" for v in c.value}
    for name in ("grpc", "admin"):
        if str(ports[name]) not in exposed:
            problems.append(f"Dockerfile: does not EXPOSE the chart's {name} port {ports[name]}")
    ignore_file = root / ".dockerignore"
    lines = ignore_file.read_text().splitlines() if ignore_file.exists() else []
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if rules[:1] != ["*"]:
        problems.append(".dockerignore: must start by excluding everything (*) and allow back only the sources")
    return problems
