from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols import Channel, TopicError, parse_topic, subscription_for, topic_for


@given(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z"), st.sampled_from(Channel))
def test_topics_round_trip(vehicle_id: str, channel: Channel) -> None:
    parsed = parse_topic(topic_for(vehicle_id, channel))
    assert (parsed.vehicle_id, parsed.channel) == (vehicle_id, channel)


def test_every_vehicle_has_its_own_namespace() -> None:
    assert topic_for("drone-1", Channel.TELEMETRY) == "fleetedge/v1/drone-1/up/telemetry"
    assert topic_for("drone-1", Channel.COMMANDS) == "fleetedge/v1/drone-1/down/commands"
    assert subscription_for(Channel.EVENTS) == "fleetedge/v1/+/up/events"


@pytest.mark.parametrize("vehicle_id", ["", "a/b", "+", "#", "x" * 65, "-lead", "with space"])
def test_ids_that_could_escape_the_namespace_are_refused(vehicle_id: str) -> None:
    with pytest.raises(TopicError, match="not valid"):
        topic_for(vehicle_id, Channel.TELEMETRY)


@pytest.mark.parametrize("topic", ["other/v1/d/up/telemetry", "fleetedge/v1/d/up/unknown", "fleetedge/v1/d",
                                   "fleetedge/v1/bad id/up/telemetry"])
def test_foreign_topics_are_refused(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)
