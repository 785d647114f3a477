"""``fedit serve`` as a command: bad input is one line and exit code 2 before anything loads,
and the real script serves a run until it is interrupted."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from peft import LoraConfig, get_peft_model
from serving_support import make_run
from transformers import LlamaConfig, LlamaForCausalLM

from fedit.cli.main import main
from fedit.config import ConfigError
from fedit.serving.models import ServedModels, parse_adapter_specs


@pytest.fixture(scope="module")
def adapter(tiny_model_dir, tmp_path_factory):
    return make_run(tiny_model_dir, tmp_path_factory.mktemp("cli-run"), "chat", seed=4)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


BAD_SERVE = {
    "missing adapter folder": (["--adapter", "{missing}"], "is not a PEFT adapter"),
    "bad name=path": (["--adapter", "{adapter}", "--adapter", "my model={adapter}"], "name=path"),
    "two unnamed adapters": (["--adapter", "{adapter}", "--adapter", "{adapter}"], "given twice"),
    "port in use": (["--adapter", "{adapter}", "--port", "{busy}"], "already in use"),
    "port out of range": (["--adapter", "{adapter}", "--port", "70000"], "not a port number"),
    "max tokens limit": (["--adapter", "{adapter}", "--max-tokens-limit", "0"], "must be >= 1"),
    "max request bytes": (["--adapter", "{adapter}", "--max-request-bytes", "0"], "must be >= 1"),
}


@pytest.mark.parametrize("case", list(BAD_SERVE), ids=list(BAD_SERVE))
def test_serve_bad_input_one_line_exit_2(case, adapter, tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        values = {
            "adapter": adapter,
            "missing": tmp_path / "missing",
            "busy": busy.getsockname()[1],
        }
        args, expected = BAD_SERVE[case]
        code = main(["serve", *[a.format(**values) for a in args]])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("fedit: error:") and expected in err, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_serve_without_the_extra_names_it(adapter, monkeypatch, capsys):
    import fedit.serving.server as server

    real_find_spec = server.importlib.util.find_spec
    monkeypatch.setattr(
        server.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fastapi" else real_find_spec(name, *a),
    )
    assert main(["serve", "--adapter", str(adapter)]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'fedit[serve]'" in err and len(err.splitlines()) == 1


def test_adapter_of_another_base_model_is_a_config_error(adapter, tmp_path):
    other_model = tmp_path / "other"
    other_model.mkdir()
    config = {"model": {"name": str(other_model)}, "data": {"template": "chat"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=400,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(other_model)
    wrong = get_peft_model(
        LlamaForCausalLM.from_pretrained(other_model), LoraConfig(target_modules=["q_proj"])
    )
    wrong.save_pretrained(tmp_path / "wrong")
    specs = parse_adapter_specs([str(adapter), f"wrong={tmp_path / 'wrong'}"])
    with pytest.raises(ConfigError, match=r"--adapter: cannot load .*wrong"):
        ServedModels(specs)


def test_serve_command_wires_adapters_key_and_limit(adapter, monkeypatch, capsys):
    """``fedit serve`` in-process: the real app on the socket it bound, served in a thread
    instead of blocking (the slow test below runs the script itself)."""
    import fedit.serving.server as server

    checked = []

    def serve_in_thread(app, sock, log_level):
        with server.running_server(app, sock=sock) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
            assert [m.id for m in client.models.list().data] == ["base", "global", "round_1"]
            with pytest.raises(openai.BadRequestError, match="limit of 8"):
                client.chat.completions.create(
                    model="round_1", messages=[{"role": "user", "content": "hi"}], max_tokens=9
                )
            response = client.chat.completions.create(
                model="round_1", messages=[{"role": "user", "content": "hi"}], max_tokens=8
            )
            assert response.usage.completion_tokens <= 8
            assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401
            big = {"model": "base", "messages": [{"role": "user", "content": "hi " * 2000}]}
            auth = {"Authorization": "Bearer k3y"}
            endpoint = f"{url}/v1/chat/completions"
            assert httpx.post(endpoint, json=big, headers=auth, timeout=30).status_code == 413
            checked.append(url)

    monkeypatch.setattr(server, "run_server", serve_in_thread)
    monkeypatch.setenv("FEDIT_API_KEY", "k3y")
    args = ["--adapter", str(adapter), "--adapter", f"round_1={adapter}", "--port", "0"]
    assert main(["serve", *args, "--max-tokens-limit", "8", "--max-request-bytes", "4000"]) == 0
    assert len(checked) == 1


@pytest.mark.slow
def test_serve_script_answers_the_openai_client(adapter, tmp_path):
    port = _free_port()
    fedit = Path(sys.executable).with_name("fedit")
    env = os.environ | {"FEDIT_API_KEY": "k3y"}
    process = subprocess.Popen(
        [str(fedit), "serve", "--adapter", str(adapter), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "fedit serve did not start within 60 s"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["base", "global"]
        response = client.chat.completions.create(
            model="global", messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert response.usage.completion_tokens <= 3
        assert httpx.get(f"{url}/v1/models", timeout=5).status_code == 401  # key from the env
    finally:
        process.send_signal(signal.SIGINT)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert f"serving on {url}" in output


def _broken_copy(adapter: Path, folder: Path, damage: str) -> Path:
    """A copy of ``adapter`` inside a run folder, without weights or with them truncated."""
    shutil.copytree(adapter.parent, folder)
    weights = folder / adapter.name / "adapter_model.safetensors"
    if damage == "no weights":
        weights.unlink()
    else:
        weights.write_bytes(weights.read_bytes()[:-64])
    return folder / adapter.name


@pytest.mark.parametrize("damage", ["no weights", "truncated weights"])
@pytest.mark.parametrize("command", ["generate", "serve", "eval"])
def test_adapter_with_missing_or_damaged_weights_is_one_line(
    adapter, tmp_path, capsys, command, damage
):
    broken = _broken_copy(adapter, tmp_path / "run", damage)
    rest = {"generate": ["hi"], "serve": ["--port", "0"], "eval": ["--suite", "heldout"]}
    assert main([command, "--adapter", str(broken), *rest[command]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("fedit: error: --adapter:"), err
    assert "adapter_model.safetensors" in err and "base model" not in err
