"""Drift episodes: act once per episode, end after calm evaluations, then a cooldown."""

from __future__ import annotations

from pathlib import Path

from gateway.drift.episodes import Episodes

KEY = ("chat", "3")


def test_one_action_per_episode_then_cooldown(tmp_path: Path) -> None:
    episodes = Episodes(tmp_path / "episodes.json")
    verdict, first = episodes.observe(KEY, True, 1000.0, cooldown=100.0, clear_after=2)
    assert verdict == "act" and first is not None
    episodes.acted(KEY, first, 1000.0)
    assert (
        episodes.observe(KEY, True, 1010.0, cooldown=100.0, clear_after=2)[0] == "act"
    )  # caller skips done ones
    assert (
        episodes.observe(KEY, False, 1020.0, cooldown=100.0, clear_after=2)[0] == "hold"
    )  # one calm: still on
    assert (
        episodes.observe(KEY, True, 1030.0, cooldown=100.0, clear_after=2)[1] is first
    )  # same episode
    assert episodes.observe(KEY, False, 1040.0, cooldown=100.0, clear_after=2)[0] == "hold"
    assert episodes.observe(KEY, False, 1050.0, cooldown=100.0, clear_after=2)[0] == "ended"
    assert episodes.observe(KEY, False, 1060.0, cooldown=100.0, clear_after=2) == ("calm", None)
    verdict, second = episodes.observe(
        KEY, True, 1070.0, cooldown=100.0, clear_after=2
    )  # within 100 s of acting
    assert verdict == "cooldown" and second is not None and second.id != first.id
    assert (
        episodes.observe(KEY, True, 1101.0, cooldown=100.0, clear_after=2)[0] == "act"
    )  # cooldown over
    assert episodes.count(KEY) == 2


def test_a_restarted_worker_continues_the_episode(tmp_path: Path) -> None:
    path = tmp_path / "episodes.json"
    episodes = Episodes(path)
    _, episode = episodes.observe(KEY, True, 5.0, cooldown=0.0, clear_after=1)
    assert episode is not None
    episode.done.append("kubeflow")
    episode.run_id = "run-1"
    episodes.acted(KEY, episode, 5.0)
    again = Episodes(path)
    current = again.current(KEY)
    assert current is not None
    assert (current.id, current.done, current.run_id) == (episode.id, ["kubeflow"], "run-1")
    assert again.count(KEY) == 1


def test_unreadable_state_file_starts_fresh(tmp_path: Path) -> None:
    path = tmp_path / "episodes.json"
    path.write_text("{not json")
    assert Episodes(path).current(KEY) is None
