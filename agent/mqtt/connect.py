"""Making paho clients, reconnect backoff, and why a connect failed or a connection dropped."""

from __future__ import annotations

import logging
import random
import socket
import ssl
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from agent.mqtt.config import MqttConfig


def paho_client(config: MqttConfig, client_id: str, password: str | None) -> mqtt.Client:
    """A paho client set up from ``mqtt:``: protocol, clean session, credentials, TLS.

    Every client of the agent's (delivery, ``tail``, Home Assistant removal) is made here, so
    TLS and hostname checking behave the same everywhere.
    """
    protocol = mqtt.MQTTv5 if config.protocol == "5" else mqtt.MQTTv311
    kwargs: dict[str, Any] = {"client_id": client_id, "protocol": protocol}
    if protocol == mqtt.MQTTv311:
        kwargs["clean_session"] = True
    client = mqtt.Client(CallbackAPIVersion.VERSION2, **kwargs)
    if config.username is not None:
        client.username_pw_set(config.username, password)
    if config.tls.enabled:
        tls = config.tls
        client.tls_set(
            ca_certs=str(tls.ca_file) if tls.ca_file else None,
            certfile=str(tls.cert_file) if tls.cert_file else None,
            keyfile=str(tls.key_file) if tls.key_file else None,
            cert_reqs=ssl.CERT_REQUIRED,
        )
        client.tls_insecure_set(not tls.check_hostname)
    return client


class _PahoErrors(logging.Logger):
    """Stands in for paho's logger: keeps the text of its last error, logs nothing.

    paho reports why a socket failed (``failed to receive on socket: [Errno 104] ...``) only
    to its logger; its disconnect callback then says ``Unspecified error``. Keeping the text
    lets the agent say in words why the connection dropped.
    """

    def __init__(self) -> None:
        super().__init__("agent.mqtt.paho", logging.ERROR)
        self.last: str | None = None

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level >= logging.ERROR:
            self.last = str(msg) % args if args else str(msg)


def loss_reason(reason_code: ReasonCode, from_broker: bool, socket_error: str | None,
                keepalive: int) -> str:
    """Why a connection dropped, in words (paho's own reason is often ``Unspecified error``)."""
    if from_broker:
        return f"the broker disconnected the agent: {reason_code}"
    name = reason_code.getName()
    if name == "Keep alive timeout":
        return f"no answer from the broker to a keepalive ping within {keepalive} s"
    if socket_error:
        # "failed to receive on socket: [Errno 104] Connection reset by peer"
        text = socket_error.split("] ", 1)[-1] if "] " in socket_error else socket_error
        return f"network error: {text}"
    if name == "Protocol error":
        return "protocol error: the broker sent a packet the agent cannot read"
    return "the broker closed the connection"


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random) -> float:
    """Exponential backoff with equal jitter: half fixed, half random, capped at ``high``."""
    ceiling = min(high, low * (2 ** min(attempt, 30)))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


def describe_connect_error(exc: BaseException) -> str:
    """A short, actionable reason for a failed TCP/TLS connect."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate check failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host: {exc.strerror}"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
