"""Round trips of every message, and every malformed payload rejected with a clear error."""

from __future__ import annotations

import math

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocols import (
    MAX_PAYLOAD_BYTES,
    AckState,
    Command,
    CommandAck,
    EncodedBatch,
    EncodedRecord,
    MalformedMessage,
    RecordClass,
    TelemetryBatch,
    TelemetryRecord,
    VehicleStatus,
    decode,
    encode,
    encode_data,
)

vehicle_ids = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,20}\Z")
timestamps = st.floats(min_value=0, max_value=4e9, allow_nan=False)
scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1),
                    st.floats(allow_nan=False), st.text(max_size=20))
data_maps = st.dictionaries(st.text(min_size=1, max_size=10), scalars, max_size=6)
records = st.builds(TelemetryRecord, seq=st.integers(1, 2**62), ts=timestamps, kind=st.text(min_size=1, max_size=64),
                    cls=st.sampled_from(RecordClass), data=data_maps)
batches = st.builds(TelemetryBatch, vehicle_id=vehicle_ids, records=st.lists(records, min_size=1, max_size=20))
messages = st.one_of(
    batches,
    st.builds(VehicleStatus, vehicle_id=vehicle_ids, online=st.booleans(), ts=timestamps,
              agent_version=st.text(max_size=64)),
    st.builds(Command, command_id=st.text(min_size=1, max_size=64), vehicle_id=vehicle_ids,
              kind=st.text(min_size=1, max_size=64), issued_at=timestamps, expires_at=timestamps, params=data_maps),
    st.builds(CommandAck, command_id=st.text(min_size=1, max_size=64), vehicle_id=vehicle_ids,
              state=st.sampled_from(AckState), ts=timestamps, reason=st.text(max_size=100)),
)
SCHEMAS = [TelemetryBatch, VehicleStatus, Command, CommandAck]


@given(messages)
def test_every_message_round_trips(message: object) -> None:
    assert decode(encode(message), type(message)) == message  # type: ignore[arg-type]


@given(batches)
def test_pre_encoded_batch_is_byte_identical_to_the_plain_one(batch: TelemetryBatch) -> None:
    fast = EncodedBatch(vehicle_id=batch.vehicle_id, records=[
        EncodedRecord(seq=r.seq, ts=r.ts, kind=r.kind, cls=int(r.cls), data=msgspec.Raw(encode_data(r.data)))
        for r in batch.records])
    assert encode(fast) == encode(batch)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000), st.sampled_from(SCHEMAS))
def test_random_bytes_are_rejected_cleanly(payload: bytes, schema: type) -> None:
    try:
        decode(payload, schema)
    except MalformedMessage as exc:
        assert exc.schema == schema.__name__
        assert exc.reason


@given(batches, st.data())
def test_truncated_payloads_are_rejected(batch: TelemetryBatch, data: st.DataObject) -> None:
    payload = encode(batch)
    cut = data.draw(st.integers(0, len(payload) - 1))
    with pytest.raises(MalformedMessage):
        decode(payload[:cut], TelemetryBatch)


@given(st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.text(max_size=5), inner, max_size=4))),
       st.sampled_from(SCHEMAS))
def test_any_msgpack_value_of_the_wrong_shape_is_rejected_cleanly(value: object, schema: type) -> None:
    try:
        decoded = decode(msgspec.msgpack.encode(value), schema)
    except MalformedMessage as exc:
        assert exc.reason
    else:
        assert isinstance(decoded, schema)


def _batch(**record: object) -> bytes:
    base = {"seq": 1, "ts": 1.0, "kind": "position", "data": {}}
    return msgspec.msgpack.encode({"v": 1, "vehicle_id": "drone-1", "records": [{**base, **record}]})


@pytest.mark.parametrize(("payload", "names"), [
    (_batch(seq="one"), "$.records[0].seq"),
    (_batch(seq=0), "$.records[0].seq"),
    (_batch(ts=math.nan), "$.records[0].ts"),
    (_batch(ts=math.inf), "$.records[0].ts"),
    (_batch(kind=""), "$.records[0].kind"),
    (_batch(data=[1, 2]), "$.records[0].data"),
    (msgspec.msgpack.encode({"vehicle_id": "a/b", "records": []}), "$.vehicle_id"),
    (msgspec.msgpack.encode({"vehicle_id": "drone-1", "records": []}), "$.records"),
    (msgspec.msgpack.encode({"records": [{"seq": 1, "ts": 1.0, "kind": "k"}]}), "vehicle_id"),
])
def test_a_wrong_field_is_named_in_the_error(payload: bytes, names: str) -> None:
    with pytest.raises(MalformedMessage) as caught:
        decode(payload, TelemetryBatch)
    assert names in str(caught.value)


def test_huge_payload_is_rejected_before_parsing() -> None:
    with pytest.raises(MalformedMessage, match="exceeds"):
        decode(b"\x80" * (MAX_PAYLOAD_BYTES + 1), TelemetryBatch)


def test_newer_schema_version_is_rejected_and_unknown_fields_are_tolerated() -> None:
    newer = msgspec.msgpack.encode({"v": 2, "vehicle_id": "d", "online": True, "ts": 1.0})
    with pytest.raises(MalformedMessage, match="schema version 2"):
        decode(newer, VehicleStatus)
    extra = msgspec.msgpack.encode({"v": 1, "vehicle_id": "d", "online": True, "ts": 1.0, "firmware": "4.5"})
    assert decode(extra, VehicleStatus).online is True
