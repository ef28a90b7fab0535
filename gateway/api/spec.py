"""The API described in code: JSON Schemas built by small helpers, each operation declared once (`Op`), the
OpenAPI 3.1 document generated from those declarations (`openapi()`), and the validator that checks request
bodies and query parameters against the same schemas (a small subset of JSON Schema: what the helpers emit).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

Schema = dict[str, Any]
_EMAIL = re.compile(r"^[^@\s<>,;\"]{1,200}@[^@\s<>,;\"]{1,255}$")


# Schema helpers ----------------------------------------------------------------------------------------------
def _nullable(s: Schema, nullable: bool) -> Schema:
    if nullable:
        s["type"] = [s["type"], "null"]
    return s


def string(*, max_length: int = 1000, min_length: int = 0, enum: tuple[str, ...] | None = None,
           fmt: str | None = None, nullable: bool = False, description: str = "") -> Schema:
    s: Schema = {"type": "string"}
    if enum is not None:
        s["enum"] = list(enum) + ([None] if nullable else [])
    else:
        s["maxLength"] = max_length
        if min_length:
            s["minLength"] = min_length
    if fmt:
        s["format"] = fmt
    if description:
        s["description"] = description
    return _nullable(s, nullable)


def email(*, nullable: bool = False, description: str = "") -> Schema:
    return string(max_length=320, fmt="email", nullable=nullable, description=description)


def integer(*, minimum: int | None = None, maximum: int | None = None, nullable: bool = False,
            description: str = "") -> Schema:
    s: Schema = {"type": "integer"}
    if minimum is not None:
        s["minimum"] = minimum
    if maximum is not None:
        s["maximum"] = maximum
    if description:
        s["description"] = description
    return _nullable(s, nullable)


def boolean(description: str = "") -> Schema:
    return {"type": "boolean", **({"description": description} if description else {})}


def array(items: Schema, *, max_items: int = 100, description: str = "") -> Schema:
    return {"type": "array", "items": items, "maxItems": max_items,
            **({"description": description} if description else {})}


def obj(properties: dict[str, Schema], *, required: tuple[str, ...] = (), additional: bool = False,
        description: str = "") -> Schema:
    s: Schema = {"type": "object", "properties": properties}
    if required:
        s["required"] = list(required)
    if not additional:
        s["additionalProperties"] = False
    if description:
        s["description"] = description
    return s


def loose(description: str = "") -> Schema:
    """An object whose fields are documented elsewhere (responses only)."""
    return {"type": "object", **({"description": description} if description else {})}


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def page_of(item: str) -> Schema:
    return obj({"items": array(ref(item), max_items=200), "next_cursor": string(max_length=600, nullable=True,
               description="pass as ?cursor= for the next page; null on the last page")},
               required=("items", "next_cursor"), additional=True)


# Validation --------------------------------------------------------------------------------------------------
def _types(s: Schema) -> list[str]:
    t = s.get("type")
    return t if isinstance(t, list) else [t] if t else []


def _is(value: Any, t: str) -> bool:
    if t == "null":
        return value is None
    if t == "string":
        return isinstance(value, str)
    if t == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if t == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t == "boolean":
        return isinstance(value, bool)
    if t == "array":
        return isinstance(value, list)
    if t == "object":
        return isinstance(value, dict)
    return True


def validate(value: Any, schema: Schema, schemas: dict[str, Schema], path: str = "") -> list[tuple[str, str]]:
    """Errors as (field path, message); empty when the value fits."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    where = path or "body"
    types = _types(schema)
    if types and not any(_is(value, t) for t in types):
        return [(where, f"must be {' or '.join(types)}")]
    if value is None:
        return []
    if "enum" in schema and value not in schema["enum"]:
        return [(where, f"must be one of {', '.join(str(x) for x in schema['enum'] if x is not None)}")]
    if isinstance(value, str):
        return _check_string(value, schema, where)
    if isinstance(value, int) and not isinstance(value, bool):
        return _check_int(value, schema, where)
    if isinstance(value, list):
        if len(value) > schema.get("maxItems", 1 << 30):
            return [(where, f"at most {schema['maxItems']} items")]
        return [e for i, item in enumerate(value)
                for e in validate(item, schema.get("items", {}), schemas, f"{path}[{i}]" if path else f"[{i}]")]
    if isinstance(value, dict):
        return _check_object(value, schema, schemas, path)
    return []


def _check_string(value: str, schema: Schema, where: str) -> list[tuple[str, str]]:
    errors = []
    if len(value) > schema.get("maxLength", 1 << 30):
        errors.append((where, f"at most {schema['maxLength']} characters"))
    if len(value) < schema.get("minLength", 0):
        errors.append((where, f"at least {schema['minLength']} character(s)"))
    fmt = schema.get("format")
    if fmt == "email" and not _EMAIL.match(value):
        errors.append((where, "not an email address"))
    if fmt == "date-time":
        try:
            if datetime.fromisoformat(value.replace("Z", "+00:00")).tzinfo is None:
                errors.append((where, "needs a zone offset (e.g. Z)"))
        except ValueError:
            errors.append((where, "not an ISO 8601 date-time"))
    return errors


