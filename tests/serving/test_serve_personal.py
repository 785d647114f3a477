"""Personal adapters served and exported by client id: ``fedit serve --run RUN`` answers as
``client-<id>`` exactly as base plus that client's adapter would, through one swap slot, and
``fedit export --run RUN --client ID`` writes that client's model."""

from __future__ import annotations

import json

import openai
import pytest
import yaml
from serving_support import Reference, make_run, random_adapter

from fedit.cli.main import main
from fedit.serving.models import ServedModels, served_adapters

MESSAGES = [{"role": "user", "content": "Sort these numbers: 5, 3, 9"}]
CLIENTS = (0, 1)


@pytest.fixture(scope="module")
def run(tiny_model_dir, tmp_path_factory):
    """A personalized run: a global adapter and clients 0 and 1's own, all different."""
    run = tmp_path_factory.mktemp("personal-run")
    make_run(tiny_model_dir, run, "alpaca", seed=5)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["personalization"] = {"method": "ditto"}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    for client in CLIENTS:
        random_adapter(tiny_model_dir, run / "personal" / f"client-{client}", seed=10 + client)
    return run


def _reference_answer(tiny_model_dir, adapter) -> str:
    return Reference(tiny_model_dir, adapter, "alpaca").answer(MESSAGES, 12)[0]


def test_serve_run_answers_each_client_from_one_slot(tiny_model_dir, run, monkeypatch):
    import fedit.serving.server as server

    expected = {
        name: _reference_answer(tiny_model_dir, run / folder)
        for name, folder in [
            ("global", "global_adapter"),
            ("client-0", "personal/client-0"),
            ("client-1", "personal/client-1"),
        ]
    }
    assert len(set(expected.values())) == 3  # the three adapters answer differently
    answers = []

    def serve_in_thread(app, sock, log_level):
        with server.running_server(app, sock=sock) as url:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            ids = [m.id for m in client.models.list().data]
            assert ids == ["base", "global", "client-0", "client-1"]
            for model in ("client-0", "client-1", "client-0", "global", "client-1"):
                response = client.chat.completions.create(
                    model=model, messages=MESSAGES, max_tokens=12, temperature=0
                )
                answers.append((model, response.choices[0].message.content))

    monkeypatch.setattr(server, "run_server", serve_in_thread)
    assert main(["serve", "--run", str(run), "--port", "0"]) == 0
    assert answers and all(text == expected[model] for model, text in answers), answers


def test_personal_adapters_share_one_resident_slot(run):
    specs, personal = served_adapters([], run)
    models = ServedModels(specs, personal=personal)
    # the global adapter and one slot for both clients: memory does not grow with clients
    assert len(models.model.peft_config) == 2
    assert sorted(models.models) == ["base", "client-0", "client-1", "global"]


def test_export_a_client_merged_matches_base_plus_its_adapter(tiny_model_dir, run, tmp_path):
    out = tmp_path / "client-1"
    assert main(["export", "--run", str(run), "--client", "1", "--out", str(out), "--merge"]) == 0
    info = json.loads((out / "fedit_export.json").read_text())
    assert info["client"] == 1 and info["method"] == "ditto" and info["merged"] is True
    assert info["source_adapter"] == str((run / "personal" / "client-1").resolve())
    reference = Reference(tiny_model_dir, run / "personal" / "client-1", "alpaca")
    merged = Reference(out, None, "alpaca")
    assert merged.answer(MESSAGES, 12) == reference.answer(MESSAGES, 12)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["export", "--client", "0"], "--client: needs --run RUN"),
        (["export", "--run", "{run}", "--adapter", "{run}/global_adapter"], "--adapter: give"),
        (["export", "--run", "{run}", "--client", "7"], "personal/client-7 does not exist"),
        (["export"], "--adapter: give the adapter folder, or --run"),
        (["serve", "--run", "{run}", "--adapter", "{run}/global_adapter"], "name it NAME=DIR"),
        (["serve", "--run", "{tmp}"], "is not a fedit run folder"),
    ],
    ids=[
        "client without run",
        "adapter and run",
        "missing client",
        "neither",
        "two globals",
        "no run",
    ],
)
def test_refusals_exit_2_with_one_line(args, expected, run, tmp_path, capsys):
    argv = [a.format(run=run, tmp=tmp_path) for a in args]
    if argv[0] == "export":
        argv += ["--out", str(tmp_path / "out")]
    else:
        argv += ["--port", "0"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (tmp_path / "out").exists()
