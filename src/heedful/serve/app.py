"""The HTTP server: FastAPI on uvicorn, one ``POST /v1/models/{name}/predict`` per loaded run.

    app = create_app([load_run("runs/dates")], api_key="…")     # heedful serve runs/dates --api-key …
    serve(["runs/dates"], host="127.0.0.1", port=8000)          # the same, and run it with uvicorn

The server knows no task by name. What a run takes (``Task.inputs``: texts, audio files or
labels) picks the request schema, and the fields of the task's ``Prediction`` class
(``Task.prediction_class``) make the response schema; ``Run.predict`` answers, and with
``"attention": true`` ``Run.explain`` does (every attention layer's weights per head, with the
tokens); ``"explain": "rollout"`` answers the attention rollout (Abnar & Zuidema 2020) of the
encoder's self-attention over the input tokens, from the weights that same explanation captured
(``Explanation.self_attention``), or a 422 for a model with none. Requests to one model are
batched dynamically (``serve/batching.py``).

An export folder (``heedful export``: ONNX or CTranslate2) serves beside run directories:
``open_served`` opens it with ``open_export``, its runtime answers ``predict`` on the CPU, and a
request for attention or a rollout gets a 422, since an export keeps none.

Security: the routes are only those of the loaded runs (a model name never reaches the file
system); with an API key every route but ``/healthz``, ``/readyz`` and the explorer's static page
(``/explorer/``, which holds no data) needs it (``Authorization: Bearer KEY`` or ``X-API-Key:
KEY``); no CORS headers; every error is JSON ``{"error", "detail"}``
with its 4xx (or 500 with no traceback: that goes to the server's log).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hmac
import io
import ipaddress
import json
import logging
import math
import re
import tempfile
import typing
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, create_model
from torch import Tensor

from heedful.errors import UserError
from heedful.explain.rollout import attention_rollout
from heedful.extras import optional_import
from heedful.optimize.common import ExportedModel, is_export
from heedful.runs import Run, load_run
from heedful.serve.batching import DynamicBatcher, Overloaded

log = logging.getLogger("heedful.serve")

HEALTH_ROUTES = frozenset({"/healthz", "/readyz"})
# The explorer's static files hold no data (the page asks the API, with the key the user types),
# so a browser can load them without sending a key.
EXPLORER = "/explorer"
STATIC = Path(__file__).parent / "static"
API_KEY_ENV = "HEEDFUL_API_KEY"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Limits:
    """What one request may ask for; anything beyond is a 4xx before any inference runs."""

    max_body_bytes: int = 1_000_000  # 413 past this (checked on the header and while reading)
    max_texts: int = 32  # texts (or labels) per request
    max_text_chars: int = 2_000  # characters per text (a character tokenizer's tokens; sentencepiece makes fewer)
    max_audio_files: int = 8  # files per request
    max_audio_seconds: float = 30.0  # per file
    max_sample_rate: int = 48_000  # Hz, per file
    max_images: int = 16  # images per request (tasks that generate)
    max_queue: int = 1_024  # requests waiting for one model; 503 past this


@dataclass(frozen=True)
class Batching:
    """Dynamic batching of one model's concurrent requests (``serve/batching.py``)."""

    enabled: bool = True
    max_batch_tokens: int = 4_096  # characters of text, 10-ms frames of audio, or 64 per image
    max_wait_ms: float = 5.0  # how long the first request of a batch waits for others


class ApiError(Exception):
    """An error answered as JSON ``{"error": error, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, error: str, detail: Any = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail = status, error, detail


def error_body(error: str, detail: Any = None) -> bytes:
    return json.dumps({"error": error, "detail": detail}).encode()


# ----------------------------------------------------------------------------------------- schemas
class ErrorBody(BaseModel):
    """Every error's body, whatever its status."""

    error: str = Field(description="what kind of error, e.g. 'invalid request'")
    detail: Any = Field(None, description="what exactly was wrong")