def _check_int(value: int, schema: Schema, where: str) -> list[tuple[str, str]]:
    if "minimum" in schema and value < schema["minimum"]:
        return [(where, f"at least {schema['minimum']}")]
    if "maximum" in schema and value > schema["maximum"]:
        return [(where, f"at most {schema['maximum']}")]
    return []


def _check_object(value: dict[str, Any], schema: Schema, schemas: dict[str, Schema],
                  path: str) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    props = schema.get("properties", {})
    for name in schema.get("required", []):
        if name not in value:
            errors.append((f"{path}.{name}" if path else name, "is required"))
    for name, item in value.items():
        sub = f"{path}.{name}" if path else str(name)
        if name in props:
            errors += validate(item, props[name], schemas, sub)
        elif schema.get("additionalProperties") is False:
            errors.append((sub, "unknown field"))
    return errors


# Operations --------------------------------------------------------------------------------------------------
@dataclass
class Param:
    name: str
    schema: Schema
    where: str = "query"   # query | path | header
    description: str = ""
    required: bool = False


@dataclass
class Op:
    method: str
    path: str                       # relative to /api/v1, with {name} placeholders
    operation_id: str
    summary: str
    tag: str
    scope: str | None               # read | write | admin; None: no token
    handler: Callable[..., Awaitable[Any]]
    params: list[Param] = field(default_factory=list)
    body: Schema | None = None      # application/json
    form: Schema | None = None      # multipart/form-data (its file parts are not in the schema's checks)
    responses: dict[int, tuple[str, Schema | None, str]] = field(default_factory=dict)
    description: str = ""


PROBLEM = obj({
    "type": string(max_length=200), "title": string(max_length=200), "status": integer(minimum=100, maximum=599),
    "detail": string(max_length=4000), "instance": string(max_length=2000),
    "errors": array(obj({"field": string(max_length=300), "detail": string(max_length=500)}), max_items=100),
}, required=("type", "title", "status"), additional=True, description="RFC 9457 problem details")

_STANDARD = {
    400: "Malformed request (not JSON, bad cursor)",
    401: "No token, or not a valid one",
    403: "The token's scope does not allow this",
    404: "No such object",
    408: "The request did not arrive in time",
    409: "Conflicts with the current state",
    413: "Request body too large",
    415: "Unsupported content type",
    422: "A value breaks a rule; `errors` names the fields",
    429: "Too many failed token attempts from this address; see Retry-After",
    503: "The store is unavailable; try again later",
}


ABSOLUTE = ("/healthz", "/metrics")  # served outside the versioned prefix


def full_path(op: Op, prefix: str = "/api/v1") -> str:
    return op.path if op.path in ABSOLUTE else prefix + op.path


def openapi(ops: list[Op], schemas: dict[str, Schema], *, version: str, prefix: str = "/api/v1") -> dict[str, Any]:
    """The OpenAPI 3.1 document of these operations."""
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        item: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary, "tags": [op.tag]}
        if op.description:
            item["description"] = op.description
        item["security"] = [{"bearer": []}] if op.scope else []
        if op.scope:
            item["x-scope"] = op.scope
        params = [{"name": n, "in": "path", "required": True, "schema": _path_schema(op, n)}
                  for n in re.findall(r"{(\w+)}", op.path)]
        params += [{"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
                    **({"description": p.description} if p.description else {})}
                   for p in op.params if p.where != "path"]
        if params:
            item["parameters"] = params
        content = {}
        if op.body is not None:
            content["application/json"] = {"schema": op.body}
        if op.form is not None:
            content["multipart/form-data"] = {"schema": op.form}
        if content:
            item["requestBody"] = {"required": True, "content": content}
        responses: dict[str, Any] = {}
        for code, (desc, schema, media) in sorted(op.responses.items()):
            r: dict[str, Any] = {"description": desc}
            if schema is not None:
                r["content"] = {media: {"schema": schema}}
            responses[str(code)] = r
        codes = {401, 403, 429} if op.scope else set()
        codes |= {400, 422, 503} | ({404} if "{" in op.path else set())
        if content:
            codes |= {408, 413, 415}
        for code in sorted(codes):
            responses.setdefault(str(code), {"description": _STANDARD[code],
                                             "content": {"application/problem+json": {"schema": ref("Problem")}}})
        item["responses"] = responses
        paths.setdefault(full_path(op, prefix), {})[op.method.lower()] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "ticket-gateway", "version": version,
                 "description": "Tickets, comments, attachments, SLA policies, contacts, inbound mail and the "
                                "outbox of an email-to-ticket gateway. Authenticate with `Authorization: Bearer "
                                "<token>` (`ticket-gateway tokens create NAME --scope read|write|admin`). Lists "
                                "are paginated: `limit` (1-200) and the `next_cursor` of the previous page. "
                                "Errors are RFC 9457 problem details."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": {"Problem": PROBLEM, **schemas},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def _path_schema(op: Op, name: str) -> Schema:
    for p in op.params:
        if p.name == name and p.where == "path":
            return p.schema
    return {"type": "integer", "minimum": 1} if name in ("number", "id", "attachment_id") else string(max_length=320)
