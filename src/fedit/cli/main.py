"""The ``fedit`` command line: a table of plain functions, one per subcommand.

Usage:
    fedit run [CONFIG.yaml] [key=value ...]       # no CONFIG: the built-in quickstart
    fedit run quickstart [key=value ...]          # the same, by name (any CONFIG may be one)
    fedit run CONFIG engine=flower-simulation     # on Flower's simulation runtime (Ray)
    fedit partition CONFIG [key=value ...]        # preview the client split
    fedit validate CONFIG [key=value ...]         # check a configuration
    fedit generate --adapter RUN/global_adapter "What is 12 + 30?"
    fedit serve --adapter RUN/global_adapter [--adapter name=DIR ...] [--port 8000]
    fedit serve --run RUN                     # global and every client-<id> personal adapter
    fedit export --adapter RUN/global_adapter --out DIR [--merge]
    fedit export --run RUN --client ID --out DIR [--merge]
    fedit eval --adapter RUN/global_adapter --suite heldout [--suite mc:FILE ...]
    fedit compare CONFIG [key=value ...]          # base vs Local-k vs FedIT vs Centralized
    fedit flower superlink|supernode|run|certificates ...   # across machines (docs/deploy.md)
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler

from fedit.cli import evaluate
from fedit.cli.flower import add_flower_args, cmd_flower
from fedit.cli.results import communication_line, results_table
from fedit.config import Config, ConfigError, field_help, load_config, read_yaml
from fedit.config.builtin import quickstart_path, resolve_config

console = Console(stderr=True)
out = Console()


def _load(args: argparse.Namespace) -> Config:
    path = args.config if args.config is not None else quickstart_path()
    return load_config(path, args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedit.cli.progress import ProgressObserver
    from fedit.experiment import run_experiment
    from fedit.reporting.privacy_report import final_epsilon_line
    from fedit.server.loop import RoundFailedError

    cfg = _load(args)
    if cfg.engine == "flower":
        from fedit.engines.flower_launch import run_on_flower

        return run_on_flower(cfg)
    try:
        with ProgressObserver(console) as observer:
            if cfg.engine == "flower-simulation":  # Flower's simulation runtime on Ray
                from fedit.flower_simulation import run_flower_simulation

                outcome = run_flower_simulation(cfg, observer)
            else:
                outcome = run_experiment(cfg, observer)
    except RoundFailedError as err:  # clients failed; the finished rounds are checkpointed
        console.print(f"fedit: run failed: {err}; resume with resume=true", markup=False)
        return 1
    if table := results_table(outcome.history):
        out.print(table)
    if communication := communication_line(outcome.history):
        out.print(communication)
    if privacy := final_epsilon_line(outcome.history):  # ε = 3 at δ = 1e-05 (client-level, RDP)
        out.print(privacy, markup=False, highlight=False, soft_wrap=True)  # one line, unbroken
    out.print(f"report: {outcome.report}")
    out.print(f"global adapter: {outcome.run_dir / 'global_adapter'}")
    out.print(f"finished in {outcome.seconds / 60:.1f} min")
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    from fedit.data.partition import format_count_table
    from fedit.data.prepare import prepare_data

    cfg = _load(args)
    data = prepare_data(cfg)
    out.print(format_count_table(data.table), markup=False, highlight=False, soft_wrap=True)
    out.print(f"{data.table['num_train']} training examples, {data.table['num_test']} held out")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from fedit.data.prepare import prepare_data
    from fedit.data.sources import is_hub_source

    cfg = _load(args)
    path = args.config or quickstart_path()  # printed whole: a long path is not wrapped
    out.print(f"{path}: valid", markup=False, highlight=False, soft_wrap=True)
    out.print(
        f"model {cfg.model.name}, data {cfg.data.source}, "
        f"{cfg.federation.num_clients} clients x {cfg.federation.rounds} rounds"
    )
    hub = [s for s in (cfg.data.source, cfg.data.test_source) if s and is_hub_source(s)]
    if hub:  # validate reads local data only; a hub dataset is checked when a run loads it
        note = f"data: hub dataset {', '.join(hub)} not read (validate does not download)"
        out.print(note, markup=False, highlight=False, soft_wrap=True)
        return 0
    data = prepare_data(cfg)  # local files: missing columns, empty files, too few examples
    table = data.table
    out.print(
        f"data: {table['num_train']} training examples over "
        f"{cfg.federation.num_clients} clients, {table['num_test']} held out",
        soft_wrap=True,
    )
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from fedit.serving.generate import generate_with_adapter

    text = generate_with_adapter(
        adapter=Path(args.adapter),
        prompt=args.prompt,
        model_name=args.model,
        template=args.template,
        max_new_tokens=args.max_new_tokens,
    )
    out.print(text, markup=False, highlight=False)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from fedit.serving.models import served_adapters
    from fedit.serving.server import bind_socket, require_serve_extra, run_server

    require_serve_extra()
    if args.max_tokens_limit < 1:
        raise ConfigError(f"--max-tokens-limit: must be >= 1, got {args.max_tokens_limit}")
    if args.max_request_bytes < 1:
        raise ConfigError(f"--max-request-bytes: must be >= 1, got {args.max_request_bytes}")
    specs, personal = served_adapters(args.adapter or [], Path(args.run) if args.run else None)
    sock = bind_socket(args.host, args.port)  # a taken port fails before the model loads
    try:
        app = _serve_app(args, specs, personal)
        run_server(app, sock, log_level="debug" if args.verbose else "info")
    except KeyboardInterrupt:  # Ctrl-C; uvicorn re-raises it after its graceful shutdown
        pass
    finally:
        sock.close()
    return 0


def _serve_app(args: argparse.Namespace, specs: list[Any], personal: dict[int, Path]) -> Any:
    from fedit.serving.app import create_app
    from fedit.serving.engine import CompletionEngine
    from fedit.serving.models import ServedModels

    models = ServedModels(specs, args.model, args.template, args.dtype, personal)
    api_key = args.api_key or os.environ.get("FEDIT_API_KEY") or None
    if api_key is None and args.host not in ("127.0.0.1", "localhost", "::1"):
        logging.getLogger(__name__).warning(
            "serving on %s without an API key: anyone who can reach it can use it", args.host
        )
    return create_app(
        CompletionEngine(models), api_key, args.max_tokens_limit, args.max_request_bytes
    )


def cmd_export(args: argparse.Namespace) -> int:
    from fedit.serving.export import export_model, export_source

    adapter, provenance = export_source(args.adapter, args.run, args.client)
    out_dir = export_model(
        adapter=adapter,
        out=Path(args.out),
        merge=args.merge,
        model_name=args.model,
        dtype=args.dtype,
        overwrite=args.overwrite,
        provenance=provenance,
    )
    kind = "merged model" if args.merge else "adapter + tokenizer"
    out.print(f"exported {kind}: {out_dir}")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    return evaluate.cmd_eval(args, out, console)


def cmd_compare(args: argparse.Namespace) -> int:
    return evaluate.cmd_compare(args, out, console)


def _keys_epilog() -> str:
    rows = [f"  {key:<32} {help_} (default: {default})" for key, default, help_ in field_help()]
    return "configuration keys (override with key=value):\n" + "\n".join(rows)


def _add_config_args(parser: argparse.ArgumentParser, optional: bool) -> None:
    config = "[CONFIG.yaml]" if optional else "CONFIG.yaml"
    parser.add_argument(
        "items",
        nargs="*",
        metavar=f"{config} key=value",
        help="YAML config or the name of a built-in one (quickstart)"
        + (" (default: quickstart)" if optional else "")
        + ", then dotted overrides such as train.lr=1e-3",
    )


def _add_generate_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="PEFT adapter folder")
    parser.add_argument("--model", help="base model (default: the run's model.name)")
    parser.add_argument("--template", help="alpaca or chat (default: the run's template)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("prompt", help="the instruction")


def _add_serve_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--adapter",
        action="append",
        metavar="[NAME=]DIR",
        help="adapter folder; unnamed: served as 'global' (once), NAME=DIR: served as NAME; "
        "repeatable. The base model is always served as 'base'",
    )
    parser.add_argument(
        "--run",
        help="a run folder: serve its global adapter as 'global' and each client's personal "
        "adapter (RUN/personal/client-<id>) as 'client-<id>'",
    )
    parser.add_argument("--model", help="base model (default: the first adapter's model.name)")
    parser.add_argument(
        "--template", default="alpaca", help="template for adapters whose run records none"
    )
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--api-key", help="require 'Authorization: Bearer KEY' (default: $FEDIT_API_KEY)"
    )
    parser.add_argument(
        "--max-tokens-limit", type=int, default=512, help="largest max_tokens a request may ask"
    )
    from fedit.serving.protocol import MAX_REQUEST_BYTES

    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=MAX_REQUEST_BYTES,
        help="largest request body accepted; larger ones get 413 (default: 1 MiB)",
    )


def _add_export_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", help="PEFT adapter folder (or --run)")
    parser.add_argument("--run", help="a run folder: export its global adapter, or --client's")
    parser.add_argument(
        "--client", type=int, help="with --run: this client's personal adapter (client-<id>)"
    )
    parser.add_argument("--out", required=True, help="folder to write")
    parser.add_argument(
        "--merge",
        action="store_true",
        help="merge LoRA into the base weights: a standalone model (default: adapter + tokenizer)",
    )
    parser.add_argument("--model", help="base model (default: the run's model.name)")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")


def _add_run_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser, optional=True)


def _add_required_config_args(parser: argparse.ArgumentParser) -> None:
    _add_config_args(parser, optional=False)


Command = tuple[Callable[[argparse.Namespace], int], str, Callable[[argparse.ArgumentParser], None]]

COMMANDS: dict[str, Command] = {
    "run": (cmd_run, "run federated instruction tuning", _add_run_args),
    "partition": (
        cmd_partition,
        "preview how the data is split across clients",
        _add_required_config_args,
    ),
    "validate": (cmd_validate, "check a configuration", _add_required_config_args),
    "generate": (
        cmd_generate,
        "answer a prompt with a base model plus adapter",
        _add_generate_args,
    ),
    "serve": (
        cmd_serve,
        "serve adapters over an OpenAI-compatible API with a chat page",
        _add_serve_args,
    ),
    "export": (cmd_export, "export an adapter, merged into a standalone model", _add_export_args),
    "eval": (
        cmd_eval,
        "score a base model or an adapter on evaluation suites "
        "(held-out, preference, MC, GSM8K, judge)",
        evaluate.add_eval_args,
    ),
    "compare": (
        cmd_compare,
        "the paper's comparison: base vs Local-k vs FedIT vs Centralized on the same split",
        _add_required_config_args,
    ),
    "flower": (
        cmd_flower,
        "run across machines with Flower (SuperLink, SuperNodes)",
        add_flower_args,
    ),
}
# These take config keys: list them in --help.
CONFIG_COMMANDS = ("run", "partition", "validate", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedit", description="Federated instruction tuning")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_, add_arguments) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_keys_epilog() if name in CONFIG_COMMANDS else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        add_arguments(p)
    return parser


def _split_config_and_overrides(args: argparse.Namespace) -> None:
    """The first item is the config unless it is a key=value override."""
    if not hasattr(args, "items"):
        return
    positional = list(args.items)
    if positional and "=" not in positional[0]:
        args.config, args.overrides = resolve_config(positional[0]), positional[1:]
    else:
        args.config, args.overrides = None, positional
    if args.command != "run" and args.config is None:
        raise ConfigError(f"fedit {args.command}: a CONFIG file is required")


def _setup_logging(verbose: bool) -> None:
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="transformers")
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, rich_tracebacks=True)],
    )
    noisy_loggers = ("transformers", "datasets", "peft", "urllib3", "httpx", "filelock", "lm_eval")
    for noisy in (*noisy_loggers, "matplotlib", "absl"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fedit`` script. Bad input exits with code 2 and one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args.verbose)
    try:
        _split_config_and_overrides(args)
        if getattr(args, "config", None) is not None:
            read_yaml(args.config)  # file errors first, before anything is loaded
        return args.func(args)
    except ConfigError as err:
        console.print(f"fedit: error: {err}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        console.print("fedit: interrupted; resume with resume=true")
        return 130


if __name__ == "__main__":
    sys.exit(main())
