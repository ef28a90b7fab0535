"""The pure part of the pipeline, done ahead in a second process for multi-mail imports (files, Maildirs, mboxes).

`ingest PATH` spends about half of its time on work that needs no database: hashing the mail, parsing the
MIME tree, HTML to text, sanitising HTML, classifying auto-replies and bounces, hashing and writing attachment
blobs. `ParseAhead` runs that work in one forked worker process a little ahead of the main process, which
does the database work (dedupe, identify, thread, listeners) in the order of the sources, exactly as before.
The worker hands back small results: the mail's sha256, the parsed mail (pickled, attachment bytes left out),
the verdict, and the sha256 of every attachment it wrote to the content-addressed store (idempotent: tmp +
fsync + rename, same content same path).

Anything the worker could not do (an exception, a result that does not pickle, a dead worker) is done by the
main process as it always was: `Prepared` fields that are None mean "compute it yourself". The intake and
the handlers (`parse`, `classify`, `extract`, `attachments`) use a prepared value only when it is there, so
outcomes, traces and rows are the same with or without the worker. A blob the worker wrote for a mail that
then keeps nothing (a duplicate, an ignored or rejected mail) stays in the store unreferenced, like a blob of
a rolled-back transaction.
"""

from __future__ import annotations

import hashlib
import logging
import pickle
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

log = logging.getLogger("gateway.prepare")

# Mails per task handed to the worker, and tasks in flight: the worker runs at most this far ahead.
CHUNK = 16
AHEAD = 4


@dataclass
class Prepared:
    sha256: str | None = None               # hex sha256 of the raw bytes
    parsed: Any = None                      # gateway.mime.ParsedMail; attachment data b"" (see shas)
    parse_error: str | None = None          # MailParseError's reason
    parse_recursion: bool = False           # RecursionError while parsing
    shas: list[str] | None = None           # sha256 of each attachment, written to the blob store
    sizes: list[int] | None = None          # len() of each attachment's data
    html_text: str | None = None            # gateway.quotes.html_to_text(parsed.html), when the text is empty
    html_clean: str | None = None           # gateway.quotes.sanitize_html(parsed.html)
    # gateway.autoreply.classify (and bounce_info for a bounce) for these inputs; None: not done
    classified_for: tuple[str | None, tuple[str, ...]] | None = None   # (envelope sender, own domains)
    verdict: Any = None
    bounce: Any = None


def prepare_one(raw: bytes, max_depth: int, max_parts: int, blob_root: str | None,
                classify_for: tuple[str | None, tuple[str, ...]] | None = None) -> Prepared:
    """classify_for: (envelope sender, the gateway's own domains) to classify the mail with, or None."""
    from gateway.mime import MailParseError, parse_mail

    sha = hashlib.sha256(raw).hexdigest()
    try:
        p = parse_mail(raw, max_depth=max_depth, max_parts=max_parts)
    except MailParseError as e:
        return Prepared(sha256=sha, parse_error=e.reason)
    except RecursionError:
        return Prepared(sha256=sha, parse_recursion=True)
    out = Prepared(sha256=sha, parsed=p)
    try:
        if p.html:
            from gateway.quotes import html_to_text, sanitize_html

            if not p.text.strip("\n").strip():
                out.html_text = html_to_text(p.html)
            out.html_clean = sanitize_html(p.html)
    except Exception:  # noqa: BLE001 -- the main process does it again and meets the same failure
        out.html_text = out.html_clean = None
    if classify_for is not None:
        try:
            from gateway.autoreply import bounce_info, classify

            verdict = classify(p.message, envelope_from=classify_for[0], from_addr=p.from_addr,
                               own_domains=classify_for[1])
            out.bounce = bounce_info(p.message) if verdict is not None and verdict.kind == "bounce" else None
            out.verdict = verdict
            out.classified_for = classify_for
        except Exception:  # noqa: BLE001 -- the main process classifies it (and meets the same failure)
            out.classified_for = out.verdict = out.bounce = None
    if p.attachments and blob_root is not None:
        try:
            from gateway.blobs import BlobStore

            store = BlobStore(Path(blob_root))
            shas = [store.put(a.data) for a in p.attachments]
            out.sizes = [len(a.data) for a in p.attachments]
            out.shas = shas
            for a in p.attachments:
                a.data = b""  # not sent back: the blob store has it
        except Exception:  # noqa: BLE001 -- the main process writes them (and meets the same failure)
            out.shas = out.sizes = None
    return out


