"""lm-evaluation-harness tasks: ``lm_eval:TASK[,TASK…]``, resolved and checked before a model loads.

A task is either a name lm-eval knows (``hellaswag``, ``mmlu``, ``arc_easy``; lm-eval downloads
its data from the Hugging Face hub) or a task YAML file (``path/to/task.yaml``), which runs
offline when it reads local files (``dataset_path: json`` with ``dataset_kwargs.data_files``).

lm-eval alone reads a relative ``data_files`` path from the current directory. fedit reads it
from the YAML's own folder first (then from the current directory, lm-eval's rule), and hands
lm-eval the task with absolute paths, so a task shipped in the repository runs from anywhere.

Example:
    tasks = load_harness_tasks("data/mc_sample/mc_sample.yaml,arc_easy", "--suite x")
    tasks.specs  # [{"task": "mc_sample", ..., "data_files": {"test": "/abs/questions.jsonl"}},
    #              "arc_easy"]
"""

from __future__ import annotations

import difflib
import functools
import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedit.config import ConfigError

log = logging.getLogger(__name__)

EXTRA_HINT = "pip install fedit[lmeval]"
TASK_FILE_SUFFIXES = (".yaml", ".yml")


def split_tasks(source: str) -> list[str]:
    """The comma-separated items of ``lm_eval:SOURCE``, stripped (empty ones kept, to refuse)."""
    return [item.strip() for item in source.split(",")]


def is_task_file(item: str) -> bool:
    """A task YAML path (rather than a task name lm-eval knows)."""
    return item.lower().endswith(TASK_FILE_SUFFIXES)


@dataclass(frozen=True)
class HarnessTasks:
    """What ``lm_eval.simple_evaluate`` is given, and how many requests it will score."""

    specs: list[str | dict[str, Any]]  # task names, and local task configs with absolute paths
    names: list[str]  # each item's task name, in order
    manager: Any  # lm_eval.tasks.TaskManager (its index of lm-eval's own tasks when needed)
    num_requests: int  # log-likelihood rows or generations: the progress bar's total


def load_harness_tasks(source: str, key: str) -> HarnessTasks:
    """Resolve every task of ``source`` and build it once, so that a missing file, an unknown
    name or unreadable data fails now, in one line naming the task.

    Args:
        source: ``TASK[,TASK…]``: lm-eval task, group or tag names and task YAML paths.
        key: Prefix of error messages (``--suite NAME`` or ``compare.suites NAME``).

    Raises:
        ConfigError: lm-eval not installed, an empty item, a missing task file or data file, an
            unknown task name, or a task lm-eval cannot build (its message, on one line).
    """
    try:
        from lm_eval.tasks import TaskManager  # noqa: F401  (is the extra installed?)
    except ImportError as error:
        raise ConfigError(
            f"{key}: lm_eval suites need lm-evaluation-harness: {EXTRA_HINT}"
        ) from error
    items = split_tasks(source)
    if not all(items):
        raise ConfigError(f"{key}: empty task name in lm_eval:{source}")
    specs: list[str | dict[str, Any]] = [
        local_task_config(item, key) if is_task_file(item) else item for item in items
    ]
    named = [spec for spec in specs if isinstance(spec, str)]
    manager = task_manager(include_defaults=bool(named))
    for name in named:
        _check_known(name, manager, key)
    names = [spec if isinstance(spec, str) else str(spec["task"]) for spec in specs]
    loaded = _build(manager, specs, names, key)
    num_requests = count_requests(loaded["tasks"].values())
    log.info(
        "lm-eval %s: %d tasks, %d requests", ", ".join(names), len(loaded["tasks"]), num_requests
    )
    return HarnessTasks(specs, names, manager, num_requests)


