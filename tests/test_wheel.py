"""The wheel that ``python -m build`` makes runs anywhere: installed in a fresh virtual environment,
from a folder outside the repository, ``fedit --help``, the built-in quickstart and ``fedit serve``
work, and they run the installed package, not the repository's ``src``.

The fresh environment installs the wheel alone (``pip install --no-deps``) and borrows the
dependencies this test runs with: ``--system-site-packages`` shares the base interpreter's, and a
``.pth`` file lists this interpreter's site-packages (``.venv``'s, which ``--system-site-packages``
does not reach). A path in a ``.pth`` file is appended to ``sys.path`` without its own ``.pth``
files being read, so the editable install's ``.pth`` (which puts the repository's ``src`` on the
path) stays inactive. Subprocesses run without PYTHONPATH and user site-packages, and the tests
check where ``fedit`` was imported from.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import site
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from fedit.config import load_config, save_config
from helpers import ROOT, tiny_args, tracked_files


def _run(command: list[str | Path], cwd: Path, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=_clean_env(),
        capture_output=True,
        text=True,
        check=False,
        **kwargs,
    )


def _clean_env() -> dict[str, str]:
    """This environment less PYTHONPATH and the like, which could put ``src`` on the path."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    return env | {"PYTHONNOUSERSITE": "1"}


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"


def _text(name: str) -> str:
    """A tracked file of the repository, as the wheel should hold it."""
    return (ROOT / name).read_text(encoding="utf-8")


def _site_packages(venv: Path) -> Path:
    [path] = venv.glob("lib/python*/site-packages")
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m build`` (the sdist, then the wheel from it) on a copy of the tracked files,
    so that a file git does not know, or a stale ``build/`` folder, cannot end up in it."""
    if importlib.util.find_spec("build") is None:
        pytest.fail("the build package is missing: pip install -e '.[dev]' (or make install)")
    clone = tmp_path_factory.mktemp("wheel") / "fedit"
    for name in tracked_files():
        source, target = ROOT / name, clone / name
        if source.is_symlink() or source.is_file():  # skips a tracked file deleted here
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target, follow_symlinks=False)
    dist = clone.parent / "dist"
    build = [sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, clone]
    result = _run(build, cwd=clone.parent)
    assert result.returncode == 0, _output(result)
    [built] = dist.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel; its dependencies are borrowed."""
    root = tmp_path_factory.mktemp("venv") / "venv"
    elsewhere = root.parent
    create = [sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", root]
    assert _run(create, cwd=elsewhere).returncode == 0
    python = root / "bin" / "python"
    install = [sys.executable, "-m", "pip", "--python", python, "install", "--quiet"]
    install += ["--no-deps", "--no-index", "--disable-pip-version-check", wheel]
    result = _run(install, cwd=elsewhere)
    assert result.returncode == 0, _output(result)
    # Written after the install, so that pip saw no fedit already installed (the editable one).
    borrowed = "\n".join(site.getsitepackages()) + "\n"
    (_site_packages(root) / "borrowed_dependencies.pth").write_text(borrowed)
    return root


@pytest.fixture(scope="module")
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty working directory with no repository around it."""
    folder = tmp_path_factory.mktemp("outside")
    assert ROOT not in folder.parents, f"{folder} is inside the repository {ROOT}"
    return folder


def test_the_venv_imports_the_installed_wheel_not_the_repository(venv, outside):
    probe = "import sys, fedit, torch; print(fedit.__file__); print(*sys.path, sep='\\n')"
    result = _run([venv / "bin" / "python", "-c", probe], cwd=outside)
    assert result.returncode == 0, _output(result)  # torch: the borrowed dependencies work
    location, *path = result.stdout.splitlines()
    installed = _site_packages(venv)
    assert Path(location) == installed / "fedit" / "__init__.py"
    # Nothing ahead of the wheel is the repository's src (here, src is not on the path at all).
    assert str(ROOT / "src") not in path[: path.index(str(installed))], path


def test_the_wheel_holds_every_file_of_the_package(venv):
    """Package data included: the chat page, the built-in configs, and every module."""
    installed = _site_packages(venv)
    package = [name for name in tracked_files() if name.startswith("src/fedit/")]
    data = {"serving/static/index.html", "serving/static/chat.js", "configs/quickstart.yaml"}
    assert {f"src/fedit/{name}" for name in data} <= set(package)
    missing = [name for name in package if not (installed / name[4:]).is_file()]
    assert not missing, f"not in the wheel: {missing}"
    differ = [
        name
        for name in package
        if (installed / name[4:]).read_bytes() != (ROOT / name).read_bytes()
    ]
    assert not differ, f"the wheel's copy differs from the repository's: {differ}"


def test_help_and_the_built_in_quickstart_by_name(venv, outside):
    fedit = venv / "bin" / "fedit"
    result = _run([fedit, "--help"], cwd=outside)
    assert result.returncode == 0, _output(result)
    assert "Federated instruction tuning" in result.stdout and "serve" in result.stdout
    # The console script reads the packaged config: validate names the file it read.
    result = _run([fedit, "validate", "quickstart"], cwd=outside)
    assert result.returncode == 0, _output(result)
    packaged = _site_packages(venv) / "fedit" / "configs" / "quickstart.yaml"
    assert result.stdout.startswith(f"{packaged}: valid"), result.stdout
    # The README's path, outside the repository: one line that names the built-in copy.
    result = _run([fedit, "run", "configs/quickstart.yaml"], cwd=outside)
    assert result.returncode == 2
    assert "write quickstart instead" in result.stderr, _output(result)


@pytest.fixture(scope="module")
def quickstart_run(venv, outside, tiny_model_dir) -> Path:
    """``fedit run quickstart`` from the installed wheel, on the tiny model."""
    run_dir = outside / "runs" / "quickstart"
    command = [venv / "bin" / "fedit", "run", "quickstart", *tiny_args(tiny_model_dir, run_dir)]
    result = _run(command, cwd=outside, timeout=300)
    assert result.returncode == 0, _output(result)
    assert "report:" in result.stdout, _output(result)
    return run_dir


def test_run_of_the_built_in_quickstart(quickstart_run, tiny_model_dir):
    for name in ("report.md", "metrics.jsonl", "global_adapter/adapter_model.safetensors"):
        assert (quickstart_run / name).is_file(), name
    # The run read the quickstart (lora, template, schedule ...), not the defaults.
    quickstart = ROOT / "configs" / "quickstart.yaml"
    expected = load_config(quickstart, tiny_args(tiny_model_dir, quickstart_run))
    saved = yaml.safe_load((quickstart_run / "config.yaml").read_text())
    assert saved == yaml.safe_load(save_config(expected))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_serve_answers_the_chat_page(venv, outside, quickstart_run):
    port = _free_port()
    adapter = quickstart_run / "global_adapter"
    command = [venv / "bin" / "fedit", "serve", "--adapter", adapter, "--port", str(port)]
    process = subprocess.Popen(
        [str(part) for part in command],
        cwd=outside,
        env=_clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, url)
        page = httpx.get(f"{url}/", timeout=10)
        script = httpx.get(f"{url}/chat.js", timeout=10)
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert page.status_code == 200 and page.text == _text("src/fedit/serving/static/index.html")
    assert script.status_code == 200 and script.text == _text("src/fedit/serving/static/chat.js")


def _wait_until_healthy(process: subprocess.Popen[str], url: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, process.communicate()[0]
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"fedit serve did not start within {seconds:.0f} s"
        time.sleep(0.2)
