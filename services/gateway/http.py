"""The gateways over HTTP/JSON (Litestar): `POST /v1/{sector}/commands/{kind}`; the events feed
for systems that cannot take webhooks, `GET /v1/{sector}/events?after=<seq>&wait=<s>` (long-poll)
and `GET /v1/{sector}/events/stream` (server-sent events, stream.py); and the sector system's own
webhook registration, `PUT|GET|DELETE /v1/{sector}/webhook` (registration.py).

Authentication: `Authorization: Bearer <the sector's token>`. A token of another sector is 403, no
token or an unknown one 401. The OpenAPI 3.1 document (contracts/schema/openapi.json) is generated
from this app (`openapi_document`).
"""

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

import msgspec
from litestar import HttpMethod, Litestar, Request, Response, delete, get, post, put, route
from litestar.exceptions import HTTPException, NotFoundException, ValidationException
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.openapi.spec import Server as OpenAPIServer
from litestar.params import FromPath, HeaderParameter, Parameter
from litestar.response import Response as LitestarResponse
from litestar.response import ServerSentEvent

from refbus.contracts import commands as c
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import stream
from refbus.services.gateway.core import Gateway, invalid, refusal
from refbus.services.gateway.registration import WebhookControl

FeedReader = Callable[[Sector, int, int, float], Awaitable[c.Feed]]
"(sector, after, limit, wait seconds) -> the events addressed to the sector after `after`."

_REFUSALS = {status: [code for s, code, _ in c.ERRORS if s == status] for status, _, _ in c.ERRORS}
_DESCRIBE = {status: "; ".join(f"{code}: {when}" for s, code, when in c.ERRORS if s == status) for status in _REFUSALS}


def _refused(r: c.Refusal) -> Response[bytes]:
    return Response(msgspec.json.encode(r), status_code=r.status, media_type="application/json")


def _applied(a: c.Applied) -> Response[bytes]:
    return Response(msgspec.json.encode(a), status_code=a.status, media_type="application/json")


class Auth:
    def __init__(self, tokens: Mapping[Sector, str]) -> None:
        self.tokens = dict(tokens)

    def caller(self, request: Request[Any, Any, Any], sector: Sector) -> c.Refusal | None:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return refusal(401, "unauthenticated", "send Authorization: Bearer <your sector's token>")
        for owner, known in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.strip().encode()):
                if owner != sector:
                    return refusal(403, "wrong_sector", f"this token is not {sector.value}'s")
                return None
        return refusal(401, "unauthenticated", "unknown token")


def _responses(*statuses: int) -> dict[int, Any]:
    from litestar.openapi.datastructures import ResponseSpec

    return {
        s: ResponseSpec(data_container=c.Refusal, description=_DESCRIBE[s], generate_examples=False) for s in statuses
    }


def _command_handler(kind: str, command_type: type[c.Command], gateways: Mapping[Sector, Gateway], auth: Auth) -> Any:
    async def handler(sector: FromPath[Sector], request: Request[Any, Any, Any]) -> Response[bytes]:
        gateway = gateways.get(sector)
        if gateway is None:
            return _refused(refusal(404, "not_found", f"this gateway does not serve {sector.value}"))
        denied = auth.caller(request, sector)
        if denied is not None:
            return _refused(denied)
        # Decoded here, strictly, as the NATS transport decodes (Litestar's own decoding converts
        # loosely, e.g. a number into a time): one semantics, one set of refusals.
        command = gateway.decode(kind, await request.body())
        if isinstance(command, c.Refusal):
            return _refused(command)
        answer = await gateway.execute(command)
        return _refused(answer) if isinstance(answer, c.Refusal) else _applied(answer)

    handler.__name__ = f"command_{kind.replace('-', '_')}"
    doc = (command_type.__doc__ or "").strip()
    return post(
        f"/v1/{{sector:str}}/commands/{kind}",
        operation_id=kind.replace("-", "_"),
        summary=f"{kind}: {doc.splitlines()[0]}" if doc and not doc.startswith("What every") else kind,
        description=doc or None,
        tags=["commands"],
        status_code=201,
        responses={
            201: _ok_spec("Stored by this call."),
            200: _ok_spec("An earlier call with this idempotency key stored it: the first answer."),
            **_responses(401, 403, 404, 409, 422, 503),
        },
        security=[{"bearer": []}],
        opt={"command": command_type.__name__},
    )(handler)


def _ok_spec(description: str) -> Any:
    return _spec(c.Applied, description)


