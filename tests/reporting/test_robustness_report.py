"""The report's attacks-and-defence section: rejections per client, precision and recall."""

from __future__ import annotations

from fedit.reporting.robustness import robustness_lines, robustness_summary


def _round(number: int, clients: list[int], attackers: list[int], rejected: list[int]) -> dict:
    return {
        "round": number,
        "train_loss": {str(c): 1.0 for c in clients},
        "aggregation": {
            "attackers": attackers,
            "robust": {"method": "krum", "rejected": rejected},
        },
    }


HISTORY = [
    {"round": 0, "eval": {"loss": 2.0}},
    _round(1, [0, 1, 2, 3], attackers=[3], rejected=[3]),  # caught
    _round(2, [0, 1, 2, 3], attackers=[3], rejected=[1]),  # missed 3, wrongly rejected 1
    _round(3, [0, 1, 2], attackers=[], rejected=[]),
]


def test_precision_and_recall_count_client_rounds():
    summary = robustness_summary(HISTORY)
    assert summary["precision"] == 0.5  # 1 of 2 rejections was an attacker
    assert summary["recall"] == 0.5  # 1 of 2 attacks was rejected
    assert summary["rejected"] == {3: 1, 1: 1}
    assert summary["attacked"] == {3: 2}
    assert summary["participated"] == {0: 3, 1: 3, 2: 3, 3: 2}


def test_section_lists_every_client_and_is_absent_without_attack_or_defence():
    lines = robustness_lines(HISTORY, "sign_flip", "krum")
    text = "\n".join(lines)
    assert "precision 0.50, recall 0.50" in text
    assert "| 3 | 2 | 2 | 1 |" in text and "| 1 | 3 | 0 | 1 |" in text
    assert robustness_lines(HISTORY, "none", "none") == []


def test_section_gives_the_backdoor_success_rate_at_the_base_and_the_last_round():
    history = [
        {"round": 0, "eval": {"loss": 2.0, "backdoor_asr": 0.0}},
        {**_round(1, [0, 1], attackers=[1], rejected=[]), "eval": {"backdoor_asr": 0.25}},
        {**_round(2, [0, 1], attackers=[1], rejected=[]), "eval": {"backdoor_asr": 0.75}},
    ]
    text = "\n".join(robustness_lines(history, "backdoor", "none"))
    assert "base model 0.00, FedIT (round 2) 0.75" in text
    assert "0.25" not in text
    assert "Backdoor success rate" not in "\n".join(robustness_lines(HISTORY, "sign_flip", "krum"))
