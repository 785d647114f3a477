"""``fedit flower ...``: run an experiment across machines with Flower.

Usage (one machine over loopback; docs/deploy.md has the three-organisation version):
    fedit flower certificates certs --host 127.0.0.1 --host localhost
    fedit flower superlink --address 127.0.0.1:8000 --certificates certs
    fedit flower supernode --superlink 127.0.0.1:8000 --port 9094 --root-certificates \
        certs/ca.crt --partition-id 0 --num-partitions 2
    fedit flower run configs/quickstart.yaml federation.num_clients=2 \
        flower.root_certificates=certs/ca.crt
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fedit.config import ConfigError, load_config

log = logging.getLogger(__name__)


def _wait(command: list[str]) -> int:
    """Run one of Flower's servers in the foreground until it exits or Ctrl-C."""
    from fedit.engines.flower_launch import flower_env

    process = subprocess.Popen(command, env=flower_env())
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        return process.wait()


def cmd_superlink(args: argparse.Namespace) -> int:
    from fedit.engines.flower_launch import require_flower, superlink_command

    require_flower()
    certificates = Path(args.certificates) if args.certificates else None
    command = superlink_command(args.address, certificates, args.insecure, args.auth_supernodes)
    return _wait(command)


def cmd_supernode(args: argparse.Namespace) -> int:
    from fedit.client.site_policy import MAX_CLIP_KEY, MIN_NOISE_KEY
    from fedit.engines.flower_launch import (
        SUPERNODE_POLL_SECONDS,
        require_flower,
        supernode_command,
    )

    require_flower()
    node_config: dict[str, Any] = {}
    if args.data_path:
        if args.client_id is None:
            raise ConfigError("--data-path needs --client-id (this site's client id)")
        node_config = {"data-path": str(Path(args.data_path).resolve())}
        node_config["client-id"] = args.client_id
    elif args.partition_id is not None and args.num_partitions is not None:
        node_config = {"partition-id": args.partition_id, "num-partitions": args.num_partitions}
    else:
        raise ConfigError(
            "give --data-path FILE --client-id K, or --partition-id K --num-partitions N"
        )
    if args.model:
        node_config["model-name"] = args.model
    if args.threads is not None:
        node_config["num-threads"] = args.threads
    if args.malicious:  # a simulated attacker: the run's attack.* (docs/robustness.md)
        node_config["malicious"] = True
    if args.min_noise_multiplier is not None:  # the site's own privacy floor
        node_config[MIN_NOISE_KEY] = args.min_noise_multiplier
    if args.max_clip_norm is not None:
        node_config[MAX_CLIP_KEY] = args.max_clip_norm
    if args.state_dir:  # what this site keeps between rounds, and its own models
        from fedit.engines.flower_site import STATE_DIR_KEY

        node_config[STATE_DIR_KEY] = str(Path(args.state_dir).expanduser().resolve())
    command = supernode_command(
        args.superlink,
        node_config,
        port=args.port,
        root_certificates=Path(args.root_certificates) if args.root_certificates else None,
        insecure=args.insecure,
        auth_key=Path(args.auth_key) if args.auth_key else None,
        poll_seconds=SUPERNODE_POLL_SECONDS if args.poll is None else args.poll,
    )
    if args.insecure:
        from fedit.engines.flower_launch import INSECURE_WARNING

        log.warning(INSECURE_WARNING)
    if args.no_site_worker:
        return _wait(command)
    return _wait_with_worker(command)


def _wait_with_worker(command: list[str]) -> int:
    """The SuperNode with a site worker that keeps the base model loaded between messages."""
    from fedit.engines.flower_launch import flower_env
    from fedit.engines.site_worker import SITE_WORKER_KEY, start_worker, stop_worker

    log.info("starting the site worker (it keeps the base model loaded for the run)")
    worker, folder = start_worker(flower_env())
    try:
        index = command.index("--node-config") + 1
        command[index] += f" {SITE_WORKER_KEY}='{folder}'"
        return _wait(command)
    finally:
        stop_worker(worker, folder)


def cmd_run(args: argparse.Namespace) -> int:
    from fedit.engines.flower_launch import run_on_flower

    # main() has split the items into args.config and args.overrides, as for fedit run.
    return run_on_flower(load_config(args.config, [*args.overrides, "engine=flower"]))


