"""The command inbox on a real SQLite file: each command admitted once, expired ones never, acks kept until sent."""

from __future__ import annotations

import time
from pathlib import Path

from edge_agent.command_inbox import Admission, CommandInbox
from protocols import AckState, Command


def command(cid: str, *, expires_in: float = 60.0) -> Command:
    now = time.time()
    return Command(command_id=cid, vehicle_id="d1", kind="land", issued_at=now, expires_at=now + expires_in)


def test_a_command_is_admitted_once_even_across_a_restart(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path / "commands.db", "d1")
    assert inbox.admit(command("c1"), time.time()) is Admission.NEW
    assert inbox.admit(command("c1"), time.time()) is Admission.DUPLICATE
    inbox.close()
    again = CommandInbox(tmp_path / "commands.db", "d1")
    assert again.admit(command("c1"), time.time()) is Admission.DUPLICATE
    assert again.state("c1") == (AckState.RECEIVED, "")


def test_an_expired_command_is_stored_as_rejected_and_never_admitted_to_run(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path / "commands.db", "d1")
    assert inbox.admit(command("late", expires_in=-5), time.time()) is Admission.EXPIRED
    state, reason = inbox.state("late") or (None, "")
    assert state is AckState.REJECTED and "expired" in reason
    assert inbox.admit(command("late", expires_in=600), time.time()) is Admission.DUPLICATE


def test_acks_stay_pending_until_the_broker_has_the_latest_state(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path / "commands.db", "d1")
    inbox.admit(command("c1"), time.time())
    [received] = inbox.pending_acks()
    assert received.state is AckState.RECEIVED
    inbox.update("c1", AckState.ACCEPTED)
    inbox.acknowledged(received)  # the ack of an older state does not clear a newer one
    [accepted] = inbox.pending_acks()
    assert accepted.state is AckState.ACCEPTED
    ack = inbox.ack_for(accepted)
    assert (ack.command_id, ack.vehicle_id, ack.state) == ("c1", "d1", AckState.ACCEPTED)
    inbox.acknowledged(accepted)
    assert inbox.pending_acks() == []
    inbox.admit(command("c1"), time.time())  # a redelivery is answered with the current state
    assert [p.state for p in inbox.pending_acks()] == [AckState.ACCEPTED]


def test_commands_cut_short_by_a_stop_are_failed_at_start_never_resumed(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path / "commands.db", "d1")
    for cid in ("waiting", "running", "done"):
        inbox.admit(command(cid), time.time())
    inbox.update("running", AckState.ACCEPTED)
    inbox.update("done", AckState.COMPLETED)
    assert sorted(inbox.fail_unfinished("restarted")) == ["running", "waiting"]
    assert inbox.state("running") == (AckState.FAILED, "restarted")
    assert inbox.state("done") == (AckState.COMPLETED, "")


def test_pruning_forgets_only_long_expired_commands_whose_acks_went_out(tmp_path: Path) -> None:
    inbox = CommandInbox(tmp_path / "commands.db", "d1")
    inbox.admit(command("old", expires_in=-100_000), time.time())
    inbox.admit(command("old-unsent", expires_in=-100_000), time.time())
    inbox.admit(command("fresh"), time.time())
    for pending in inbox.pending_acks():
        if pending.command_id != "old-unsent":
            inbox.acknowledged(pending)
    assert inbox.prune(time.time()) == 1
    assert inbox.state("old") is None and inbox.state("old-unsent") is not None and inbox.state("fresh") is not None
