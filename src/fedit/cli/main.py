"""The ``fedit`` command line: a table of plain functions, one per subcommand.

Usage:
    fedit run [CONFIG.yaml] [key=value ...]       # no CONFIG: the built-in quickstart
    fedit partition CONFIG [key=value ...]        # preview the client split
    fedit validate CONFIG [key=value ...]         # check a configuration
    fedit generate --adapter RUN/global_adapter "What is 12 + 30?"
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from fedit.config import Config, ConfigError, field_help, load_config, read_yaml

console = Console(stderr=True)
out = Console()


def quickstart_path() -> Path:
    """The built-in quickstart config shipped inside the package."""
    return Path(str(resources.files("fedit") / "configs" / "quickstart.yaml"))


def _load(args: argparse.Namespace) -> Config:
    path = args.config if args.config is not None else quickstart_path()
    return load_config(path, args.overrides)


def cmd_run(args: argparse.Namespace) -> int:
    from fedit.cli.progress import ProgressObserver
    from fedit.experiment import run_experiment

    cfg = _load(args)
    with ProgressObserver(console) as observer:
        outcome = run_experiment(cfg, observer)
    _print_results(outcome.history)
    out.print(f"report: {outcome.report}")
    out.print(f"global adapter: {outcome.run_dir / 'global_adapter'}")
    out.print(f"finished in {outcome.seconds / 60:.1f} min")
    return 0


def _print_results(history: list[dict[str, Any]]) -> None:
    from fedit.evaluation.report import summary_rows

    rows = summary_rows(history)
    if not rows:
        return
    table = Table(title="Held-out results")
    table.add_column("metric")
    for label, _ in rows:
        table.add_column(label, justify="right")
    table.add_row("loss", *[_cell(e.get("loss"), 4) for _, e in rows])
    table.add_row("accuracy", *[_cell(e.get("accuracy"), 3) for _, e in rows], end_section=True)
    categories = sorted({c for _, e in rows for c in e.get("accuracy_by_category", {})})
    for category in categories:
        cells = [_cell(e.get("accuracy_by_category", {}).get(category), 2) for _, e in rows]
        table.add_row(f"  {category}", *cells)
    out.print(table)


def _cell(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def cmd_partition(args: argparse.Namespace) -> int:
    from fedit.data.partition import format_count_table
    from fedit.experiment import prepare_data

    cfg = _load(args)
    data = prepare_data(cfg)
    out.print(format_count_table(data.table), markup=False, highlight=False, soft_wrap=True)
    out.print(f"{data.table['num_train']} training examples, {data.table['num_test']} held out")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    cfg = _load(args)
    out.print(f"{args.config or quickstart_path()}: valid")
    out.print(
        f"model {cfg.model.name}, data {cfg.data.source}, "
        f"{cfg.federation.num_clients} clients x {cfg.federation.rounds} rounds"
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


def _keys_epilog() -> str:
    rows = [f"  {key:<32} {help_} (default: {default})" for key, default, help_ in field_help()]
    return "configuration keys (override with key=value):\n" + "\n".join(rows)


def _add_config_args(parser: argparse.ArgumentParser, optional: bool) -> None:
    config = "[CONFIG.yaml]" if optional else "CONFIG.yaml"
    parser.add_argument(
        "items",
        nargs="*",
        metavar=f"{config} key=value",
        help="YAML config"
        + (" (default: built-in quickstart)" if optional else "")
        + ", then dotted overrides such as train.lr=1e-3",
    )


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], int], str]] = {
    "run": (cmd_run, "run federated instruction tuning"),
    "partition": (cmd_partition, "preview how the data is split across clients"),
    "validate": (cmd_validate, "check a configuration"),
    "generate": (cmd_generate, "answer a prompt with a base model plus adapter"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedit", description="Federated instruction tuning")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (func, help_) in COMMANDS.items():
        p = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=_keys_epilog() if name != "generate" else None,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        p.set_defaults(func=func)
        if name == "generate":
            p.add_argument("--adapter", required=True, help="PEFT adapter folder")
            p.add_argument("--model", help="base model (default: the run's model.name)")
            p.add_argument("--template", help="alpaca or chat (default: the run's template)")
            p.add_argument("--max-new-tokens", type=int, default=128)
            p.add_argument("prompt", help="the instruction")
        else:
            _add_config_args(p, optional=name == "run")
    return parser


def _split_config_and_overrides(args: argparse.Namespace) -> None:
    """The first item is the config unless it is a key=value override."""
    if not hasattr(args, "items"):
        return
    positional = list(args.items)
    if positional and "=" not in positional[0]:
        args.config, args.overrides = positional[0], positional[1:]
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
    for noisy in ("transformers", "datasets", "peft", "urllib3", "httpx", "filelock", "matplotlib"):
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