# What a predict route answers besides 200, for the OpenAPI schema (clients generated from it).
PREDICT_ERRORS = {
    400: "malformed JSON (or a body that is not UTF-8), or a Host a local server does not answer",
    401: "no API key, or a wrong one (where the server has a key)",
    413: "the body, a file or the audio is too large, or too many files",
    415: "the wrong content type, or an upload that is not audio",
    422: "an invalid request, or the task's refusal of an input",
    503: "overloaded (the queue is full) or not ready",
}


class Attention(BaseModel):
    """What one input attended to (``Run.explain``): every attention module's weights per head."""

    title: str
    query_tokens: list[str] = Field(description="the rows, e.g. output pieces then <eos>")
    key_tokens: list[str] = Field(description="the columns, e.g. source pieces")
    summary: list[list[float]] = Field(description="(T_q, T_k): the map the task shows by default")
    layers: dict[str, list[Any]] = Field(description="module path -> its weights, (heads, T_q, T_k) for most")


class Rollout(BaseModel):
    """Attention rollout over one input's tokens (``"explain": "rollout"``)."""

    tokens: list[str] = Field(description="the input tokens: rows and columns")
    layers: list[str] = Field(description="the self-attention modules rolled out, first layer first")
    weights: list[list[float]] = Field(description="(T, T): row q = how much of each input token reaches q at the top")


EXPLAIN_METHODS = ("rollout",)
_ENCODER_SELF = re.compile(r"encoder\.layers\.(\d+)\.self_attn")


def rollout(explanation: Any) -> dict[str, Any]:
    """The rollout of ``explanation.self_attention`` (each (H, T, T), T = the key tokens), first
    layer first: the weights the explanation already holds, no second pass. An ``ApiError`` (422)
    when it holds no encoder self-attention (an RNN, a decoder-only model, a task that keeps none)."""
    found = {n: w for n, w in getattr(explanation, "self_attention", {}).items() if _ENCODER_SELF.fullmatch(n)}
    if not found:
        raise ApiError(422, "cannot explain", "explain 'rollout': this model's explanation holds no encoder "
                       "self-attention to roll out; ask for \"attention\": true instead")  # fmt: skip
    names = sorted(found, key=lambda n: int(_ENCODER_SELF.fullmatch(n)[1]))
    weights = attention_rollout([found[n] for n in names])  # (T, T)
    return {"tokens": list(explanation.key_tokens), "layers": names, "weights": _jsonable(weights)}


def _json_type(annotation: Any) -> Any:
    """A Prediction field's type as JSON carries it: tensors become nested lists."""
    if annotation is Tensor or "Tensor" in repr(annotation):
        return list[Any] | None
    return annotation


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return value.detach().float().cpu().tolist()
    return value


def prediction_schema(prediction_class: type, name: str) -> type[BaseModel]:
    """A pydantic model of ``prediction_class``'s fields (the task's typed ``Prediction``),
    without ``attention`` (answered apart, per layer and head)."""
    hints = typing.get_type_hints(prediction_class)
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(prediction_class):
        if f.name == "attention":
            continue
        required = f.name in ("input", "output")
        fields[f.name] = (_json_type(hints[f.name]), ... if required else None)
    return create_model(name, **fields)


EXPLAIN = (Literal["rollout"] | None, Field(None, description="'rollout': the encoder self-attention's rollout"))


def request_schema(kind: str, limits: Limits, name: str) -> type[BaseModel] | None:
    """The JSON body of a text or label model's predict; audio models take multipart uploads."""
    strict = ConfigDict(extra="forbid")
    if kind == "text":
        # No min_length: "" is a blank text as "   " is, and the task answers both alike (a
        # translator: an empty output; a classifier: a refusal naming the input) — as on the CLI.
        text = typing.Annotated[StrictStr, Field(max_length=limits.max_text_chars)]
        texts = (list[text], Field(min_length=1, max_length=limits.max_texts, description="the texts to predict"))
        return create_model(name, __config__=strict, texts=texts, attention=(StrictBool, False), explain=EXPLAIN)
    if kind == "label":
        label = typing.Annotated[StrictStr, Field(max_length=100)]
        inputs = (list[label], Field(min_length=1, max_length=limits.max_images, description="one image per label"))
        return create_model(name, __config__=strict, inputs=inputs, attention=(StrictBool, False), explain=EXPLAIN)
    return None