def _spec(container: type, description: str) -> Any:
    from litestar.openapi.datastructures import ResponseSpec

    return ResponseSpec(data_container=container, description=description, generate_examples=False)


def _events_handler(gateways: Mapping[Sector, Gateway], auth: Auth, feed: FeedReader | None) -> Any:
    @get(
        "/v1/{sector:str}/events",
        operation_id="events",
        summary="The events addressed to this sector after a log sequence (long-poll; resume with next_after)",
        tags=["delivery"],
        responses=_responses(401, 403, 404, 422, 503),
        security=[{"bearer": []}],
    )
    async def events(
        sector: FromPath[Sector],
        request: Request[Any, Any, Any],
        after: Annotated[int, Parameter(ge=0, le=2**53, description="log sequence to resume after")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 100,
        wait: Annotated[float, Parameter(ge=0, le=30, description="seconds to wait for a first event")] = 0,
    ) -> c.Feed:
        if sector not in gateways or feed is None:
            return _refused(refusal(404, "not_found", f"this gateway does not serve {sector.value}"))  # type: ignore[return-value]
        denied = auth.caller(request, sector)
        if denied is not None:
            return _refused(denied)  # type: ignore[return-value]
        try:
            return await feed(sector, after, limit, wait)
        except (TimeoutError, OSError):
            return _refused(refusal(503, "unavailable", "the log could not be reached"))  # type: ignore[return-value]

    return events


def _stream_handler(gateways: Mapping[Sector, Gateway], auth: Auth, feed: FeedReader | None, heartbeat_s: float) -> Any:
    @get(
        "/v1/{sector:str}/events/stream",
        operation_id="events_stream",
        summary="The same events as server-sent events: id = log sequence, resume with Last-Event-ID",
        description=STREAM_DESCRIPTION,
        tags=["delivery"],
        responses=_responses(401, 403, 404, 422),
        security=[{"bearer": []}],
    )
    async def events_stream(
        sector: FromPath[Sector],
        request: Request[Any, Any, Any],
        after: Annotated[int, Parameter(ge=0, le=2**53, description="log sequence to resume after")] = 0,
        last_event_id: Annotated[
            str | None,
            HeaderParameter(name="Last-Event-ID", description="resume after this sequence (wins over after)"),
        ] = None,
    ) -> ServerSentEvent:
        if sector not in gateways or feed is None:
            return _refused(refusal(404, "not_found", f"this gateway does not serve {sector.value}"))  # type: ignore[return-value]
        denied = auth.caller(request, sector)
        if denied is not None:
            return _refused(denied)  # type: ignore[return-value]
        cursor = stream.cursor_from(last_event_id, after)
        if isinstance(cursor, c.Refusal):
            return _refused(cursor)  # type: ignore[return-value]
        return stream.event_stream(feed, sector, cursor, heartbeat_s)

    return events_stream


URL_RULE = ("url must be an http or https URL with a host name or IPv4 address (punycode for a non-ASCII name), "
            "a port up to 65535 and no spaces, e.g. https://system.example/refbus/hook")


def _webhook_handlers(controls: Mapping[Sector, WebhookControl], auth: Auth) -> list[Any]:
    def allowed(sector: Sector, request: Request[Any, Any, Any]) -> tuple[WebhookControl | None, c.Refusal | None]:
        control = controls.get(sector)
        if control is None:
            return None, refusal(404, "not_found", f"this gateway does not deliver {sector.value}'s webhooks")
        return control, auth.caller(request, sector)

    def answer(state: c.WebhookState | c.Refusal) -> Response[bytes]:
        if isinstance(state, c.Refusal):
            return _refused(state)
        return Response(msgspec.json.encode(state), status_code=200, media_type="application/json")

    common: dict[str, Any] = {"tags": ["delivery"], "security": [{"bearer": []}]}

    @put("/v1/{sector:str}/webhook", operation_id="register_webhook", status_code=200,
         summary="Deliver this sector's events to a URL of its system; answers the signing secret",
         description=c.WebhookRegistration.__doc__,
         responses={200: _spec(c.WebhookState, "Registered: deliveries go there, from where they stopped. "
                               "`secret` is the signing secret."), **_responses(401, 403, 404, 409, 422, 503)},
         **common)
    async def register_webhook(sector: FromPath[Sector], request: Request[Any, Any, Any]) -> Response[bytes]:
        control, denied = allowed(sector, request)
        if control is None or denied is not None:
            return _refused(denied)  # type: ignore[arg-type]
        try:
            registration = msgspec.json.decode(await request.body(), type=c.WebhookRegistration)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            refused = invalid(exc)
            if refused.field == "url":  # the pattern itself is no help to a reader
                refused = refusal(422, "invalid", URL_RULE, field="url")
            return _refused(refused)
        return answer(await control.register(registration))

    @get("/v1/{sector:str}/webhook", operation_id="show_webhook",
         summary="Where this sector's events are delivered, and from what (not the secret)",
         responses={200: _spec(c.WebhookState, "The registration as applied."), **_responses(401, 403, 404, 422)},
         **common)
    async def show_webhook(sector: FromPath[Sector], request: Request[Any, Any, Any]) -> Response[bytes]:
        control, denied = allowed(sector, request)
        if control is None or denied is not None:
            return _refused(denied)  # type: ignore[arg-type]
        return answer(await control.show())

    @delete("/v1/{sector:str}/webhook", operation_id="unregister_webhook", status_code=200,
            summary="Stop deliveries; a registration made again resumes where they stopped (nothing lost)",
            responses={200: _spec(c.WebhookState, "Stopped."), **_responses(401, 403, 404, 422, 503)},
            **common)
    async def unregister_webhook(sector: FromPath[Sector], request: Request[Any, Any, Any]) -> Response[bytes]:
        control, denied = allowed(sector, request)
        if control is None or denied is not None:
            return _refused(denied)  # type: ignore[arg-type]
        return answer(await control.unregister())

    # Litestar's own OPTIONS answer for a path of several handlers names only the first one's method.
    @route("/v1/{sector:str}/webhook", http_method=[HttpMethod.OPTIONS], include_in_schema=False)
    async def webhook_options() -> Response[None]:
        return Response(None, status_code=204, headers={"Allow": "DELETE, GET, OPTIONS, PUT"})

    return [webhook_options, register_webhook, show_webhook, unregister_webhook]


@get("/healthz", tags=["health"], operation_id="healthz", summary="200 while the gateway runs")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


def _on_validation(_: Request[Any, Any, Any], exc: ValidationException) -> LitestarResponse[bytes]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    first = extra[0] if extra and isinstance(extra[0], dict) else {}
    message = str(first.get("message") or exc.detail)
    key = first.get("key")
    answer = invalid(message)
    if key and answer.field is None:
        answer = refusal(422, "invalid", message, field=str(key))
    return _refused(answer)


def _on_http(_: Request[Any, Any, Any], exc: HTTPException) -> LitestarResponse[bytes]:
    if isinstance(exc, NotFoundException) or exc.status_code == 404:
        return _refused(refusal(404, "not_found", "no such path"))
    if exc.status_code == 405:
        return Response(msgspec.json.encode(refusal(405, "method_not_allowed", "method not allowed")),
                        status_code=405, media_type="application/json", headers=exc.headers)
    if exc.status_code < 500:
        return _refused(refusal(422 if exc.status_code == 400 else exc.status_code, "invalid", str(exc.detail)))
    return _refused(refusal(503, "unavailable", "internal error; retry with the same key"))


def _on_error(_: Request[Any, Any, Any], exc: Exception) -> LitestarResponse[bytes]:
    import structlog

    structlog.get_logger(__name__).error("gateway_error", error=repr(exc))
    return _refused(refusal(503, "unavailable", "internal error; retry with the same key"))


def gateway_app(
    gateways: Mapping[Sector, Gateway],
    tokens: Mapping[Sector, str],
    feed: FeedReader | None = None,
    heartbeat_s: float = 15.0,
    webhooks: Mapping[Sector, WebhookControl] | None = None,
) -> Litestar:
    """`heartbeat_s`: how often an idle event stream sends a comment, so that proxies keep it open.
    `webhooks`: the sectors whose webhook registration this gateway holds."""
    auth = Auth(tokens)
    handlers = [_command_handler(kind, t, gateways, auth) for kind, t in c.COMMANDS.items()]
    feeds = [_events_handler(gateways, auth, feed), _stream_handler(gateways, auth, feed, heartbeat_s)]
    registration = _webhook_handlers(webhooks or {}, auth)
    return Litestar(
        route_handlers=[*handlers, *feeds, *registration, healthz],
        exception_handlers={
            ValidationException: _on_validation,
            HTTPException: _on_http,
            Exception: _on_error,
        },
        openapi_config=OpenAPIConfig(
            title="refbus sector gateway",
            version="1",
            description=OPENAPI_DESCRIPTION,
            servers=[
                OpenAPIServer(url=f"http://127.0.0.1:{8480 + i}", description=f"{s.value}'s gateway (refbus up)")
                for i, s in enumerate(Sector)
            ],
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(
                        type="http", scheme="bearer",
                        description="The sector's token (data dir secrets/gateway-<sector>.token on first start).",
                    )
                }
            ),
            create_examples=False,
        ),
        debug=False,
        logging_config=None,
    )