def prepare_chunk(raws: list[bytes], max_depth: int, max_parts: int, blob_root: str | None,
                  classify_for: tuple[str | None, tuple[str, ...]] | None = None) -> list[bytes | None]:
    """In the worker: one pickled Prepared per mail, None where anything went wrong (the main process then
    does that mail's work itself)."""
    out: list[bytes | None] = []
    for raw in raws:
        try:
            out.append(pickle.dumps(prepare_one(raw, max_depth, max_parts, blob_root, classify_for), protocol=5))
        except BaseException:  # noqa: BLE001 -- anything at all: the main process does it
            out.append(None)
    return out


def _worker_init() -> None:
    """The worker ends with its parent (Linux: PR_SET_PDEATHSIG), also when the parent is killed."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 -- elsewhere it ends when its next read of the task queue fails
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle


class ParseAhead:
    """Prepared work for a stream of items (any tuple whose `raw_at` element is the raw bytes or None), in order.

    `stream(items)` yields (item, Prepared | None). The worker is started on the first chunk; when it dies or
    cannot be started, the rest is yielded with None (the main process does the work): slower, never lost."""

    def __init__(self, *, max_depth: int, max_parts: int, blob_root: str | None, raw_at: int = 2,
                 classify_for: tuple[str | None, tuple[str, ...]] | None = None) -> None:
        """classify_for: (envelope sender, own domains) when every mail of the stream has that envelope
        sender: the worker classifies them too (gateway.handlers.classify uses it only for the same inputs)."""
        self.args = (max_depth, max_parts, blob_root, classify_for)
        self.raw_at = raw_at
        self.pool: Any = None
        self.broken = False
        self.prepared = 0
        self.waited = 0.0  # seconds the main process waited for the worker

    def _submit(self, chunk: list[Any]) -> Any:
        if self.broken:
            return None
        try:
            if self.pool is None:
                import multiprocessing
                from concurrent.futures import ProcessPoolExecutor

                self.pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"),
                                                initializer=_worker_init)
            raws = [it[self.raw_at] or b"" for it in chunk]
            return self.pool.submit(prepare_chunk, raws, *self.args)
        except Exception as e:  # noqa: BLE001 -- no worker: the main process does the work
            self._broke(e)
            return None

    def start(self) -> None:
        """Fork the worker now: before the caller opens its database connections, so that the worker holds
        none of them (a worker outliving a killed import must not keep a transaction of it open)."""
        fut = self._submit([])
        if fut is not None:
            self._results(fut, 0)

    def _broke(self, e: BaseException) -> None:
        if not self.broken:
            log.warning("parse-ahead worker unavailable (%s: %s); parsing in the main process", type(e).__name__, e)
        self.broken = True

    def _results(self, fut: Any, n: int) -> list[Prepared | None]:
        if fut is None:
            return [None] * n
        import time

        t0 = time.perf_counter()
        try:
            blobs = fut.result()
        except BaseException as e:  # noqa: BLE001 -- BrokenProcessPool and the like
            self._broke(e)
            return [None] * n
        finally:
            self.waited += time.perf_counter() - t0
        out: list[Prepared | None] = []
        for b in blobs:
            try:
                out.append(pickle.loads(b) if b is not None else None)
            except Exception:  # noqa: BLE001
                out.append(None)
        self.prepared += sum(1 for x in out if x is not None)
        return out

    def stream(self, items: Iterable[Any]) -> Iterator[tuple[Any, Prepared | None]]:
        it = iter(items)
        pending: deque[tuple[list[Any], Any]] = deque()

        def fill() -> bool:
            chunk = []
            for item in it:
                chunk.append(item)
                if len(chunk) >= CHUNK:
                    break
            if not chunk:
                return False
            pending.append((chunk, self._submit(chunk)))
            return True

        more = True
        while more and len(pending) < AHEAD:
            more = fill()
        while pending:
            chunk, fut = pending.popleft()
            if more:
                more = fill()
            for item, prep in zip(chunk, self._results(fut, len(chunk))):
                yield item, (prep if item[self.raw_at] is not None else None)

    def close(self) -> None:
        log.debug("parse-ahead: %d mails prepared, %.2f s waited for the worker", self.prepared, self.waited)
        if self.pool is not None:
            try:
                self.pool.shutdown(wait=True, cancel_futures=True)
            except Exception:  # noqa: BLE001
                pass
            self.pool = None