# ------------------------------------------------------------------------------------------ models
@dataclass
class Served:
    """One loaded run behind its route."""

    name: str
    run: Run | ExportedModel
    kind: str  # "text", "audio" or "label": Task.inputs
    batcher: DynamicBatcher
    response: type[BaseModel]
    request: type[BaseModel] | None
    schema_name: str  # the name's stem in the OpenAPI schema (models, operation id)

    @property
    def runtime(self) -> str:
        """What computes its answers: "torch" for a run, an export's runtime otherwise."""
        return self.run.runtime if isinstance(self.run, ExportedModel) else "torch"

    def infer(self, inputs: list[Any], attention: bool) -> list[tuple[Any, Any]]:
        """(prediction, explanation or None) per input: the batcher's call, in the inference thread."""
        with torch.inference_mode():
            if attention:
                return [(e.prediction, e) for e in self.run.explain(inputs)]
            return [(p, None) for p in self.run.predict(inputs)]


def _answer(
    served: Served,
    shown_inputs: list[Any],
    results: list[tuple[Any, Any]],
    attention_wanted: bool = True,
    explain: str | None = None,
) -> dict[str, Any]:
    predictions, attention = [], []
    rollouts = [rollout(e) for _, e in results] if explain == "rollout" else None  # 422 before any answer
    for shown, (prediction, explanation) in zip(shown_inputs, results, strict=True):
        record = {f.name: _jsonable(getattr(prediction, f.name)) for f in dataclasses.fields(prediction)}
        record.pop("attention", None)
        record["input"] = shown  # what the client sent (an upload's name, not our temporary path)
        predictions.append(record)
        if explanation is not None and attention_wanted:
            attention.append({
                "title": explanation.title,
                "query_tokens": list(explanation.query_tokens),
                "key_tokens": list(explanation.key_tokens),
                "summary": _jsonable(explanation.summary),
                "layers": {k: _jsonable(v) for k, v in explanation.weights.items()},
            })  # fmt: skip
    return {"model": served.name, "task": served.run.cfg.task, "predictions": predictions,
            "attention": attention if attention else None, "rollout": rollouts}  # fmt: skip


# ----------------------------------------------------------------------------------- ASGI guarding
class _TooLarge(Exception):
    pass