OPENAPI_DESCRIPTION = """\
Commands in, events out. A sector system states facts about a child as its own sector (the bearer token
says which) by POSTing commands; the gateway decides each against the child's current state, stores the
event in the append-only log and answers with it (201, or 200 when a retry with the same idempotency_key
finds the first answer), or refuses with a Refusal naming the rule (409) or the field (422).

Rules a client can check before sending (contracts/schema/lifecycle.json holds them as data):
- A referral needs no open case first.
- legal_basis guardian_consent needs the guardian's consent on record naming the receiving sector
  (record-consent with that sector in `sectors`); child_protection_duty and vital_interest need none.
- service must be in the receiving sector's catalogue (lifecycle.json: service_catalogue).
- accept, reject, start, hold, resume, complete, fail: the receiving sector only; cancel and
  mark-entered-in-error: either party.
- Times are RFC 3339 with an offset (the log writes UTC); correlation_id is the referral chain: every event
  one request set off shares it.

Events addressed to a sector reach its system by webhook (Standard Webhooks signatures: headers
webhook-id, webhook-timestamp, webhook-signature = v1,base64(HMAC-SHA256(secret, id.timestamp.body))),
to the URL it registers with PUT /v1/{sector}/webhook (which answers the secret); or by polling
GET /v1/{sector}/events with the last sequence seen; or as server-sent events, GET /v1/{sector}/events/stream.

Referral content (the child's name, date of birth, guardian's contact, address, a note) goes in the refer
command's `content`, in clear; the gateway seals it before anything is stored, and the log holds only
ciphertext (`event.sealed`). It comes back in clear only to the two sectors: in the refer answer's
`content`, the feed's and stream's `Delivered.content`, and a webhook body's `content` member (the event's
JSON with that one member more). A ContentView's `state` is `clear`, `erased` (the child's keys were
destroyed: the content is gone for everyone, the event stays) or `withheld` (not a party).
"""

