"""The SuperNode launcher that caps Flower's fixed waits between polls."""

from __future__ import annotations

import sys
import time

import pytest

pytest.importorskip("flwr")

from fedit.engines import supernode_main  # noqa: E402
from fedit.engines.flower_launch import supernode_command  # noqa: E402


def test_capped_sleep_waits_at_most_the_poll_and_keeps_the_rest_of_time():
    capped = supernode_main.capped_time(0.01)
    started = time.perf_counter()
    capped.sleep(3)  # Flower's idle wait
    assert time.perf_counter() - started < 1.0
    assert capped.time is time.time and capped.monotonic is time.monotonic


def test_patch_reaches_the_wait_flower_uses(monkeypatch):
    import flwr.supernode.start_client_internal as internal

    monkeypatch.setattr(internal, "time", time)  # restored after the test
    assert supernode_main.patch_supernode(0.01)
    started = time.perf_counter()
    internal.time.sleep(3)
    assert time.perf_counter() - started < 1.0


def test_patch_refuses_a_module_laid_out_differently(monkeypatch, caplog):
    import flwr.supernode.start_client_internal as internal

    monkeypatch.setattr(internal, "time", None)
    assert not supernode_main.patch_supernode(0.01)
    assert "polls every 3 s" in caplog.text


def test_arguments_split_into_poll_and_flowers():
    poll, rest = supernode_main.split_args(["--poll", "0.2", "--", "--superlink", "h:1"])
    assert poll == 0.2 and rest == ["--superlink", "h:1"]
    for bad in (["--superlink", "h:1"], ["--poll", "0", "--"], ["--poll", "0.2", "x"]):
        with pytest.raises(SystemExit):
            supernode_main.split_args(bad)


def test_command_runs_the_launcher_unless_poll_is_zero():
    command = supernode_command("h:1", {"client-id": 0}, insecure=True, poll_seconds=0.5)
    assert command[:6] == [
        sys.executable,
        "-m",
        "fedit.engines.supernode_main",
        "--poll",
        "0.5",
        "--",
    ]
    assert command[6:8] == ["--superlink", "h:1"] and "--insecure" in command
    plain = supernode_command("h:1", {"client-id": 0}, insecure=True, poll_seconds=0)
    assert plain[0].endswith("flower-supernode") and "--poll" not in plain


def test_cli_refuses_a_negative_poll(capsys):
    from fedit.cli.main import main

    site = ["flower", "supernode", "--superlink", "127.0.0.1:1", "--insecure", "--client-id", "0"]
    with pytest.raises(SystemExit) as raised:
        main([*site, "--data-path", "a.jsonl", "--poll", "-1"])
    assert raised.value.code == 2
    assert "--poll" in capsys.readouterr().err