class Guard:
    """Before any route: the API key (every path but health) and the body size limit, both
    answered as JSON errors. Pure ASGI, so a body is counted as it streams in."""

    def __init__(
        self,
        app: Any,
        *,
        api_key: str | None,
        max_body_bytes: int,
        content_types: dict[str, str],
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app, self.api_key, self.max_body, self.allowed_hosts = app, api_key, max_body_bytes, allowed_hosts
        self.content_types = content_types  # POST path -> the media type its body must have
        self.state = app.state

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        if self.allowed_hosts is not None and _host_name(headers.get("host", "")) not in self.allowed_hosts:
            # A page on another site can reach a local, keyless server through DNS rebinding: its
            # requests then name that site as Host. Only the local names are answered.
            names = ", ".join(sorted(self.allowed_hosts))
            return await _send_error(send, 400, "host not allowed", f"a local server answers {names}")
        path = scope["path"]
        open_path = path in HEALTH_ROUTES or path in ("/", EXPLORER) or path.startswith(EXPLORER + "/")
        if self.api_key is not None and not open_path and not self._key_ok(headers):
            given = "authorization" in headers or "x-api-key" in headers
            detail = (
                "the API key is wrong"
                if given
                else "send the API key as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
            return await _send_error(send, 401, "unauthorized", detail)
        wanted = self.content_types.get(scope["path"]) if scope.get("method") == "POST" else None
        given = headers.get("content-type", "").split(";")[0].strip().lower()
        if wanted is not None and given != wanted:  # before the body is parsed as the wrong thing
            return await _send_error(send, 415, "unsupported content type", f"send {wanted}, not {given or 'none'}")
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _send_error(send, 413, "body too large", f"at most {self.max_body} bytes per request")
        seen, started, too_large = 0, False, False

        async def counted_receive() -> dict:
            nonlocal seen, too_large
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    too_large = True
                    raise _TooLarge
            return message

        async def watched_send(message: dict) -> None:
            nonlocal started
            if too_large:  # the app answered the broken-off body its own way (a 400): ours instead
                if not started:
                    started = True
                    await _send_error(send, 413, "body too large", f"at most {self.max_body} bytes per request")
                return
            started |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, watched_send)
        except _TooLarge:
            if not started:
                await _send_error(send, 413, "body too large", f"at most {self.max_body} bytes per request")

    def _key_ok(self, headers: dict[str, str]) -> bool:
        given = headers.get("x-api-key")
        auth = headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        return given is not None and hmac.compare_digest(given.encode(), self.api_key.encode())


def _host_name(host: str) -> str:
    """The Host header without its port: 'localhost:8000' -> 'localhost', '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def local_hosts(host: str) -> frozenset[str]:
    """The Host names a server bound to the local ``host`` answers (``serve`` without a key)."""
    return frozenset({"localhost", "127.0.0.1", "::1", _host_name(host)})


async def _send_error(send: Any, status: int, error: str, detail: Any) -> None:
    body = error_body(error, detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ---------------------------------------------------------------------------------------------- app
def set_threads(threads: int | None) -> None:
    """torch's intra-op threads for inference; None leaves torch's setting."""
    if threads is not None:
        if threads < 1:
            raise UserError(f"threads: {threads}; give at least 1")
        torch.set_num_threads(threads)


def inference_thread(threads: int | None) -> ThreadPoolExecutor | None:
    """One thread for every torch call of the server when torch computes with several threads;
    None at one thread.

    Why one: torch's OpenMP runtime (libgomp) keeps a team of worker threads for every thread
    that has run a parallel region, for as long as that thread lives. Once the teams hold more
    threads than there are cores, libgomp's barriers sleep after about 100 spins instead of
    about 300,000, and each of the many barriers of a decoding step then costs a wake-up: a
    Multi30k Transformer decoded about 20 % slower in an inference thread after its run had been
    loaded on the main thread (docs/RESULTS.md, "Serving: one thread for torch"). So ``serve``
    loads the runs in this thread too, and every model's batches run in it."""
    n = threads if threads is not None else torch.get_num_threads()
    return ThreadPoolExecutor(max_workers=1, thread_name_prefix="heedful-inference") if n > 1 else None


def create_app(
    runs: list[Run | ExportedModel],
    *,
    limits: Limits = Limits(),
    batching: Batching = Batching(),
    api_key: str | None = None,
    threads: int | None = 1,
    inference: ThreadPoolExecutor | None = None,
    allowed_hosts: frozenset[str] | None = None,
) -> Any:
    """The FastAPI app serving ``runs`` (each named by its run name; an export folder opened by
    ``open_export`` serves as its run does, without attention). ``threads``: torch's
    intra-op threads for inference (None leaves torch's setting). Where the models' batches run:
    ``inference`` (one thread, shared by every model; the caller shuts it down) — best the
    thread the runs were loaded in, as ``serve`` does (see ``inference_thread``); by default one
    shared thread of the app's own when torch computes with several threads, and at one thread
    one inference thread per model, so that several models answer at once on several cores."""
    fastapi = optional_import("fastapi", "heedful serve")
    from fastapi import File, Form, Request, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    if not runs:
        raise UserError("heedful serve needs at least one run directory")
    set_threads(threads)
    if api_key is not None and not api_key.strip():
        raise UserError("the API key is empty")
    if api_key is not None and not (api_key.isascii() and api_key.isprintable()):
        raise UserError("the API key: use printable ASCII characters (an HTTP header carries bytes, not text)")

    served: dict[str, Served] = {}
    schema_names: set[str] = set()
    for run in runs:
        name = str(run.cfg.name)
        if not _NAME.fullmatch(name):
            raise UserError(f"{run.run_dir}: run name {name!r} cannot name a model (letters, digits, '.', '_', '-')")
        if name in served:
            raise UserError(f"{run.run_dir}: two runs are named {name!r} ({served[name].run.run_dir}); rename one")
        task = type(run.task)
        kind, safe = task.inputs, re.sub(r"\W", "_", name)
        while safe in schema_names:  # "a-b" and "a.b": schemas of their own
            safe += "_"
        schema_names.add(safe)
        prediction = prediction_schema(task.prediction_class, f"{safe}_Prediction")
        response = create_model(
            f"{safe}_Response", model=(str, ...), task=(str, ...), predictions=(list[prediction], ...),
            attention=(list[Attention] | None, None), rollout=(list[Rollout] | None, None),
        )  # fmt: skip
        batcher = DynamicBatcher(
            lambda inputs, attention, n=name: served[n].infer(inputs, attention), name=name,
            enabled=batching.enabled, max_batch_chars=batching.max_batch_tokens, max_wait_ms=batching.max_wait_ms,
            max_queue=limits.max_queue,
        )  # fmt: skip
        request = request_schema(kind, limits, f"{safe}_Request")
        served[name] = Served(name, run, kind, batcher, response, request, safe)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any):
        shared = inference or inference_thread(threads)  # None: one thread per model
        for s in served.values():
            s.batcher.start(shared)
        app.state.ready = True
        yield
        app.state.ready = False
        for s in served.values():
            await s.batcher.stop()
        if shared is not None and shared is not inference:
            shared.shutdown(wait=False)

    app = fastapi.FastAPI(
        title="heedful",
        summary="Predictions and the attention behind them, from trained heedful runs.",
        lifespan=lifespan,
    )
    app.state.ready = False
    app.state.served = served
    if api_key is not None:  # the schema says how to send the key: /docs gets its Authorize button
        plain_openapi = app.openapi

        def openapi_with_key() -> dict[str, Any]:
            schema = plain_openapi()
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
            schema["security"] = [{"bearer": []}, {"apiKey": []}]
            return schema

        app.openapi = openapi_with_key

    # -- errors: always JSON {"error", "detail"}, never a traceback -------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException):
        error = {404: "not found", 405: "method not allowed"}.get(exc.status_code, "request refused")
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":  # not UTF-8, too deep
            error = "malformed JSON"
        detail = exc.detail if exc.status_code not in (404, 405) else f"no route {request.method} {request.url.path}"
        headers = getattr(exc, "headers", None)  # a 405's Allow
        return JSONResponse({"error": error, "detail": detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        problems = exc.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return JSONResponse({"error": "malformed JSON", "detail": _describe(problems)}, status_code=400)
        return JSONResponse({"error": "invalid request", "detail": _describe(problems)}, status_code=422)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("error serving %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal error", "detail": "see the server's log"}, status_code=500)

    # -- routes ------------------------------------------------------------------------------------
    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, Any]:
        """Every model is loaded and its batcher running."""
        if not app.state.ready:
            raise ApiError(503, "not ready", "the models are still loading")
        return {"status": "ready", "models": list(served)}

    for path, probe in (("/healthz", healthz), ("/readyz", readyz)):  # HEAD too: probes that send it
        app.head(path, include_in_schema=False)(probe)

    @app.get("/v1/models", tags=["models"])
    async def models() -> dict[str, Any]:
        """The loaded runs: name, task, what they take, where to send it, what computes it
        ("torch", or an export's "onnxruntime" / "ctranslate2") and whether it answers attention."""
        return {"models": [
            {"name": s.name, "task": s.run.cfg.task, "inputs": s.kind, "predict": f"/v1/models/{s.name}/predict",
             "runtime": s.runtime, "attention": s.runtime == "torch"}
            for s in served.values()
        ]}  # fmt: skip

    for s in served.values():
        _add_predict_route(app, s, limits, File, Form, Request, UploadFile)

    from fastapi.responses import RedirectResponse
    from fastapi.staticfiles import StaticFiles

    @app.get("/", include_in_schema=False)
    async def root():
        return RedirectResponse(f"{EXPLORER}/")

    app.mount(EXPLORER, StaticFiles(directory=STATIC, html=True), name="explorer")

    @app.post("/v1/models/{name}/predict", tags=["models"], include_in_schema=False)
    async def unknown_model(name: str):
        raise ApiError(404, "unknown model", f"no model {name!r} is loaded; loaded: {', '.join(served)}")

    content_types = {
        f"/v1/models/{s.name}/predict": "multipart/form-data" if s.kind == "audio" else "application/json"
        for s in served.values()
    }
    return Guard(
        app,
        api_key=api_key,
        max_body_bytes=limits.max_body_bytes,
        content_types=content_types,
        allowed_hosts=allowed_hosts,
    )


