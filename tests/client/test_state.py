"""The client-state store: the commit rule by hand, stamps, atomic writes, garbage collection,
and what run.json and resume's checks add to the run folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from fedit.client.state import (
    ClientStateStore,
    Stamp,
    StampError,
    committed,
    file_name,
    stamp_instructions,
)
from fedit.config import ConfigError, load_config
from fedit.server.checkpoint import RUN_FILE, RunDir
from fedit.types import FitConfig, FitInstruction

RUN_ID = "0123456789abcdef0123456789abcdef"

# (attempt, round) saved, attempts, current round -> committed?
# Attempt 1 started at round 1 and crashed during round 5; attempt 2 restarted at round 5.
WORKED = [
    ((1, 3), [1], 4, True),  # an earlier round of the running attempt
    ((1, 4), [1], 4, False),  # this very round: not complete yet
    ((1, 4), [1, 5], 5, True),  # complete before the crash (attempt 2 started at 5)
    ((1, 5), [1, 5], 5, False),  # saved in the crashed round: never complete
    ((1, 5), [1, 5], 9, False),  # ... however late the client is chosen again
    ((2, 5), [1, 5], 5, False),  # the replay's own round 5, while it runs
    ((2, 5), [1, 5], 6, True),  # ... and once round 6 began
    ((2, 5), [1, 5, 5], 7, False),  # attempt 2 crashed in round 5 too
    ((2, 6), [1, 5, 5], 7, False),  # impossible, and refused: attempt 3 restarted at 5
    ((3, 5), [1, 5, 5], 6, True),
    ((3, 2), [1, 5], 6, False),  # an attempt the stamp does not know
    ((0, 1), [1, 5], 6, False),  # attempts are 1-based
]


@pytest.mark.parametrize(("version", "attempts", "server_round", "expected"), WORKED)
def test_committed_worked_table(version, attempts, server_round, expected):
    assert committed(version, attempts, server_round) is expected


def _stamp(attempts, server_round) -> Stamp:
    return Stamp(RUN_ID, tuple(attempts), server_round)


def _state(value: float) -> dict[str, torch.Tensor]:
    return {"scaffold/control/m.lora_A.weight": torch.full((2, 3), value)}


def test_a_stale_version_from_a_crashed_attempt_is_never_read(tmp_path):
    store = ClientStateStore.for_run(tmp_path)
    store.save(2, _stamp([1], 3), _state(3.0))  # round 3 completed
    store.save(2, _stamp([1], 5), _state(5.0))  # then the run crashed inside round 5
    # The replay (attempt 2 from round 5) draws another sample: client 2 is next chosen in 8.
    later = _stamp([1, 5], 8)
    assert store.newest(2, later) == store.folder(2) / file_name(1, 3)
    assert torch.equal(
        store.load(2, later)["scaffold/control/m.lora_A.weight"], torch.full((2, 3), 3.0)
    )
    store.save(2, later, _state(8.0))
    assert sorted(store.versions(2)) == [(1, 3), (2, 8)]  # the stale round 5 went
    assert store.load(2, _stamp([1, 5], 9))["scaffold/control/m.lora_A.weight"][0, 0] == 8.0


def test_a_client_that_never_trained_has_no_state(tmp_path):
    assert ClientStateStore.for_run(tmp_path).load(0, _stamp([1], 1)) == {}


def test_garbage_collection_keeps_at_most_two_versions(tmp_path):
    store = ClientStateStore.for_run(tmp_path)
    for server_round in range(1, 7):
        store.save(1, _stamp([1], server_round), _state(float(server_round)))
        assert len(store.versions(1)) <= 2
    # The newest committed (round 5, what round 6 loaded) and round 6's own.
    assert sorted(store.versions(1)) == [(1, 5), (1, 6)]
    metadata = json.loads(_header(store.versions(1)[1, 6]))["__metadata__"]
    assert metadata == {"run_id": RUN_ID, "attempt": "1", "round": "6", "client": "1"}


def _header(path: Path) -> bytes:
    raw = path.read_bytes()
    return raw[8 : 8 + int.from_bytes(raw[:8], "little")]


def test_a_save_that_fails_leaves_the_old_version_whole(tmp_path, monkeypatch):
    store = ClientStateStore.for_run(tmp_path)
    store.save(0, _stamp([1], 1), _state(1.0))

    def crash(*args):
        raise OSError("disk full")

    monkeypatch.setattr("fedit.io.os.replace", crash)
    with pytest.raises(OSError, match="disk full"):
        store.save(0, _stamp([1], 2), _state(2.0))
    assert [p.name for p in store.folder(0).iterdir()] == [file_name(1, 1)]  # no temporary left
    assert store.load(0, _stamp([1], 3))["scaffold/control/m.lora_A.weight"][0, 0] == 1.0


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "state_run '' is not 32 hex digits"),  # an unstamped instruction
        ({"state_run": "../../etc/passwd"}, "is not 32 hex digits"),
        ({"state_run": RUN_ID.upper()}, "is not 32 hex digits"),
        ({"state_run": RUN_ID + "0"}, "is not 32 hex digits"),
        ({"state_run": RUN_ID, "state_attempts": "1;5"}, "is not a list of rounds"),
        ({"state_run": RUN_ID, "state_attempts": "5,1", "server_round": 6}, "are not rising"),
        ({"state_run": RUN_ID, "state_attempts": "1,7", "server_round": 6}, "are not rising"),
        ({"state_run": RUN_ID, "state_attempts": "0", "server_round": 6}, "are not rising"),
    ],
)
def test_a_stamp_is_checked_before_it_names_anything(fields, message):
    with pytest.raises(StampError, match=message):
        Stamp.of(FitConfig(lr=0.1, rank=2, seed=0, **fields))


def test_stamps_round_trip_through_the_instruction():
    stamp = _stamp([1, 5, 5], 7)
    (instruction,) = stamp_instructions([FitInstruction(0, {}, FitConfig(0.1, 2, 0))], stamp)
    assert instruction.config.state_attempts == "1,5,5"
    assert Stamp.of(instruction.config) == stamp


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [f"output_dir={tmp_path / 'run'}", *extra])


def test_run_json_names_the_run_and_each_resume_appends_its_first_round(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = RunDir(cfg.output_dir)
    run_dir.start(cfg, {}, overwrite=False)
    record = json.loads((run_dir.path / RUN_FILE).read_text())
    assert len(record["run_id"]) == 32 and int(record["run_id"], 16) >= 0
    assert record["attempts"] == [1]
    assert run_dir.attempt(1, resumed=False) == Stamp(record["run_id"], (1,), 1)
    assert run_dir.attempt(5, resumed=True).attempts == (1, 5)
    assert run_dir.attempt(5, resumed=True).attempts == (1, 5, 5)  # crashed in 5 again
    assert json.loads((run_dir.path / RUN_FILE).read_text())["attempts"] == [1, 5, 5]
    other = RunDir(tmp_path / "other")
    other.start(_cfg(tmp_path / "other"), {}, overwrite=False)
    assert json.loads((other.path / RUN_FILE).read_text())["run_id"] != record["run_id"]


def test_resume_checks_the_state_each_client_will_read(tmp_path):
    cfg = _cfg(tmp_path)
    run_dir = RunDir(cfg.output_dir)
    run_dir.start(cfg, {}, overwrite=False)
    run_id = json.loads((run_dir.path / RUN_FILE).read_text())["run_id"]
    store = ClientStateStore.for_run(run_dir.path)
    read = store.save(3, Stamp(run_id, (1,), 1), _state(1.0))
    never_read = store.save(3, Stamp(run_id, (1,), 2), _state(2.0))  # round 2 never completed
    _complete(run_dir, 1)
    resumed = _cfg(tmp_path, "resume=true")
    never_read.write_bytes(never_read.read_bytes()[:-5])
    run_dir.check_resumable(resumed)  # the damaged file is round 2's, which nobody reads
    read.write_bytes(read.read_bytes()[:-5])
    with pytest.raises(ConfigError, match=r"resume: client state .*r0001.safetensors is damaged"):
        run_dir.check_resumable(resumed)
    (run_dir.path / RUN_FILE).write_text('{"run_id": "../x", "attempts": [1]}')
    with pytest.raises(ConfigError, match="is not a run's id and attempts"):
        run_dir.check_resumable(resumed)


def _complete(run_dir: RunDir, server_round: int) -> None:
    """Round ``server_round`` as the loop leaves it: an adapter and the completion marker."""
    run_dir.round_dir(server_round).mkdir(parents=True)
    save_file(
        {"a": torch.zeros(1)}, str(run_dir.round_dir(server_round) / "adapter_model.safetensors")
    )
    run_dir.complete_round(server_round, {})
