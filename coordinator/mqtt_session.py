"""The coordinator's MQTT clients (ingest, command sender): one place for credentials, TLS and reconnects."""

from __future__ import annotations

import ssl

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from coordinator.config import BrokerSettings


def broker_client(broker: BrokerSettings, client_id: str, *, clean_session: bool,
                  manual_ack: bool = False) -> mqtt.Client:
    """A paho client with the coordinator's identity at ``broker`` (password and TLS when configured)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                         manual_ack=manual_ack)
    if broker.password_file:
        with open(broker.password_file) as f:
            client.username_pw_set(broker.username, f.read().strip())
    elif broker.url:
        client.username_pw_set(broker.username)
    if broker.url and broker.address.tls:
        client.tls_set_context(ssl.create_default_context(cafile=broker.ca_file or None))
    client.reconnect_delay_set(min_delay=1, max_delay=30)
    return client
