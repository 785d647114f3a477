"""The simulated clock: its arithmetic on a worked example, profiles, availability, the deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.config import ConfigError, SystemConfig, load_config
from fedit.server.checkpoint import RunDir
from fedit.server.clock import ClientTime, SimulatedClock, client_time, time_round
from fedit.server.loop import run_rounds
from fedit.server.profiles import ClientProfile, draw_profiles, read_profiles
from fedit.strategy import build_strategy
from fedit.strategy.selection import among_online, select_random
from fedit.types import ClientUpdate, RoundResult

# Worked example: 1000 tokens/s, 1 MB/s down, 0.5 MB/s up.
PROFILE = ClientProfile(
    tokens_per_second=1000.0, down_bytes_per_second=1e6, up_bytes_per_second=5e5
)


def _update(client_id: int, tokens: int, bytes_down: int, bytes_up: int) -> ClientUpdate:
    metrics = {"tokens": tokens, "bytes_down": bytes_down, "bytes_up": bytes_up}
    return ClientUpdate(client_id, {"w": torch.zeros(1)}, 1, 0.0, 1, metrics=metrics)


def test_a_clients_time_is_download_plus_compute_plus_upload():
    time = client_time(PROFILE, bytes_down=2_000_000, tokens=3000, bytes_up=1_000_000)
    assert (time.download, time.compute, time.upload) == (2.0, 3.0, 2.0)
    assert time.total == 7.0


def test_a_round_lasts_as_long_as_its_slowest_client_and_the_deadline_drops_those_over_it():
    times = {0: ClientTime(1, 2, 1), 1: ClientTime(2, 5, 1), 2: ClientTime(1, 1, 1)}  # 4, 8, 3 s
    assert time_round(times).duration == 8.0
    assert time_round(times).late == []
    at_four = time_round(times, deadline=4.0)  # exactly at the deadline makes it
    assert (at_four.late, at_four.duration) == ([1], 4.0)
    assert time_round(times, deadline=3.5).late == [0, 1]
    assert time_round(times, deadline=8.0) == time_round(times)
    assert time_round({}).duration == 0.0


def test_the_clock_times_replies_accumulates_and_records_each_client():
    fast = PROFILE
    slow = ClientProfile(100.0, 1e6, 5e5)
    clock = SimulatedClock([fast, slow], seed=0, deadline=10.0)
    updates = [_update(0, 3000, 2_000_000, 1_000_000), _update(1, 1500, 1_000_000, 500_000)]
    timing = clock.time_round(updates)  # client 0: 7 s; client 1: 1 + 15 + 1 = 17 s
    assert timing.late == [1] and timing.duration == 10.0
    record = clock.record(1, timing, updates)
    assert record["clients"]["1"] == {
        "download": 1.0,
        "compute": 15.0,
        "upload": 1.0,
        "total": 17.0,
    }
    assert record["wasted"] == {"tokens": 1500, "bytes_down": 1_000_000, "bytes_up": 500_000}
    clock.time_round(updates[:1])
    assert clock.elapsed == 17.0  # 10 s (deadline) + 7 s
    resumed = SimulatedClock([fast, slow], seed=0)
    resumed.replay([{"round": 0}, {"round": 1, "system": {"elapsed": 17.0}}])
    assert resumed.elapsed == 17.0


def test_sampled_profiles_are_deterministic_per_seed():
    system = SystemConfig(profiles="sampled", speed_sigma=0.5)
    first = draw_profiles(system, 20, seed=1)
    assert first == draw_profiles(system, 20, seed=1)
    assert first != draw_profiles(system, 20, seed=2)
    assert {p.down_bytes_per_second for p in first} <= set(system.down_tiers)
    speeds = sorted(p.tokens_per_second for p in draw_profiles(system, 2001, seed=3))
    assert speeds[1000] == pytest.approx(system.speed_median, rel=0.1)  # the median


def test_profiles_from_csv_in_client_order(tmp_path):
    path = tmp_path / "profiles.csv"
    path.write_text(
        "client_id,tokens_per_second,down_bytes_per_second,up_bytes_per_second,availability\n"
        "1,50,2e6,1e6,\n0,100,1e6,5e5,0.5\n"
    )
    profiles = read_profiles(path, 2, default_availability=0.9)
    assert profiles == [ClientProfile(100, 1e6, 5e5, 0.5), ClientProfile(50, 2e6, 1e6, 0.9)]
    assert read_profiles(path, 2, 0.9) == profiles


HEADER = "client_id,tokens_per_second,down_bytes_per_second,up_bytes_per_second\n"
BAD_CSV = {
    "missing client": (HEADER + "0,10,1,1\n", "no row for client 1"),
    "negative speed": (HEADER + "0,10,1,1\n1,-5,1,1\n", ":3: tokens_per_second must be > 0"),
    "zero bandwidth": (HEADER + "0,10,0,1\n1,1,1,1\n", ":2: down_bytes_per_second must be > 0"),
    "unknown column": (HEADER.strip() + ",gpu\n0,1,1,1,a\n", "unknown column 'gpu'"),
    "not a number": (HEADER + "0,fast,1,1\n1,1,1,1\n", ":2: tokens_per_second 'fast'"),
    "client out of range": (HEADER + "0,1,1,1\n7,1,1,1\n", ":3: client_id '7' is not in 0..1"),
    "a second row": (HEADER + "0,1,1,1\n0,1,1,1\n", ":3: client 0 has a second row"),
    "unreadable": (None, "cannot read it"),
}


@pytest.mark.parametrize("case", list(BAD_CSV), ids=list(BAD_CSV))
def test_a_bad_profile_csv_is_one_line_naming_the_file_and_row(case, tmp_path):
    text, expected = BAD_CSV[case]
    path = tmp_path / "profiles.csv"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ConfigError) as err:
        read_profiles(path, 2, 1.0)
    message = str(err.value)
    assert str(path) in message and expected in message, message
    assert "\n" not in message


def test_availability_is_seeded_and_periodic_patterns_alternate():
    profiles = [ClientProfile(1, 1, 1, availability=0.5)] * 40
    clock = SimulatedClock(profiles, seed=4)
    assert clock.online(3) == SimulatedClock(profiles, seed=4).online(3)
    assert 5 < len(clock.online(3)) < 35 and clock.online(3) != clock.online(4)
    periodic = SimulatedClock(profiles, seed=4, availability_period=4)
    for client in range(40):  # online 2 rounds of every 4, at its own phase
        pattern = [client in periodic.online(r) for r in range(1, 9)]
        assert sum(pattern[:4]) == 2 and pattern[:4] == pattern[4:]
    always = SimulatedClock([ClientProfile(1, 1, 1)] * 5, seed=0)
    assert always.online(1) == [0, 1, 2, 3, 4]


def test_selection_among_online_clients_with_over_selection():
    online = {1: [2, 5, 7, 9]}
    select = among_online(select_random, lambda r: online.get(r, []), over_select=1.3)
    chosen = select(1, [1] * 10, 2, 0)
    assert len(chosen.selected) == 3 and set(chosen.selected) <= {2, 5, 7, 9}  # ceil(2.6)
    assert select(2, [1] * 10, 2, 0).selected == []  # nobody online
    assert len(among_online(select_random, lambda r: [4])(1, [1] * 10, 3, 0).selected) == 1


@pytest.mark.parametrize("privacy", ["privacy.level=client", "privacy.secure_aggregation=true"])
def test_the_clock_is_refused_where_clients_report_nothing_of_their_own(privacy):
    with pytest.raises(ConfigError) as err:
        load_config(None, ["federation.system.profiles=sampled", privacy])
    problems = [p for p in err.value.problems if p.startswith("federation.system")]
    assert len(problems) == 1 and privacy.split("=")[0] in problems[0]


def test_no_profiles_no_clock_and_records_as_before():
    assert SimulatedClock.from_config(load_config(None, [])) is None
    record = RoundResult(1, [0], {0: 1.0}, {0: 2}, None, {"fit": 1.0}, 1e-3).to_json()
    assert "system" not in record
    assert RoundResult(1, [], {}, {}, None, {}, 1e-3, system={"elapsed": 1}).to_json()["system"]
    with pytest.raises(ConfigError, match="federation.system.csv: profiles=csv needs"):
        load_config(None, ["federation.system.profiles=csv"])


def test_csv_profiles_load_through_the_config(tmp_path: Path):
    path = tmp_path / "p.csv"
    path.write_text(HEADER + "".join(f"{c},{c + 1},1,1\n" for c in range(3)))
    cfg = load_config(
        None,
        [
            "federation.num_clients=3",
            "federation.system.profiles=csv",
            f"federation.system.csv={path}",
        ],
    )
    clock = SimulatedClock.from_config(cfg)
    assert clock is not None and [p.tokens_per_second for p in clock.profiles] == [1, 2, 3]


class TimedEngine:
    """Transport and server model: client c trains 1000·(c+1) tokens, so at 1000 tokens/s and
    unlimited bandwidth it takes c+1 simulated seconds."""

    client_sizes = [1] * 5

    def initial_state(self):
        return {"w": torch.zeros(2)}

    def fit(self, instructions, server_round):
        return [
            ClientUpdate(
                i.client_id,
                {"w": i.state["w"] + i.client_id},
                1,
                0.0,
                1,
                metrics={"tokens": 1000 * (i.client_id + 1), "bytes_down": 7, "bytes_up": 5},
            )
            for i in instructions
        ]

    def evaluate(self, state, generate=True):
        return {"loss": 1.0}

    def save_adapter(self, state, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)

    def load_adapter(self, path: Path):
        raise AssertionError("not resumed")


def test_the_deadline_drops_exactly_the_clients_over_it_and_counts_their_waste(tmp_path):
    cfg = load_config(
        None,
        [
            f"output_dir={tmp_path / 'run'}",
            "federation.num_clients=5",
            "federation.rounds=3",
            "federation.fraction_fit=0.4",  # m = 2, over-selected to ceil(2 * 1.5) = 3
            "federation.system.profiles=sampled",
            "federation.deadline=3.5",
            "federation.over_select=1.5",
        ],
    )
    clock = SimulatedClock([ClientProfile(1000.0, 1e12, 1e12)] * 5, cfg.seed, deadline=3.5)
    strategy = build_strategy(cfg)
    strategy.select_among(clock.online)
    aggregated = []
    inner = strategy.aggregate_fit

    def recording(server_round, state, updates):
        aggregated.append(sorted(u.client_id for u in updates))
        return inner(server_round, state, updates)

    strategy.aggregate_fit = recording
    run_dir = RunDir(cfg.output_dir)
    run_dir.start(cfg, {"clients": []}, overwrite=False)
    engine = TimedEngine()
    _, history = run_rounds(cfg, engine, engine, strategy, run_dir, clock=clock)
    elapsed = 0.0
    for record, kept in zip(history[1:], aggregated, strict=True):
        selected, system = record["selected_clients"], record["system"]
        late = [c for c in selected if c + 1 > 3.5]  # clients 3 and 4 take 4 and 5 s
        assert len(selected) == 3
        assert system["late"] == late and kept == [c for c in selected if c not in late]
        assert system["duration"] == pytest.approx(3.5 if late else max(c + 1 for c in selected))
        assert system["wasted"] == {
            "tokens": sum(1000 * (c + 1) for c in late),
            "bytes_down": 7 * len(late),
            "bytes_up": 5 * len(late),
        }
        elapsed += system["duration"]
        assert system["elapsed"] == pytest.approx(elapsed)
    assert any(r["system"]["late"] for r in history[1:])


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["federation.deadline=60"], "federation.deadline: the clock decides"),
        (["federation.over_select=1.3"], "federation.over_select: over-selection makes up"),
        (["federation.system.profiles=sampled", "federation.deadline=0"], "must be > 0 seconds"),
    ],
)
def test_a_deadline_needs_profiles_in_one_line(overrides, expected):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.problems == [p for p in err.value.problems if expected in p]