def cmd_certificates(args: argparse.Namespace) -> int:
    from fedit.engines.flower_launch import write_certificates

    folder = write_certificates(Path(args.folder), args.host or ["127.0.0.1", "localhost"])
    log.info("wrote %s: ca.crt (give to every site), server.pem + server.key (SuperLink)", folder)
    log.info("keep %s private: it can sign certificates", folder / "ca.key")
    return 0


def _add_superlink_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="0.0.0.0:8000", help="host:port to serve on")
    _add_security_args(parser, "--certificates", "folder with ca.crt, server.pem, server.key")
    parser.add_argument(
        "--auth-supernodes",
        action="store_true",
        help="only SuperNodes whose public keys were registered (flwr supernode register) join",
    )


def _add_supernode_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--superlink", required=True, help="SuperLink host:port")
    parser.add_argument("--port", type=int, default=9094, help="this SuperNode's local port")
    _add_security_args(parser, "--root-certificates", "CA certificate (PEM) of the SuperLink")
    parser.add_argument("--data-path", help="this site's training data (json/jsonl/csv/parquet)")
    parser.add_argument("--client-id", type=int, help="this site's client id (with --data-path)")
    parser.add_argument("--partition-id", type=int, help="simulation-style: partition K")
    parser.add_argument("--num-partitions", type=int, help="simulation-style: of N")
    parser.add_argument("--model", help="local folder of the base model (default: model.name)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads for training (default: torch's); when SuperNodes share a machine, "
        "keep their sum at or below its cores",
    )
    parser.add_argument(
        "--malicious",
        action="store_true",
        help="simulate an attacker on this site: it runs the run's attack.* settings",
    )
    parser.add_argument(
        "--min-noise-multiplier",
        type=_positive,
        metavar="Z",
        help="this site's privacy floor: refuse any instruction whose noise multiplier z is "
        "below Z, asks for no DP, or leaves the noise to the server (docs/privacy.md)",
    )
    parser.add_argument(
        "--max-clip-norm",
        type=_positive,
        metavar="C",
        help="this site's privacy floor: refuse any instruction whose clip norm exceeds C",
    )
    parser.add_argument("--auth-key", help="ECDSA private key registered with the SuperLink")
    parser.add_argument(
        "--poll",
        type=_non_negative,
        metavar="SECONDS",
        help="the SuperNode's longest wait between polls for work (default 0.2; Flower's own "
        "is a fixed 3 s, which 0 keeps; docs/deploy.md)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help="where this site keeps what it must remember between rounds and its own models "
        "(SCAFFOLD's c_i, personalization's personal/client-<id>), one folder per run, "
        "owner-only; it survives restarts (default: $FEDIT_CACHE/site-state)",
    )
    parser.add_argument(
        "--no-site-worker",
        action="store_true",
        help="load the base model in every message's ClientApp instead of keeping it loaded "
        "in a site worker (docs/deploy.md)",
    )


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def _add_security_args(parser: argparse.ArgumentParser, flag: str, help_: str) -> None:
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument(flag, help=help_)
    group.add_argument("--insecure", action="store_true", help="no TLS (warns; loopback only)")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "items", nargs="*", metavar="CONFIG.yaml key=value", help="as for fedit run"
    )


def _add_certificate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder to write the certificates to")
    parser.add_argument(
        "--host", action="append", help="SuperLink IP or DNS name (repeatable; default loopback)"
    )


FlowerCommand = tuple[
    Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]
]

FLOWER_COMMANDS: dict[str, FlowerCommand] = {
    "superlink": (cmd_superlink, "start the SuperLink (the server side)", _add_superlink_args),
    "supernode": (cmd_supernode, "start one site's SuperNode", _add_supernode_args),
    "run": (cmd_run, "run an experiment on the SuperLink (engine=flower)", _add_run_args),
    "certificates": (
        cmd_certificates,
        "make a CA and a SuperLink certificate with openssl",
        _add_certificate_args,
    ),
}


def add_flower_args(parser: argparse.ArgumentParser) -> None:
    """The ``fedit flower`` subcommands."""
    sub = parser.add_subparsers(dest="flower_command", required=True)
    for name, (func, help_, add_arguments) in FLOWER_COMMANDS.items():
        command = sub.add_parser(name, help=help_, description=help_)
        command.set_defaults(flower_func=func)
        add_arguments(command)


def cmd_flower(args: argparse.Namespace) -> int:
    """Dispatch ``fedit flower <command>``."""
    result: int = args.flower_func(args)
    return result
