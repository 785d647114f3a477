"""``engine: flower-simulation``: the experiment on Flower's simulation runtime (Ray).

    fedit run configs/quickstart.yaml engine=flower-simulation \\
        flower.simulation.client_cpus=1 flower.simulation.client_gpus=0.25

The same ServerApp, ClientApp, ``FlowerTransport``, strategies and client code as
``engine: flower`` (``flower_app.py``): Flower starts one virtual SuperNode per client
(node config ``partition-id=K num-partitions=N``, so each trains partition K exactly as the
in-process engine splits the data) and runs their ClientApps in a pool of Ray actors, as many
at once as the resources allow: ``num_cpus // client_cpus`` clients, and with GPUs at most
``num_gpus / client_gpus``. An actor keeps its process between messages, so it loads the base
model once per run (``engines/flower_site``'s cache).

This module starts Ray itself, before Flower does (Flower's backend reuses a running Ray), so
that a machine with too few GPUs fails before Ray starts and Ray failing to start is one line;
and it shuts Ray down whatever happens, so no Ray process outlives the command. With the
``flwr`` and ``ray`` imports of ``flower_app.py`` it is one of the three modules that import
``flwr`` (``tests/test_layers.py``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any

from fedit.config import Config, ConfigError
from fedit.experiment import RunOutcome
from fedit.server.observer import RunObserver

log = logging.getLogger(__name__)


class RayStartError(ConfigError):
    """Ray did not start (printed as one line, exit code 2, before anything is written)."""


def require_simulation() -> None:
    """Fail with one line naming the extra when flwr or ray is not installed."""
    for module in ("flwr", "ray"):
        if importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"engine flower-simulation needs {module}: pip install 'fedit[flower]'"
            )


def visible_gpus() -> int:
    """The CUDA GPUs torch sees (what Ray would detect), 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_gpus(cfg: Config, available: int) -> int:
    """The GPUs to give Ray, after checking the request fits ``available`` GPUs.

    Raises:
        ConfigError: more GPUs asked for (in total or per client) than the machine has.
    """
    sim = cfg.flower.simulation
    if sim.num_gpus is not None and sim.num_gpus > available:
        raise ConfigError(
            f"flower.simulation.num_gpus: {sim.num_gpus} GPUs asked for, this machine has "
            f"{available}"
        )
    gpus = available if sim.num_gpus is None else sim.num_gpus
    if sim.client_gpus > gpus:
        raise ConfigError(
            f"flower.simulation.client_gpus: each client asks for {sim.client_gpus:g} GPUs, "
            f"this machine has {gpus} for Ray"
            + ("" if gpus else " (no CUDA GPU visible: set flower.simulation.client_gpus=0)")
        )
    return gpus


def parallel_clients(cfg: Config, cpus: int, gpus: int) -> int:
    """How many virtual clients train at once: what fits in Ray's CPUs and GPUs."""
    sim = cfg.flower.simulation
    fit = int(cpus // sim.client_cpus)
    if sim.client_gpus > 0:
        fit = min(fit, int(round(gpus / sim.client_gpus, 6)))
    return max(1, min(fit, cfg.federation.num_clients))


def backend_config(cfg: Config) -> dict[str, Any]:
    """Flower's backend config: each virtual client's resources on Ray."""
    sim = cfg.flower.simulation
    return {"client_resources": {"num_cpus": sim.client_cpus, "num_gpus": sim.client_gpus}}


def start_ray(cfg: Config, gpus: int) -> None:
    """``ray.init`` on this machine with the run's CPUs and GPUs.

    Raises:
        RayStartError: Ray could not start (one line: Ray's first line of the error).
    """
    import ray

    cpus = cfg.flower.simulation.num_cpus or os.cpu_count() or 1
    # Ray's workers import fedit as this process does (Flower passes the same).
    pythonpath = os.pathsep.join([*sys.path, os.environ.get("PYTHONPATH", "")])
    try:
        ray.init(
            address="local",  # always a Ray of its own, which it shuts down: not $RAY_ADDRESS
            num_cpus=cpus,
            num_gpus=gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env={"env_vars": {"PYTHONPATH": pythonpath}},
        )
    except Exception as err:  # Ray raises many kinds (ConnectionError, RuntimeError, ...)
        ray.shutdown()  # whatever half-started
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise RayStartError(f"engine flower-simulation: Ray could not start: {reason}") from None
    log.info(
        "Ray: %d CPUs, %d GPUs; %d virtual clients train at once",
        cpus,
        gpus,
        parallel_clients(cfg, cpus, gpus),
    )


def _absolute(cfg: Config) -> Config:
    """``output_dir`` made absolute: Ray's workers need not share this process's directory."""
    return dataclasses.replace(cfg, output_dir=str(Path(cfg.output_dir).resolve()))


def run_flower_simulation(
    cfg: Config,
    observer: RunObserver | None = None,
    node_extras: dict[int, dict[str, Any]] | None = None,
) -> RunOutcome:
    """Run (or resume) the experiment on Flower's simulation runtime; Ray is shut down after.

    Args:
        cfg: The experiment, ``engine: flower-simulation``.
        observer: Progress hooks (the ServerApp runs in a thread of this process).
        node_extras: Node config entries per client id added to the virtual SuperNode's own
            (``partition-id``, ``num-partitions``); ``malicious`` comes from ``attack.*``, the
            privacy policy from ``privacy.site_*`` and ``privacy.reproducible_noise``.

    Returns:
        The run's outcome, as ``run_experiment`` gives it.

    Raises:
        ConfigError: flwr or ray missing, more GPUs than the machine has, Ray not starting.
        RoundFailedError: too few clients replied in a round (they are named).
    """
    require_simulation()
    cfg = _absolute(cfg)
    gpus = check_gpus(cfg, visible_gpus())  # before Ray starts
    extras = _site_node_configs(cfg, node_extras or {})
    start_ray(cfg, gpus)
    try:
        return _simulate(cfg, observer, extras)
    finally:
        import ray

        ray.shutdown()


def _site_node_configs(cfg: Config, extras: dict[int, dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """``attack.clients`` / ``attack.fraction`` as the node config ``malicious=true``, and the
    in-process sites' privacy policy (``privacy.site_*``, ``reproducible_noise``) as every
    virtual site's own node config, as a deployment's SuperNodes would set it."""
    from fedit.client.attacks import attacker_ids
    from fedit.client.site_policy import SitePolicy

    policy = SitePolicy.from_config(cfg.privacy).to_node_config()
    merged = {client: dict(entries) for client, entries in extras.items()}
    for client in range(cfg.federation.num_clients):
        merged[client] = {**policy, **merged.get(client, {})}
    if cfg.attack.active:
        for client in attacker_ids(cfg.attack, cfg.federation.num_clients, cfg.seed):
            merged.setdefault(client, {})["malicious"] = True
    return merged


def _simulate(
    cfg: Config, observer: RunObserver | None, extras: dict[int, dict[str, Any]]
) -> RunOutcome:
    from flwr.simulation import run_simulation

    from fedit.flower_app import make_client_app, make_server_app

    outcomes: list[RunOutcome] = []
    server_app = make_server_app(cfg, observer=observer, outcomes=outcomes)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        run_simulation(
            server_app=server_app,
            client_app=make_client_app(cfg, extras),
            num_supernodes=cfg.federation.num_clients,
            backend_config=backend_config(cfg),
        )
    if not outcomes:
        raise RuntimeError("Flower's simulation ended without the ServerApp finishing")
    return outcomes[0]