def _describe(problems: list[dict]) -> str:
    """Pydantic's errors as one line: 'body.texts.0: String should have at most 2000 characters'."""
    parts = []
    for p in problems[:5]:
        where = ".".join(str(x) for x in p.get("loc", ()))
        parts.append(f"{where}: {p.get('msg', 'invalid')}")
    more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
    return "; ".join(parts) + more


async def _predict(
    served: Served, inputs: list[Any], shown: list[Any], size: int, attention: bool, explain: str | None = None
) -> Any:
    try:  # a rollout reads the explanation's weights: it asks for the explanation as attention does
        results = await served.batcher.submit(inputs, size, attention or explain is not None)
    except Overloaded as exc:
        raise ApiError(503, "overloaded", str(exc)) from None
    except UserError as exc:
        raise ApiError(422, "cannot predict", str(exc)) from None
    from starlette.concurrency import run_in_threadpool
    from starlette.responses import Response

    # Built to the route's response_model (which documents it); returned as a Response so FastAPI
    # does not validate the whole answer again, attention maps included, on every request. Off the
    # event loop: a large answer (attention over long texts) takes a good part of a second to
    # write, and every other client, /healthz included, would wait for it.
    body = await run_in_threadpool(_answer_json, served, shown, results, attention, explain)
    return Response(body, media_type="application/json")


