"""Room access control (capabilities from the token) through the real local gateway, with HS256
tokens and real WebSocket clients; the app's join authoriser through the handlers."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from chalicelib import access, actions
from localgateway.testing import Gateway, running_gateway
from tests.conftest import ROOT

from .conftest import AuthHarness, claims, hs256

TIMEOUT = 15.0
_ids = itertools.count()
EVERYTHING_BUT_PRESENCE = '{"*": ["subscribe", "publish", "history"]}'


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    from .conftest import SECRET

    tmp = tmp_path_factory.mktemp("rooms-gateway")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("WS_") and k != "AWS_LAMBDA_FUNCTION_NAME"}
    env.update({"WS_AUTH_SECRET": SECRET, "CONNECTIONS_STORE": f"sqlite:///{tmp}/c.db",
                # Claim-less tokens get this instead of everything.
                "WS_DEFAULT_CAPABILITY": EVERYTHING_BUT_PRESENCE})
    with running_gateway(str(ROOT), extra_args=["--stage", "test"], env=env) as gw:
        yield gw


def token(sub: str, rooms: Any = None) -> str:
    payload = claims(sub)
    payload.pop("aud", None)
    payload.pop("iss", None)
    if rooms is not None:
        payload["rooms"] = rooms
    return hs256(payload)


async def request(ws: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    frame = {**frame, "id": f"q{next(_ids)}"}
    await ws.send(json.dumps(frame))
    async with asyncio.timeout(TIMEOUT):
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == frame["id"]:
                return reply  # type: ignore[no-any-return]


async def next_of(ws: ClientConnection, type_: str) -> dict[str, Any]:
    async with asyncio.timeout(TIMEOUT):
        while True:
            frame = json.loads(await ws.recv())
            if frame.get("type") == type_:
                return frame  # type: ignore[no-any-return]


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_prefix_capability_joins_its_rooms_and_is_refused_others(gateway: Gateway) -> None:
    async def scenario() -> None:
        url = f"{gateway.ws_url}?token={token('alice', {'team-a:*': ['subscribe', 'publish']})}"
        async with connect(url) as ws:
            joined = await request(ws, {"action": "join", "room": "team-a:general"})
            assert joined["type"] == "joined"
            refused = await request(ws, {"action": "join", "room": "team-b:x"})
            assert refused["type"] == "error"
            assert refused["data"]["code"] == "forbidden"
            assert "subscribe" in refused["data"]["message"]
            assert "team-b:x" in refused["data"]["message"]
            # The connection stays open and usable.
            assert (await request(ws, {"action": "ping"}))["type"] == "pong"

    run(scenario())


def test_subscribe_only_receives_but_may_not_send(gateway: Gateway) -> None:
    async def scenario() -> None:
        reader_url = f"{gateway.ws_url}?token={token('reader', {'news': ['subscribe']})}"
        writer_url = f"{gateway.ws_url}?token={token('editor', {'news': ['subscribe', 'publish']})}"
        async with connect(reader_url) as reader, connect(writer_url) as writer:
            await request(reader, {"action": "join", "room": "news"})
            await request(writer, {"action": "join", "room": "news"})
            sent = await request(writer, {"action": "send", "room": "news", "data": "headline"})
            assert sent["type"] == "sent"
            message = await next_of(reader, "message")
            assert message["data"]["data"] == "headline" and message["data"]["from"] == "editor"
            refused = await request(reader, {"action": "send", "room": "news", "data": "x"})
            assert (refused["type"], refused["data"]["code"]) == ("error", "forbidden")
            assert "publish" in refused["data"]["message"]

    run(scenario())


def test_without_history_there_is_no_replay_and_no_history(gateway: Gateway) -> None:
    async def scenario() -> None:
        full = f"{gateway.ws_url}?token={token('writer', {'r': ['subscribe', 'publish']})}"
        late = f"{gateway.ws_url}?token={token('late', {'r': ['subscribe']})}"
        async with connect(full) as writer:
            await request(writer, {"action": "join", "room": "r"})
            for n in range(3):
                await request(writer, {"action": "send", "room": "r", "data": n})
            async with connect(late) as reader:
                joined = await request(reader, {"action": "join", "room": "r", "since": 0})
                assert joined["data"]["replay"] == {"from": 1, "to": 3, "complete": False}
                history = await request(reader, {"action": "history", "room": "r"})
                assert history["data"]["code"] == "forbidden"
                # Nothing was replayed: the next frame is the reply to a ping.
                await reader.send(json.dumps({"action": "ping", "id": "after"}))
                assert json.loads(await reader.recv())["id"] == "after"

    run(scenario())


def test_the_default_capability_applies_to_claim_less_tokens(gateway: Gateway) -> None:
    async def scenario() -> None:
        url = f"{gateway.ws_url}?token={token('plain')}"  # no "rooms" claim
        async with connect(url) as ws:
            assert (await request(ws, {"action": "join", "room": "any"}))["type"] == "joined"
            sent = await request(ws, {"action": "send", "room": "any", "data": 1})
            assert sent["type"] == "sent"
            # WS_DEFAULT_CAPABILITY leaves presence out for this gateway.
            members = await request(ws, {"action": "members", "room": "any"})
            assert members["data"]["code"] == "forbidden"

    run(scenario())


def test_a_bad_claim_refuses_the_connection_with_403(gateway: Gateway) -> None:
    async def scenario() -> int:
        url = f"{gateway.ws_url}?token={token('odd', {'r': 'subscribe'})}"
        with pytest.raises(InvalidStatus) as info:
            async with connect(url, open_timeout=30):
                pass
        return int(info.value.response.status_code)

    assert run(scenario()) == 403
    # The container's output reaches the log asynchronously, possibly after the 403.
    assert "capability claim 'rooms'" in gateway.wait_for_log("capability claim 'rooms'")


def test_a_reconnect_with_a_new_token_gets_the_new_capabilities(gateway: Gateway) -> None:
    async def scenario() -> None:
        narrow = f"{gateway.ws_url}?token={token('bob', {'r2': ['subscribe']})}"
        wide = f"{gateway.ws_url}?token={token('bob', {'r2': ['subscribe', 'publish']})}"
        async with connect(narrow) as ws:
            await request(ws, {"action": "join", "room": "r2"})
            refused = await request(ws, {"action": "send", "room": "r2", "data": 1})
            assert refused["data"]["code"] == "forbidden"
        async with connect(wide) as ws:
            await request(ws, {"action": "join", "room": "r2"})
            assert (await request(ws, {"action": "send", "room": "r2", "data": 1}))[
                "type"] == "sent"

    run(scenario())


# ---------------------------------------------------------------- the app's join authoriser


@pytest.fixture
def authoriser() -> Iterator[list[access.JoinRequest]]:
    asked: list[access.JoinRequest] = []

    @access.authorize_joins
    def private_rooms(request: access.JoinRequest) -> bool | list[str]:
        asked.append(request)
        if request.room.startswith("ticket:"):
            # Membership lives in the app's database: here, a claim naming the ticket.
            if request.claims.get("ticket") == request.room.split(":", 1)[1]:
                return ["subscribe", "publish"]
            return False
        return True

    yield asked
    access.clear()


def test_the_join_authoriser_admits_private_rooms_without_a_token_change(
    secured: AuthHarness, authoriser: list[access.JoinRequest]
) -> None:
    agent = secured.connect_as(hs256(claims("agent", ticket="42")))
    stranger = secured.connect_as(hs256(claims("stranger")))
    assert secured.join(agent, "ticket:42")["type"] == "joined"
    refused = secured.join(stranger, "ticket:42")
    assert refused["data"]["code"] == "forbidden"
    # What it granted is recorded on the membership: publish yes, history no.
    sent = secured.send(agent, {"action": "send", "room": "ticket:42", "data": "hello"})
    assert sent["type"] == "sent"
    history = secured.send(agent, {"action": "history", "room": "ticket:42"})
    assert history["data"]["code"] == "forbidden"
    # Other rooms: the token's capabilities, unchanged.
    assert secured.join(stranger, "lobby")["type"] == "joined"
    asked = [(r.user, r.room) for r in authoriser]
    assert asked == [("agent", "ticket:42"), ("stranger", "ticket:42"), ("stranger", "lobby")]
    assert authoriser[0].claims["ticket"] == "42"
    assert authoriser[2].operations == {"subscribe", "publish", "history", "presence"}


# ---------------------------------------------------------------- app actions, per user


def test_an_action_can_send_to_every_connection_of_a_user(secured: AuthHarness) -> None:
    @actions.action("poke", actions.Field("user"))
    def poke(ctx: actions.ActionContext, fields: Any) -> bytes:
        reached = ctx.send_to_user(fields["user"], "poked", {"by": ctx.sender})
        return ctx.reply("poke_sent", {"reached": reached})

    try:
        phone = secured.connect_as(hs256(claims("bob")))
        laptop = secured.connect_as(hs256(claims("bob")))
        alice = secured.connect_as(hs256(claims("alice")))
        reply = secured.send(alice, {"action": "poke", "user": "bob"})
        assert reply["data"] == {"reached": 2}
        for cid in (phone, laptop):
            assert secured.last(cid, "poked")["data"] == {"by": "alice"}
        secured.disconnect(laptop)
        assert secured.send(alice, {"action": "poke", "user": "bob"})["data"] == {"reached": 1}
    finally:
        actions.registry.clear()
