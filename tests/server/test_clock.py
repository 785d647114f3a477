"""The simulated clock: its arithmetic on a worked example, profiles, availability, the deadline."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fedit.config import ConfigError, SystemConfig, load_config
from fedit.server.clock import ClientTime, SimulatedClock, client_time, time_round
from fedit.server.profiles import ClientProfile, draw_profiles, read_profiles
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
