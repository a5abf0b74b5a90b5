"""Helpers of the deployment tests: compose interpolation, nginx config rendering, `sepconv serve` processes.

Kept apart from the tests so that every test module derives its nginx configs from the repository's template
the same way, and starts and stops real servers the same way.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
NGINX_TEMPLATE = ROOT / "deploy" / "nginx" / "nginx.conf"
COMPOSE_FILE = ROOT / "docker-compose.yml"

_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation (``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``), recursively.

    Compose validates the file against its schema after interpolation, so the tests do the same.
    """
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, op, arg = match["name"], match["op"], match["arg"] or ""
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        if op in (":?", "?") and not env.get(name):
            raise KeyError(f"{name}: {arg}")
        return env.get(name, "")

    result = _INTERPOLATION.sub(substitute, value)
    # Compose converts the interpolated scalars where the schema wants numbers (e.g. deploy.replicas).
    return int(result) if result != value and result.isdigit() else result


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    for candidate in ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if Path(candidate).is_file():
            return candidate
    return None


def _replace_servers(text: str, marker: str, upstreams: Sequence[str], server_params: str | None) -> str:
    block = re.search(rf"(?P<indent>[ \t]*)# {marker}-begin\n(?P<body>.*?)[ \t]*# {marker}-end", text, re.S)
    if block is None:
        raise ValueError(f"{NGINX_TEMPLATE}: no {marker}-begin/end markers")
    original = re.search(r"server\s+\S+\s*(?P<params>[^;]*);", block["body"])
    if original is None:
        raise ValueError(f"{NGINX_TEMPLATE}: no server line between the {marker} markers")
    params = original["params"] if server_params is None else server_params
    servers = "".join(f"{block['indent']}server {u} {params};\n" for u in upstreams)
    return text[:block.start("body")] + servers + text[block.end("body"):]


def render_nginx_conf(upstreams: Sequence[str], listen: str, prefix: Path, server_params: str | None = None, *,
                      grpc_upstreams: Sequence[str], grpc_listen: str) -> str:
    """The repository's nginx.conf with only the environment-specific lines replaced.

    ``upstreams`` / ``grpc_upstreams`` (``host:port``) replace the server lines between the ``upstream-servers``
    / ``grpc-upstream-servers`` markers (keeping their parameters: max_fails, fail_timeout, unless
    ``server_params`` is given), ``listen`` / ``grpc_listen`` replace the REST and the gRPC (``http2``) listen
    addresses, and the log and temp paths move under ``prefix`` (so nginx needs neither root nor the system's
    /var/log, /var/lib/nginx). Everything else is the template verbatim.
    """
    text = NGINX_TEMPLATE.read_text()
    text = _replace_servers(text, "upstream-servers", upstreams, server_params)
    text = _replace_servers(text, "grpc-upstream-servers", grpc_upstreams, server_params)
    text, n = re.subn(r"^(\s*)listen\s+(?![^;]*\bhttp2\b)[^;]+;", rf"\g<1>listen {listen};", text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{NGINX_TEMPLATE}: no REST listen directive")
    text, n = re.subn(r"^(\s*)listen\s+\S+\s+http2;", rf"\g<1>listen {grpc_listen} http2;", text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{NGINX_TEMPLATE}: no gRPC (http2) listen directive")
    text = re.sub(r"access_log\s+/\S+", f"access_log {prefix / 'access.log'}", text)
    temp_paths = "".join(f"    {kind}_temp_path {prefix / kind};\n"
                         for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    text, n = re.subn(r"^http\s*\{\n", lambda m: m.group(0) + temp_paths, text, count=1, flags=re.M)
    if n != 1:
        raise ValueError(f"{NGINX_TEMPLATE}: no http block")
    return text


def nginx_prefix() -> Path:
    """A fresh prefix folder that nginx's workers can use whichever user they run as."""
    prefix = Path(tempfile.mkdtemp(prefix="sepconv-nginx-"))
    prefix.chmod(0o755)
    for sub in ("logs", "client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (prefix / sub).mkdir()
        (prefix / sub).chmod(0o777)
    return prefix


def nginx_command(conf: Path, prefix: Path, *args: str) -> list[str]:
    """nginx with its prefix, error log and pid under ``prefix``; in the foreground."""
    directives = f"pid {prefix / 'nginx.pid'}; daemon off;"
    binary = nginx_binary()
    assert binary is not None
    return [binary, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(conf), "-g", directives, *args]


def nginx_test(conf: Path, prefix: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(nginx_command(conf, prefix, "-t"), capture_output=True, text=True, timeout=60)


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Wait until ``url`` answers 200; fail early (with the log's tail) if ``process`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited ({process.returncode}):\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready within {timeout}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """SIGTERM (the server drains), then SIGKILL if it does not exit within 20 s."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
