"""The control API described in OpenAPI 3.1, served at GET /openapi.json. tests/integration/test_control.py holds it
to the routes the service really has, both ways."""

from __future__ import annotations

_ERROR = {"description": "Refused, with the reason", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
_UNAUTHORIZED = {"description": "Missing or wrong bearer token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json(description: str, schema: dict | None = None) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema or {"type": "object"}}}}


def _body(schema: dict) -> dict:
    return {"required": False, "content": {"application/json": {"schema": schema}}}


_STATE = {"$ref": "#/components/schemas/KillSwitchState"}
_LIMIT = [{"name": "limit", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 10}}]

SPEC: dict = {
    "openapi": "3.1.0",
    "info": {
        "title": "tvtelegrambingx control API",
        "version": "1",
        "description": "The kill switch and what an operator needs around it. Everything but the health routes and "
                       "this description needs `Authorization: Bearer $CONTROL_API_TOKEN`. Telegram's commands call "
                       "the same functions.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/bot/settings": {
            "get": {"summary": "The kill-switch state", "responses": {"200": _json("The current state", _STATE), "401": _UNAUTHORIZED}},
            "put": {
                "summary": "Change the mode",
                "description": "`autotrade` true is running, false halted; `mode` names one (running, entries_off, halted). "
                               "Turning trading back on is refused (409, with the backlog) while signals wait in the "
                               "executor's queues, unless `force`.",
                "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {
                    "autotrade": {"type": "boolean"}, "mode": {"enum": ["running", "entries_off", "halted"]},
                    "reason": {"type": "string"}, "force": {"type": "boolean", "default": False},
                    "risk": {"$ref": "#/components/schemas/RiskLimits"}}}),
                "responses": {"200": _json("The new state", _STATE), "400": _ERROR, "401": _UNAUTHORIZED,
                              "409": _ERROR, "503": _ERROR},
            },
        },
        "/bot/settings/history": {
            "get": {"summary": "Every change, newest first", "responses": {
                "200": _json("The history", {"type": "object", "properties": {"history": {"type": "array", "items": _STATE}}}),
                "401": _UNAUTHORIZED}},
        },
        "/bot/flatten": {
            "post": {
                "summary": "Cancel every order and close every position, then stay halted",
                "description": "Without `confirm`: nothing happens; the answer carries the code to send back within 60 s. "
                               "With it: trading halts at once and an executor flattens.",
                "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {
                    "reason": {"type": "string"}, "confirm": {"type": "string"}}}),
                "responses": {"202": _json("Asked (status confirm) or flattening (the new state)"), "400": _ERROR,
                              "401": _UNAUTHORIZED, "409": _ERROR, "503": _ERROR},
            },
            "get": {"summary": "How the latest flatten went", "responses": {"200": _json("The latest run"), "401": _UNAUTHORIZED, "404": _ERROR}},
        },
        "/status": {
            "get": {"summary": "Mode, backlog per executor queue, executor replicas, latest signal and order, Telegram",
                    "responses": {"200": _json("The status"), "401": _UNAUTHORIZED}},
        },
        "/bot/signals": {
            "get": {"summary": "The latest signals", "parameters": _LIMIT, "responses": {"200": _json("Signals, newest first"),
                                                                                        "400": _ERROR, "401": _UNAUTHORIZED}},
        },
        "/bot/orders": {
            "get": {"summary": "The latest orders", "parameters": _LIMIT, "responses": {"200": _json("Orders, newest first"),
                                                                                       "400": _ERROR, "401": _UNAUTHORIZED}},
        },
        "/bot/account": {
            "get": {"summary": "Positions and balance as an executor last read them at BingX, with when and whether it answered",
                    "responses": {"200": _json("The snapshot"), "401": _UNAUTHORIZED, "404": _ERROR}},
        },
        "/bot/signals/parked": {
            "get": {"summary": "Expired signals not yet replayed", "responses": {"200": _json("Parked signals"), "401": _UNAUTHORIZED}},
        },
        "/bot/signals/{signal_id}/replay": {
            "post": {
                "summary": "Run an expired signal now, once, as <signal_id>.replay",
                "parameters": [{"name": "signal_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "requestBody": _body({"type": "object", "additionalProperties": False, "properties": {"reason": {"type": "string"}}}),
                "responses": {"202": _json("Replayed"), "400": _ERROR, "401": _UNAUTHORIZED, "404": _ERROR, "409": _ERROR, "503": _ERROR},
            },
        },
        "/healthz": {"get": {"summary": "Alive", "security": [], "responses": {"200": _json("ok")}}},
        "/readyz": {"get": {"summary": "Ready (broker and state known), with the details", "security": [],
                            "responses": {"200": _json("ready"), "503": _json("not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [],
                             "responses": {"200": {"description": "Prometheus text", "content": {"text/plain": {}}}}}},
        "/openapi.json": {"get": {"summary": "This description", "security": [], "responses": {"200": _json("OpenAPI 3.1")}}},
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "RiskLimits": {
                "type": "object",
                "description": "Over the executor's RISK_* settings: a number sets a limit (0 turns it off), null gives it "
                               "back to its setting, a limit not named stays as it is.",
                "properties": {"max_leverage": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
                               "max_notional_usdt": {"type": ["string", "number", "null"]},
                               "max_orders_per_minute": {"type": ["integer", "null"], "minimum": 0},
                               "daily_loss_limit_usdt": {"type": ["string", "number", "null"]}}},
            "Error": {"type": "object", "properties": {"status": {"const": "error"}, "reason": {"type": "string"}}},
            "KillSwitchState": {"type": "object", "properties": {
                "autotrade": {"type": "boolean"}, "mode": {"enum": ["running", "entries_off", "halted", None]},
                "version": {"type": "integer"}, "set_by": {"type": ["string", "null"]}, "reason": {"type": ["string", "null"]},
                "changed_at": {"type": ["string", "null"], "format": "date-time"}, "forced": {"type": "boolean"},
                "backlog": {"type": ["integer", "null"]}, "flatten": {"type": "boolean"},
                "risk": {"oneOf": [{"$ref": "#/components/schemas/RiskLimits"}, {"type": "null"}]}}},
        },
    },
}