def _answer_json(served: Served, shown: list[Any], results: Any, attention: bool, explain: str | None) -> bytes:
    answer = _answer(served, shown, results, attention, explain)
    try:
        return json.dumps(answer, ensure_ascii=False, allow_nan=False).encode()
    except ValueError:  # a NaN or infinite float (say, a score of -inf): JSON has none, null stands in
        return json.dumps(_finite(answer), ensure_ascii=False, allow_nan=False).encode()


def _add_predict_route(app: Any, served: Served, limits: Limits, File, Form, Request, UploadFile) -> None:
    path, summary = f"/v1/models/{served.name}/predict", f"{served.run.cfg.task}: {served.name}"
    route = app.post(
        path,
        response_model=served.response,
        tags=["models"],
        summary=summary,
        operation_id=f"predict_{served.schema_name}",
        responses={status: {"model": ErrorBody, "description": text} for status, text in PREDICT_ERRORS.items()},
    )

    if served.kind == "audio":

        async def predict_audio(
            request: Request,
            files: list[UploadFile] = File(..., description="WAV/FLAC files (what libsndfile reads)"),
            attention: bool = Form(False),
            explain: Literal["rollout"] | None = Form(None),
        ):
            if len(files) > limits.max_audio_files:
                raise ApiError(413, "too many files", f"at most {limits.max_audio_files} per request")
            blobs = [await f.read() for f in files]
            frames = [_check_audio(blob, f.filename or f"file {i + 1}", limits) for i, (blob, f) in
                      enumerate(zip(blobs, files, strict=True))]  # fmt: skip
            with tempfile.TemporaryDirectory(prefix="heedful-serve-") as tmp:
                paths = []
                for i, blob in enumerate(blobs):  # our own names: nothing the client sent reaches a path
                    paths.append(Path(tmp) / f"{i}.audio")
                    paths[-1].write_bytes(blob)
                shown = [f.filename or f"file {i + 1}" for i, f in enumerate(files)]
                return await _predict(served, [str(p) for p in paths], shown, sum(frames), attention, explain)

        # The module's annotations are strings (postponed); FastAPI needs the classes themselves.
        predict_audio.__annotations__ = {
            "request": Request, "files": list[UploadFile], "attention": bool, "explain": Literal["rollout"] | None,
        }  # fmt: skip
        route(predict_audio)
        return

    request_model = served.request
    field = "texts" if served.kind == "text" else "inputs"

    async def predict(request: Request, body: request_model):  # type: ignore[valid-type]
        items = getattr(body, field)
        size = sum(len(x) for x in items) if served.kind == "text" else 64 * len(items)
        return await _predict(served, list(items), list(items), max(size, 1), body.attention, body.explain)

    # FastAPI reads the body's model from the annotation; make it the concrete class.
    predict.__annotations__ = {"request": Request, "body": request_model}
    route(predict)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _check_audio(blob: bytes, name: str, limits: Limits) -> int:
    """An upload libsndfile can read, short enough; its length in 10-ms frames (the batch budget)."""
    sf = optional_import("soundfile", "audio uploads")
    try:
        info = sf.info(io.BytesIO(blob))
    except Exception:
        raise ApiError(415, "not audio", f"{name}: not an audio file libsndfile can read (WAV, FLAC, …)") from None
    if info.samplerate > limits.max_sample_rate:
        raise ApiError(422, "sample rate too high", f"{name}: {info.samplerate} Hz; at most {limits.max_sample_rate}")
    seconds = info.frames / max(info.samplerate, 1)
    if seconds > limits.max_audio_seconds:
        raise ApiError(413, "audio too long", f"{name}: {seconds:.1f} s; at most {limits.max_audio_seconds:g} s")
    return max(1, int(seconds * 100))


