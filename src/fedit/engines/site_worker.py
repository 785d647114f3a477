"""A site's long-lived worker: it keeps the base model loaded while Flower starts a fresh
ClientApp process for every message.

Flower 1.42 runs each message's ClientApp in a new ``flwr-clientapp`` process, in both of the
SuperNode's isolation modes (``subprocess`` starts it itself, ``process`` leaves it to a
``flower-superexec``, which also starts one per message), so nothing the ClientApp loads
outlives the message. ``fedit flower supernode`` therefore starts this worker next to the
SuperNode and puts ``site-worker=FOLDER`` into the node config; the ClientApp then only
forwards the message's bytes here and the reply's bytes back (``flower_app.py``), and the
worker trains them with ``flower_site.train_site``, whose cache keeps the model for the run.
A forwarding ClientApp imports neither torch nor transformers, which is most of its start-up.

FOLDER (mode 0700) holds the Unix socket and a random key (mode 0600); a connection must
prove it holds the key (``multiprocessing.connection``'s HMAC challenge), so only this site's
user reaches the worker. The worker trains one message at a time.

    python -m fedit.engines.site_worker FOLDER
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import Client, Listener
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SITE_WORKER_KEY = "site-worker"  # node config: the worker's folder
SOCKET, AUTHKEY, READY = "socket", "authkey", "ready"
START_TIMEOUT = 300.0  # seconds for the worker's imports on a slow, busy machine


class SiteWorkerError(RuntimeError):
    """The worker could not be reached, or failed on the message (its reason is kept)."""


def train_remotely(
    folder: str,
    run_config: str,
    node_config: dict[str, Any],
    message: bytes,
    masking: dict[str, Any] | None = None,
) -> bytes:
    """Hand one training message (``engines.messages`` bytes) to the worker; its reply bytes.

    With ``masking`` (a secure round's ``flower_secagg.masking_spec``) the reply is the
    masked vector (``secagg.masked_upload``) instead of the update.

    Raises:
        SiteWorkerError: no worker at ``folder``, or training failed there.
    """
    path = Path(folder)
    try:
        with Client(
            str(path / SOCKET), family="AF_UNIX", authkey=(path / AUTHKEY).read_bytes()
        ) as conn:
            conn.send((run_config, node_config, message, masking))
            status, payload = conn.recv()
    except (OSError, EOFError) as err:
        raise SiteWorkerError(f"site worker at {folder} unreachable: {err}") from None
    if status != "ok":
        raise SiteWorkerError(f"site worker: {payload}")
    return bytes(payload)


def _train(
    run_config: str, node_config: dict[str, Any], message: bytes, masking: dict[str, Any] | None
) -> bytes:
    import yaml

    from fedit.config import config_from_dict
    from fedit.engines.flower_site import train_site
    from fedit.engines.messages import pack_update, unpack_instruction

    cfg = config_from_dict(yaml.safe_load(run_config))
    instruction = unpack_instruction(message)
    update = train_site(cfg, node_config, instruction)
    if masking is not None:
        from fedit.engines.secagg import masked_upload

        return masked_upload(update, instruction, masking)
    return pack_update(update, instruction)


def _exit_with_parent(folder: Path) -> None:
    """End this process (and remove ``folder``) when the one that started it (``fedit flower
    supernode``) is gone, even if it was killed without stopping the worker."""
    import shutil
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        log.warning("site worker: the SuperNode's launcher is gone; exiting")
        shutil.rmtree(folder, ignore_errors=True)
        os._exit(0)

    threading.Thread(target=watch, daemon=True).start()


def serve(folder: Path) -> None:
    """Answer training messages on ``folder``'s socket until killed."""
    import fedit.engines.flower_site  # noqa: F401  the heavy imports, before the first message
    from fedit.client.site_policy import InstructionRefusedError

    _exit_with_parent(folder)
    authkey = (folder / AUTHKEY).read_bytes()
    with Listener(str(folder / SOCKET), family="AF_UNIX", authkey=authkey) as listener:
        (folder / READY).touch()
        log.info("site worker ready on %s", folder / SOCKET)
        while True:
            try:
                conn = listener.accept()
            except Exception as err:  # a client without the key, or one that hung up
                log.warning("site worker: connection refused: %s", err)
                continue
            with conn:
                try:
                    reply: tuple[str, Any] = ("ok", _train(*conn.recv()))
                except InstructionRefusedError as err:  # the site's own floor: expected
                    log.warning("site worker: %s", err)
                    reply = ("error", f"{type(err).__name__}: {err}")
                except Exception as err:  # the ClientApp reports it as the client's failure
                    log.exception("site worker: training failed")
                    reply = ("error", f"{type(err).__name__}: {err}")
                try:
                    conn.send(reply)
                except OSError as err:
                    log.warning("site worker: the ClientApp left before the reply: %s", err)


def start_worker(
    env: dict[str, str] | None = None, log_file: Path | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start a worker in a new private folder and wait until it listens.

    Returns:
        The worker process (its own process group) and its folder, for ``site-worker``.

    Raises:
        SiteWorkerError: it exited or did not listen within ``START_TIMEOUT`` seconds.
    """
    folder = Path(tempfile.mkdtemp(prefix="fedit-site-worker-"))  # mode 0700
    key = folder / AUTHKEY
    key.touch(mode=0o600)
    key.write_bytes(secrets.token_bytes(32))
    output = log_file.open("ab") if log_file else None
    process = subprocess.Popen(
        [sys.executable, "-m", "fedit.engines.site_worker", str(folder)],
        env=env,
        stdout=output,
        stderr=subprocess.STDOUT if output else None,
        start_new_session=True,
    )
    deadline = time.monotonic() + START_TIMEOUT
    while not (folder / READY).exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_worker(process, folder)
            raise SiteWorkerError(f"the site worker did not start (exit code {process.returncode})")
        time.sleep(0.1)
    return process, folder


def stop_worker(process: subprocess.Popen[bytes], folder: Path) -> None:
    """Terminate the worker (then kill it) and remove its folder."""
    import shutil

    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="fedit site worker %(levelname)s: %(message)s")
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    os.umask(0o077)
    serve(Path(sys.argv[1]))
