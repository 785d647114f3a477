"""Commands that start Flower's processes for fedit: SuperLink, SuperNode, ``flwr run``.

Free of ``flwr`` imports: it only writes files and runs Flower's own executables from this
environment. ``fedit flower ...`` (cli/main.py) and the tests use it; docs/deploy.md shows the
commands it runs.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fedit.config import Config, ConfigError, save_config
from fedit.io import atomic_directory, atomic_write_text

log = logging.getLogger(__name__)

CONNECTION = "fedit"  # the connection `fedit flower run` adds to $FLWR_HOME/config.toml
RUN_CONFIG_KEY = "fedit-config"  # also in engines/flower.py, which may not be importable here
INSECURE_WARNING = "Flower without TLS: anyone on the network can read and inject adapters"
SUPEREXEC_POLL_SECONDS = 0.2
# A SuperNode's waits between polls for work (Flower: 3 s, fixed; see engines/supernode_main).
SUPERNODE_POLL_SECONDS = 0.2


def require_flower() -> None:
    """Fail with one line naming the extra when flwr is not installed."""
    if importlib.util.find_spec("flwr") is None:
        raise ConfigError("engine flower needs flwr: pip install 'fedit[flower]'")


def wait_for_port(port: int, timeout: float = 60.0, host: str = "127.0.0.1") -> None:
    """Return once something listens on ``host:port`` (a SuperLink starting up).

    Raises:
        TimeoutError: nothing listens after ``timeout`` seconds.
    """
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex((host, port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:g} s")


def executable(name: str) -> str:
    """A Flower executable next to this Python (the venv's bin), else on PATH."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def flower_env(flwr_home: Path | None = None) -> dict[str, str]:
    """The environment for Flower's processes: no telemetry, no update check.

    This Python's bin folder goes first on PATH: the SuperLink and SuperNodes start
    ``flower-superexec`` and the app processes by name. The SuperExec asks its SuperLink or
    SuperNode for a task to start every ``SUPEREXEC_POLL_SECONDS`` (Flower's default is 1 s,
    paid on every message).
    """
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", str(SUPEREXEC_POLL_SECONDS))
    if flwr_home is not None:
        env["FLWR_HOME"] = str(flwr_home)
    return env


def superlink_command(
    address: str = "0.0.0.0:8000",
    certificates: Path | None = None,
    insecure: bool = False,
    auth_supernodes: bool = False,
) -> list[str]:
    """``flower-superlink`` serving every API on ``address``.

    ``certificates`` is a folder with ca.crt, server.pem and server.key (``fedit flower
    certificates`` writes one). The app's dependencies are never installed at run time: the
    SuperLink runs fedit from this environment.
    """
    command = [executable("flower-superlink"), "--disable-runtime-dependency-installation"]
    host, port = address.rsplit(":", 1)
    command += ["--host", host, "--port", port]
    if auth_supernodes:
        command.append("--enable-supernode-auth")
    return command + _tls_args(insecure, certificates, server=True)


def supernode_command(
    superlink: str,
    node_config: dict[str, Any],
    port: int = 9094,
    root_certificates: Path | None = None,
    insecure: bool = False,
    auth_key: Path | None = None,
    poll_seconds: float = SUPERNODE_POLL_SECONDS,
) -> list[str]:
    """``flower-supernode`` connecting to ``superlink`` with its site's node config.

    With ``poll_seconds`` > 0 it runs through ``fedit.engines.supernode_main``, which caps the
    SuperNode's fixed waits (3 s between polls for work) at that; 0 runs Flower's own.
    """
    pairs = " ".join(f"{key}={_toml_value(value)}" for key, value in node_config.items())
    launcher = [executable("flower-supernode")]
    if poll_seconds > 0:
        launcher = [sys.executable, "-m", "fedit.engines.supernode_main"]
        launcher += ["--poll", f"{poll_seconds:g}", "--"]
    command = [*launcher, "--superlink", superlink, "--port", str(port)]
    command += ["--node-config", pairs]
    if auth_key is not None:
        command += ["--auth-supernode-private-key", str(auth_key)]
    if insecure:
        return command + ["--insecure"]
    if root_certificates is None:
        raise ConfigError("--root-certificates: the CA certificate is needed, or --insecure")
    return command + ["--root-certificates", str(root_certificates)]


def _tls_args(insecure: bool, certificates: Path | None, server: bool) -> list[str]:
    if insecure:
        log.warning(INSECURE_WARNING)
        return ["--insecure"]
    if certificates is None:
        raise ConfigError(
            "--certificates: a folder with ca.crt, server.pem, server.key, or --insecure"
        )
    files = {"ca.crt": "--ssl-ca-certfile", "server.pem": "--ssl-certfile"}
    files["server.key"] = "--ssl-keyfile"
    missing = [name for name in files if not (certificates / name).is_file()]
    if missing:
        raise ConfigError(f"--certificates: {certificates} lacks {', '.join(missing)}")
    return [arg for name, flag in files.items() for arg in (flag, str(certificates / name))]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return "'" + str(value).replace("'", "") + "'"


def write_certificates(folder: Path, hosts: list[str], bits: int = 4096) -> Path:
    """A CA and a server certificate for ``hosts`` (IPs or DNS names), made with openssl.

    Writes ca.crt / ca.key (keep ca.key private) and server.pem / server.key into ``folder``,
    all at once or not at all. A folder that already holds files is refused: a new CA would
    silently invalidate the ca.crt every site was given.
    """
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(
            f"certificates: {folder} is not empty (a new CA would invalidate the ca.crt the "
            "sites hold); name an empty or new folder"
        )
    san = ",".join(f"IP:{h}" if h.replace(".", "").isdigit() else f"DNS:{h}" for h in hosts)
    steps = [
        ["genrsa", "-out", "ca.key", str(bits)],
        ["req", "-new", "-x509", "-key", "ca.key", "-sha256", "-days", "365"]
        + ["-subj", "/CN=fedit-ca", "-out", "ca.crt"],
        ["genrsa", "-out", "server.key", str(bits)],
        ["req", "-new", "-key", "server.key", "-subj", f"/CN={hosts[0]}", "-out", "server.csr"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key"]
        + ["-CAcreateserial", "-out", "server.pem", "-days", "365", "-sha256"]
        + ["-extfile", "san.cnf"],
    ]
    try:
        with atomic_directory(folder, private=True) as tmp:  # holds the CA's private key
            (tmp / "san.cnf").write_text(f"subjectAltName={san}\n")
            for step in steps:
                subprocess.run(["openssl", *step], cwd=tmp, check=True, capture_output=True)
    except FileNotFoundError:
        raise ConfigError("certificates: openssl is not installed (Debian: openssl)") from None
    except subprocess.CalledProcessError as err:
        reason = (err.stderr or b"").decode(errors="replace").strip().splitlines()
        raise ConfigError(
            f"certificates: openssl {err.cmd[1]} failed: {reason[-1] if reason else err}"
        ) from None
    return folder


def write_app(cfg: Config, folder: Path) -> Path:
    """The Flower app: a pyproject.toml whose components are fedit's apps, with the config.

    The app bundle carries no code and no data: every site runs the fedit it installed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    config_text = save_config(cfg)
    lines = [
        "[project]",
        'name = "fedit-app"',
        'version = "0.1.0"',
        'description = "fedit: federated LoRA instruction tuning"',
        'license = "Apache-2.0"',
        "dependencies = []",
        "",
        "[tool.flwr.app]",
        'publisher = "fedit"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "fedit.flower_app:server_app"',
        'clientapp = "fedit.flower_app:client_app"',
        "",
        "[tool.flwr.app.config]",
        f"{RUN_CONFIG_KEY} = {_toml_string(config_text)}",
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (folder / "README.md").write_text("fedit Flower app, written by fedit flower run.\n")
    return folder


def _toml_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def write_connection(flwr_home: Path, cfg: Config) -> None:
    """Add (or replace) the ``fedit`` connection in ``$FLWR_HOME/config.toml``."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    kept, skipping = [], False
    for line in text.splitlines():
        if line.strip().startswith("["):
            skipping = line.strip() == f"[superlink.{CONNECTION}]"
        if not skipping:
            kept.append(line)
    if "[superlink]" not in text:
        kept = ["[superlink]", f'default = "{CONNECTION}"', "", *kept]
    kept += ["", f"[superlink.{CONNECTION}]", f'address = "{cfg.flower.superlink}"']
    if cfg.flower.insecure:
        kept.append("insecure = true")
    else:
        ca = Path(str(cfg.flower.root_certificates)).resolve()
        kept.append(f'root-certificates = "{ca}"')
    atomic_write_text(path, "\n".join(kept) + "\n")


def flwr_home() -> Path:
    """``$FLWR_HOME``, else Flower's default ``~/.flwr``."""
    return Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr"))


def prepare_run(cfg: Config) -> Config:
    """``cfg`` made ready for a remote ServerApp: absolute output_dir, engine flower."""
    require_flower()
    output_dir = str(Path(cfg.output_dir).resolve())
    if cfg.flower.insecure:
        log.warning(INSECURE_WARNING)
    raw = yaml.safe_load(save_config(cfg))
    raw.update(output_dir=output_dir, engine="flower")
    from fedit.config import config_from_dict

    return config_from_dict(raw)


def run_on_flower(cfg: Config, home: Path | None = None) -> int:
    """Submit the experiment to the SuperLink with ``flwr run --stream`` and wait for it.

    Returns:
        ``flwr run``'s exit status (0 when the run finished).
    """
    cfg = prepare_run(cfg)
    home = home or flwr_home()
    write_connection(home, cfg)
    with tempfile.TemporaryDirectory(prefix="fedit-flower-app-") as app:
        write_app(cfg, Path(app))
        command = [executable("flwr"), "run", app, CONNECTION, "--stream"]
        log.info("submitting to %s: %s", cfg.flower.superlink, " ".join(command))
        returncode = subprocess.run(command, env=flower_env(home), check=False).returncode
    if returncode != 0:
        return returncode
    status = last_run_status(home)
    if status is not None and not status.endswith("completed"):
        log.error("the Flower run ended as %s (see the log above)", status)
        return 1
    return 0


def last_run_status(home: Path) -> str | None:
    """Status of the newest run on the ``fedit`` connection (``finished:completed`` ...).

    ``flwr run --stream`` exits 0 even when the ServerApp failed, so ask ``flwr ls``.
    """
    command = [executable("flwr"), "ls", CONNECTION, "--format", "json"]
    result = subprocess.run(command, env=flower_env(home), capture_output=True, text=True)
    try:
        parsed = json.loads(result.stdout)
        runs = parsed["runs"] if isinstance(parsed, dict) else parsed
        newest = max(runs, key=lambda run: str(run.get("pending-at", "")))
        return str(newest["status"])
    except (ValueError, KeyError, TypeError):
        log.warning("could not read the run's status from flwr ls: %s", result.stdout[-200:])
        return None