# -------------------------------------------------------------------------------------------- serve
def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    run_dirs: list[str | Path],
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    insecure: bool = False,
    limits: Limits = Limits(),
    batching: Batching = Batching(),
    threads: int | None = 1,
    device: str = "cpu",
    log_level: str = "info",
) -> None:
    """Load ``run_dirs`` once each and serve them until interrupted (``heedful serve``)."""
    if not is_local(host) and api_key is None and not insecure:
        raise UserError(f"--host {host}: not a local address; set --api-key (or {API_KEY_ENV}), or pass --insecure")
    uvicorn = optional_import("uvicorn", "heedful serve")
    hosts = local_hosts(host) if is_local(host) and api_key is None else None  # no key: only local pages
    app, inference = load_app(
        run_dirs, device, limits=limits, batching=batching, api_key=api_key, threads=threads, allowed_hosts=hosts
    )
    try:
        uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)
    finally:
        if inference is not None:
            inference.shutdown(wait=False)


def open_served(folder: str | Path, device: str = "cpu") -> Run | ExportedModel:
    """A run directory (``load_run``), or an export of one (``open_export``: onnxruntime or
    CTranslate2 computes, on the CPU), which answers without the run's weights — and so without
    attention: a request for it gets a 422."""
    if is_export(folder):
        from heedful.optimize.export import open_export

        return open_export(folder, device=device)
    return load_run(folder, device)


def load_app(
    run_dirs: list[str | Path], device: str = "cpu", *, threads: int | None = 1, **options: Any
) -> tuple[Any, ThreadPoolExecutor | None]:
    """``create_app`` of the runs in ``run_dirs``, loaded in the thread that will run their
    batches (``inference_thread``: with several torch threads, one for every model; at one thread
    the runs load here and each model gets its own), and that thread, for the caller to shut
    down. ``options``: ``create_app``'s."""
    set_threads(threads)  # first: a thread's OpenMP team is sized at its first parallel region
    inference = inference_thread(threads)

    def load() -> list[Run | ExportedModel]:
        return [open_served(d, device) for d in run_dirs]

    try:
        runs = load() if inference is None else inference.submit(load).result()
        return create_app(runs, threads=threads, inference=inference, **options), inference
    except BaseException:
        if inference is not None:
            inference.shutdown(wait=False)
        raise


__all__ = [
    "ApiError",
    "Batching",
    "Limits",
    "create_app",
    "inference_thread",
    "is_local",
    "load_app",
    "local_hosts",
    "open_served",
    "rollout",
    "serve",
]