STREAM_DESCRIPTION = """\
The events of GET /v1/{sector}/events, pushed as server-sent events down one open response. Each event is
one SSE message: `id:` its log sequence, `data:` a Delivered ({"seq", "event"}) as JSON, no `event:` field.
Resume with the standard Last-Event-ID header (EventSource sends it when it reconnects; it wins over
`after`) or with `after`: nothing is lost or repeated. A message with an `id:` and no data moves the cursor
past log entries the feed skips. A comment line (`: keep-alive`) comes while nothing happens, so proxies
keep the connection open; `retry:` says how soon to reconnect. The log is read a page at a time as the
client reads, so a slow client holds the gateway to one page. If the log cannot be reached the stream ends:
reconnect.
"""


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the gateways (no store behind: only the routes and their schemas)."""
    document = gateway_app({}, {}).openapi_schema.to_schema()
    for path, item in document["paths"].items():
        for operation in item.values():
            # Litestar's default 400: this gateway answers invalid input with 422 (a Refusal) instead.
            operation.get("responses", {}).pop("400", None)
            kind = path.rpartition("/commands/")[2] if "/commands/" in path else None
            if kind in c.COMMANDS:
                operation["requestBody"] = {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": f"#/components/schemas/{c.COMMANDS[kind].__name__}"}}
                    },
                }
    stream_ok = document["paths"]["/v1/{sector}/events/stream"]["get"]["responses"]["200"]
    stream_ok["description"] = "An event stream (text/event-stream) that stays open; see the operation's description."
    stream_ok["content"] = {
        "text/event-stream": {
            "schema": {"type": "string", "description": "SSE messages; each event's data is a Delivered (JSON)"},
            "x-refbus-data": {"$ref": "#/components/schemas/Delivered"},
        }
    }
    document["paths"]["/v1/{sector}/webhook"]["put"]["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/WebhookRegistration"}}},
    }
    # The bodies' schemas as msgspec states them (patterns, bounds, no fields outside the contract):
    # the same schemas the JSON Schema and AsyncAPI files hold.
    types = [*c.COMMANDS.values(), c.Applied, c.Refusal, c.Feed, c.WebhookRegistration, c.WebhookState]
    _, components = msgspec.json.schema_components(types, ref_template="#/components/schemas/{name}")
    document.setdefault("components", {}).setdefault("schemas", {}).update(components)
    return document