@functools.lru_cache(maxsize=2)
def task_manager(include_defaults: bool) -> Any:
    """lm-eval's ``TaskManager``; indexing its own ~15,000 tasks takes seconds, so it is kept."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_defaults=include_defaults)


def _check_known(name: str, manager: Any, key: str) -> None:
    if name in manager.all_tasks:
        return
    close = difflib.get_close_matches(name, manager.all_tasks, n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{key}: unknown lm-eval task {name!r} (not a task, group or tag of lm-eval, and not a "
        f"task YAML path ending in .yaml){hint}"
    )


def _build(manager: Any, specs: list[str | dict[str, Any]], names: list[str], key: str) -> Any:
    """lm-eval's tasks, built (their data read) now; any failure becomes one line."""
    try:
        return manager.load(specs)
    except Exception as error:  # lm-eval and datasets raise many kinds; all mean "cannot build"
        reason = " ".join(str(error).split()) or type(error).__name__
        raise ConfigError(
            f"{key}: lm-eval cannot build task {', '.join(names)}: {reason[:300]}"
        ) from error


def count_requests(tasks: Any) -> int:
    """Rows lm-eval will score: one per option of a multiple-choice document, else one per
    document (a rolling log-likelihood of a long text may use more)."""
    total = 0
    for task in tasks:
        docs = task.eval_docs
        if task.OUTPUT_TYPE == "multiple_choice":
            total += sum(len(task.doc_to_choice(doc)) for doc in docs)
        else:
            total += len(docs)
    return total


# ---------------------------------------------------------------------------------------------
# Local task YAMLs


def local_task_config(item: str, key: str) -> dict[str, Any]:
    """A task YAML as lm-eval reads it (``include`` and ``!function`` resolved from its folder),
    its relative ``data_files`` and ``dataset_path`` folder made absolute.

    Raises:
        ConfigError: The file is missing, unreadable, not a single task, or names a data file
            that exists neither beside it nor under the current directory.
    """
    path = Path(item).expanduser()
    if not path.is_file():
        raise ConfigError(f"{key}: task file not found: {item}")
    config = _read_task_yaml(path, key)
    task = config.get("task")
    if not isinstance(task, str) or not task:
        raise ConfigError(
            f"{key}: {item} needs 'task: NAME' (a local YAML is one task; groups are not read)"
        )
    folder = path.resolve().parent
    dataset_path = config.get("dataset_path")
    if isinstance(dataset_path, str) and (folder / dataset_path).exists():
        config["dataset_path"] = str((folder / dataset_path).resolve())
    kwargs = config.get("dataset_kwargs")
    if isinstance(kwargs, dict) and kwargs.get("data_files") is not None:
        where = f"{key}: {item}: dataset_kwargs.data_files"
        config["dataset_kwargs"] = {
            **kwargs,
            "data_files": _absolute_files(kwargs["data_files"], folder, where),
        }
    return config


def _read_task_yaml(path: Path, key: str) -> dict[str, Any]:
    try:
        # lm-eval's own reader (0.4.13 has no public name for it): ``include`` and ``!function``
        # are resolved from the YAML's folder, exactly as when lm-eval reads the file itself.
        from lm_eval.tasks._yaml_loader import load_yaml
    except ImportError as error:
        raise ConfigError(
            f"{key}: this lm_eval version cannot read task files; {EXTRA_HINT}"
        ) from error
    try:
        config = load_yaml(path, resolve_func=True)
    except Exception as error:  # YAML syntax, a missing include or function module
        reason = " ".join(str(error).split())
        raise ConfigError(f"{key}: cannot read task file {path}: {reason[:300]}") from error
    return dict(config)


def _absolute_files(files: Any, folder: Path, where: str) -> Any:
    """``data_files`` (a path, a list, or a split -> path(s) mapping) with absolute paths."""
    if isinstance(files, dict):
        return {
            split: _absolute_files(value, folder, f"{where}.{split}")
            for split, value in files.items()
        }
    if isinstance(files, (list, tuple)):
        return [_absolute_file(str(file), folder, where) for file in files]
    return _absolute_file(str(files), folder, where)


def _absolute_file(file: str, folder: Path, where: str) -> str:
    """The YAML's folder first, then the current directory (lm-eval's own rule); globs too."""
    path = Path(file).expanduser()
    if "://" in file or path.is_absolute():
        return file
    for base in (folder, Path.cwd()):
        candidate = base / path
        if candidate.exists() or glob.glob(str(candidate)):
            return str(candidate.resolve()) if candidate.exists() else str(candidate)
    raise ConfigError(f"{where}: data file not found: {file} (looked in {folder} and {Path.cwd()})")
