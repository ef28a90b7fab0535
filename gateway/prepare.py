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
a rolled-back transaction, until gateway.blobprune removes it.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("gateway.prepare")

# Mails per chunk handed to the worker: it runs one chunk ahead of the caller.
CHUNK = 16


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
    over_budget: bool = False               # the worker was killed: the mail took more than its CPU budget
    crashed: bool = False                   # the worker died twice while preparing this mail

    @property
    def answers_parse(self) -> bool:
        """Does it answer the parse of its mail (gateway.store.ahead.Ahead.parse: the parsed mail, or the error
        to raise), so that nothing parses the raw bytes again?"""
        return (self.parsed is not None or self.parse_error is not None or self.parse_recursion
                or self.over_budget or self.crashed)


def prepare_one(raw: bytes, max_depth: int, max_parts: int, blob_root: str | None,
                classify_for: tuple[str | None, tuple[str, ...]] | None = None) -> Prepared:
    """classify_for: (envelope sender, the gateway's own domains) to classify the mail with, or None."""
    from gateway.mime import MailParseError, parse_mail

    sha = hashlib.sha256(raw).hexdigest()
    try:  # with a blob store, a large attachment is decoded into it a piece at a time, never whole (_put_blobs)
        p = parse_mail(raw, max_depth=max_depth, max_parts=max_parts, stream_large=blob_root is not None)
    except MailParseError as e:
        return Prepared(sha256=sha, parse_error=e.reason)
    except RecursionError:
        return Prepared(sha256=sha, parse_recursion=True)
    del raw  # the last reference but the attachments' sources: the blobs are written first, then it goes
    out = Prepared(sha256=sha, parsed=p)
    if p.attachments and blob_root is not None:
        _put_blobs(out, p.attachments, blob_root)
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
    return out


def _put_blobs(out: Prepared, attachments: list[Any], blob_root: str) -> None:
    """Each attachment into the blob store (`out.shas`, `out.sizes`); its data is not sent back. One left encoded
    in the raw mail (`Part.source`) is decoded into its blob a piece at a time. On a failure the main process
    writes them (and meets the same failure): each is sent back with its data."""
    from gateway.blobs import BlobStore

    try:
        store = BlobStore(Path(blob_root))
        stored = [store.put_stream(a.source.chunks()) if a.source is not None else (store.put(a.data), len(a.data))
                  for a in attachments]
        out.shas = [sha for sha, _ in stored]
        out.sizes = [size for _, size in stored]
        for a in attachments:
            a.data = b""
    except Exception:  # noqa: BLE001
        out.shas = out.sizes = None
        for a in attachments:
            if a.source is not None:
                a.data = b"".join(a.source.chunks())
    finally:
        for a in attachments:
            a.source = None  # it holds the raw mail: not kept, not sent back


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used by a process so far, from /proc; 0.0 when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


_TICKS = float(os.sysconf("SC_CLK_TCK")) if hasattr(os, "sysconf") else 100.0


def _worker_init() -> None:
    """The worker ends with its parent (Linux: PR_SET_PDEATHSIG), also when the parent is killed."""
    import signal

    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG = 1
    except Exception:  # noqa: BLE001 -- elsewhere it ends when its next read of the task pipe fails
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# A small mail the worker prepares once before it says it is ready: the imports and first-use set-up of the
# parsing libraries (a fresh interpreter spends a few tenths of a CPU second on them) are charged to no mail.
_WARM_UP = b"From: warm-up <w@example.invalid>\r\nSubject: warm-up\r\n\r\n<p>warm-up</p>\r\n"


def _worker_main(conn: Any) -> None:
    """The worker process: first (None, CPU seconds of its start-up), its ready signal; then a task is (raws,
    envelope senders, (max_depth, max_parts, blob_root, own_domains)); it answers one (Prepared or None, CPU
    seconds used so far) per mail, in order."""
    _worker_init()
    try:
        prepare_one(_WARM_UP, 10, 10, None, None)
    except Exception:  # noqa: BLE001 -- a warm-up only; the mails will say what fails
        pass
    try:
        conn.send((None, time.process_time()))
    except (EOFError, OSError):
        return
    while True:
        try:
            raws, senders, (max_depth, max_parts, blob_root, own) = conn.recv()
        except (EOFError, OSError):
            return
        for raw, sender in zip(raws, senders, strict=True):
            try:
                prep: Prepared | None = prepare_one(_read(raw), max_depth, max_parts, blob_root,
                                                    None if own is None else (sender, own))
                if isinstance(raw, str):  # a large mail: its result goes in a file (see ParseAhead.prepare)
                    _trim()
                    with open(raw + RESULT_SUFFIX, "wb") as f:
                        pickle.dump(prep, f, protocol=pickle.HIGHEST_PROTOCOL)
                    prep = None
                    conn.send((IN_FILE, time.process_time()))
                else:
                    conn.send((prep, time.process_time()))
            except (EOFError, OSError):
                return
            except BaseException:  # noqa: BLE001 -- anything at all (a result that does not pickle): parent does it
                conn.send((None, time.process_time()))


# A large mail's result (handed over in a file, its path P) is written to P + RESULT_SUFFIX; IN_FILE is sent instead
# of it. The parent loads it once the worker is gone: the two never hold their copies of it at the same time.
RESULT_SUFFIX = ".prepared"
IN_FILE = "in-file"


def _load_result(path: str) -> Prepared | None:
    """The result a worker left in a file for the large mail in `path` (None: none, do it yourself); removed."""
    try:
        with open(path + RESULT_SUFFIX, "rb") as f:
            prep = pickle.load(f)
        return prep if isinstance(prep, Prepared) else None
    except Exception:  # noqa: BLE001 -- not written, or not whole (the worker died): the main process does it
        return None
    finally:
        try:
            os.unlink(path + RESULT_SUFFIX)
        except OSError:
            pass


def _trim() -> None:
    """Free memory back to the system (glibc malloc_trim), where there is one to ask."""
    import gc

    gc.collect()
    try:
        import ctypes

        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _read(raw: bytes | str) -> bytes:
    """A mail handed over in memory, or in a file (its path: a large mail, see ParseAhead.prepare)."""
    if isinstance(raw, str):
        with open(raw, "rb") as f:
            return f.read()
    return raw


class _Exec:
    """A worker started as a fresh interpreter (`Worker(context="exec")`), with the Process methods used here."""

    def __init__(self, popen: Any) -> None:
        self.popen = popen
        self.pid = popen.pid

    def is_alive(self) -> bool:
        return bool(self.popen.poll() is None)

    def kill(self) -> None:
        self.popen.kill()

    def join(self, timeout: float | None = None) -> None:
        import subprocess

        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass


def _exec_worker() -> tuple[_Exec, Any]:
    """A worker in a new interpreter, on a socket pair: nothing of this process comes along (no threads, no
    database connections, no __main__ run again), so a multi-threaded service may start and restart it."""
    import socket
    import subprocess
    import sys
    from multiprocessing.connection import Connection

    import gateway

    ours, theirs = socket.socketpair()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(gateway.__file__).resolve().parent.parent)]
                                        + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    try:
        popen = subprocess.Popen([sys.executable, "-c", "import sys; from gateway.prepare import worker_on_fd; "
                                  "worker_on_fd(int(sys.argv[1]))", str(theirs.fileno())],
                                 pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env, close_fds=True)
    finally:
        theirs.close()
    return _Exec(popen), Connection(ours.detach())


def worker_on_fd(fd: int) -> None:
    """The entry point of an exec'd worker (see _exec_worker)."""
    from multiprocessing.connection import Connection

    _worker_main(Connection(fd))


class Worker:
    """One worker process preparing mails (`prepare_one`) for the main process, fed over a pipe.

    budget: CPU seconds one mail may take in the worker. While the main process waits for a mail's result it
    watches the worker's CPU time (/proc): a mail over budget gets the worker killed (SIGKILL: whatever code
    it was stuck in) and a fresh one started for the mails after it; that mail is `over_budget`. A mail during
    which the worker died is tried once more in a fresh worker; when it dies again, the mail is `crashed`.
    Without a worker (it cannot be started) every result is None: the main process does the work."""

    POLL = 0.05
    START_SECONDS = 60.0  # wall-clock bound on a worker's start-up (imports and warm-up), charged to no mail

    def __init__(self, args: tuple[Any, ...], *, budget: float | None, context: str = "fork") -> None:
        """context: "fork" (the caller has no threads yet: `ingest`) or "exec" (a fresh interpreter: `serve`)."""
        self.args = args
        self.budget = budget
        self.context = context
        self.proc: Any = None
        self.conn: Any = None
        self.broken = False
        self.killed = 0        # workers killed for a mail over budget (statistics, tests)
        self._cpu = 0.0        # the worker's CPU seconds when its current mail started
        self._ready = False    # the worker's start-up signal received (its start-up CPU is nobody's budget)

    def start(self) -> bool:
        if self.proc is not None:
            return True
        if self.broken:
            return False
        try:
            if self.context == "exec":
                proc, parent = _exec_worker()
            else:
                import multiprocessing

                ctx: Any = multiprocessing.get_context(self.context)
                parent, child = ctx.Pipe(duplex=True)
                proc = ctx.Process(target=_worker_main, args=(child,), daemon=True, name="tg-prepare")
                proc.start()
                child.close()
        except Exception as e:  # noqa: BLE001 -- no worker: the main process does the work
            log.warning("preparation worker unavailable (%s: %s); preparing in the main process",
                        type(e).__name__, e)
            self.broken = True
            return False
        self.proc, self.conn, self._cpu, self._ready = proc, parent, 0.0, False
        return True

    def stop(self) -> None:
        proc, conn, self.proc, self.conn = self.proc, self.conn, None, None
        if proc is None:
            return
        try:
            conn.close()
            proc.join(2)
            if proc.is_alive():
                proc.kill()
                proc.join(2)
        except Exception:  # noqa: BLE001
            pass

    def _kill(self) -> None:
        proc, conn, self.proc, self.conn = self.proc, self.conn, None, None
        try:
            proc.kill()
            proc.join(5)
            conn.close()
        except Exception:  # noqa: BLE001
            pass

    def send(self, raws: list[bytes | str], senders: list[str | None]) -> bool:
        """Hand over a chunk (the worker must be idle: every result of the last chunk received)."""
        if not self.start():
            return False
        try:
            self.conn.send((raws, senders, self.args))
            return True
        except (OSError, ValueError):
            self._kill()
            return False

    def receive(self) -> tuple[str, Prepared | None]:
        """The next mail's result: ("ok", Prepared or None), ("over", None): killed over budget, ("died", None)."""
        conn, proc = self.conn, self.proc
        if conn is None:
            return "died", None
        try:
            if not self._ready:  # its start-up, not charged to the mail: the CPU it used is the baseline
                if not conn.poll(self.START_SECONDS):
                    raise EOFError  # a worker that cannot start in time is one that died
                _, self._cpu = conn.recv()
                self._ready = True
            while not conn.poll(self.POLL):
                if not proc.is_alive():
                    raise EOFError
                if self.budget is not None and _cpu_seconds(proc.pid) - self._cpu > self.budget:
                    self.killed += 1
                    self._kill()
                    return "over", None
            prep, self._cpu = conn.recv()
            return "ok", prep
        except (EOFError, OSError, pickle.UnpicklingError, TypeError, ValueError):
            self._kill()
            return "died", None

    def begin(self, raws: list[bytes | str], senders: list[str | None]) -> None:
        """Hand a chunk to the worker; `finish` collects its results."""
        self._task = (raws, senders)
        self._out: list[Prepared | None] = []
        self._deaths: dict[int, int] = {}
        self._sent = bool(raws) and self.send(raws, senders)

    def finish(self) -> list[Prepared | None]:
        """Every mail's Prepared of the chunk begun (None: do it yourself), in order."""
        raws, senders = self._task
        out, sent = self._out, self._sent
        while len(out) < len(raws):
            if not sent:
                return out + [None] * (len(raws) - len(out))
            state, prep = self.receive()
            if state == "ok":
                out.append(prep)
                continue
            if state == "over":
                out.append(Prepared(over_budget=True))
            else:
                n = self._deaths[len(out)] = self._deaths.get(len(out), 0) + 1
                if n >= 2:
                    out.append(Prepared(crashed=True))
            i = len(out)
            sent = i < len(raws) and self.send(raws[i:], senders[i:])
        return out


class Preparing:
    """A batch handed to the worker (`ParseAhead.begin`); `results()` waits for it."""

    def __init__(self, ahead: ParseAhead, raws: list[bytes | str], large: bool) -> None:
        self.ahead, self.raws, self.large = ahead, raws, large
        self.out: list[Prepared | None] | None = None  # its results, once taken from the worker

    def results(self) -> list[Prepared | None]:
        """Each mail's Prepared (None: do it yourself), in order."""
        with self.ahead.lock:
            self.ahead._collect(self)
        assert self.out is not None
        return self.out


class ParseAhead:
    """Prepared work for a stream of items (any tuple whose `raw_at` element is the raw bytes or None), in order,
    or for one batch of mails (`prepare`), by one killable worker process (`Worker`).

    `stream(items)` yields (item, Prepared | None), the worker one chunk ahead of the caller; `begin(raws,
    senders)` hands one batch over and returns at once (`Preparing.results()` waits). When the worker
    cannot be started, every Prepared is None (the main process does the work): slower, never lost."""

    def __init__(self, *, max_depth: int, max_parts: int, blob_root: str | None, raw_at: int = 2,
                 classify_for: tuple[str | None, tuple[str, ...]] | None = None,
                 own_domains: tuple[str, ...] | None = None, budget: float | None = None,
                 context: str = "fork") -> None:
        """classify_for: (envelope sender, own domains) when every mail of the stream has that envelope
        sender; own_domains: the mails of `prepare` are classified with their own envelope senders.
        budget: CPU seconds per mail (see Worker); context: how the worker is started (multiprocessing)."""
        if classify_for is not None:
            own_domains = classify_for[1]
        self.sender = classify_for[0] if classify_for is not None else None
        self.worker = Worker((max_depth, max_parts, blob_root, own_domains), budget=budget, context=context)
        self.raw_at = raw_at
        self.lock = threading.Lock()
        self._pending: Preparing | None = None  # the batch begun whose results are still in the worker
        self.prepared = 0
        self.waited = 0.0  # seconds the main process waited for the worker
        self.recycled = 0  # workers stopped after a large mail (statistics, tests)

    @property
    def broken(self) -> bool:
        return self.worker.broken

    def start(self) -> None:
        """Start the worker now: before the caller opens its database connections, so that a forked worker
        holds none of them (a worker outliving a killed import must not keep a transaction of it open)."""
        with self.lock:
            self.worker.start()

    def prepare(self, raws: list[bytes | str], senders: list[str | None]) -> list[Prepared | None]:
        """The Prepared of each mail (raw bytes, envelope sender), in order; None: do it yourself.

        A mail may be handed over as the path of a file holding it (str): a large mail, which the caller then
        need not hold while the worker parses it. After such a mail the worker is stopped (a fresh one starts
        with the next mail): what a large mail made it allocate goes back to the system at once, instead of
        staying in the worker's heap for as long as it lives. Its result comes in a file, read once the worker
        is stopped."""
        return self.begin(raws, senders).results()

    def begin(self, raws: list[bytes | str], senders: list[str | None]) -> Preparing:
        """`prepare` in two steps, in one thread: the mails are handed to the worker now, and `results()` of
        what this returns waits for them, so that the caller does other work (its write transactions, IMAP)
        while the worker prepares. The worker is not held meanwhile: whoever hands it the next batch (another
        thread's `prepare` or `begin`) first takes these results from it and keeps them for `results()`."""
        with self.lock:
            if self._pending is not None:
                self._collect(self._pending)
            large = any(isinstance(r, str) for r in raws)
            if large:  # a fresh worker for it: nothing that earlier mails left in its heap comes on top
                self.worker.stop()
            self.worker.begin(raws, senders)
            task = self._pending = Preparing(self, raws, large)
        return task

    def _collect(self, task: Preparing) -> None:
        """(holding the lock) The results of a batch begun, taken from the worker unless they were already."""
        if task.out is None:
            assert task is self._pending
            self._pending = None
            task.out = self._end(task.raws, task.large)

    def _end(self, raws: list[bytes | str], large: bool) -> list[Prepared | None]:
        """(holding the lock) The worker's results of the batch begun (see `begin`)."""
        t0 = time.perf_counter()
        out: list[Any] = self.worker.finish()
        if large:
            self.worker.stop()
            self.recycled += 1
            out = [_load_result(r) if isinstance(r, str) and p == IN_FILE else p
                   for r, p in zip(raws, out, strict=True)]
        self.waited += time.perf_counter() - t0
        self.prepared += sum(1 for x in out if x is not None)
        return out

    def stream(self, items: Iterable[Any]) -> Iterator[tuple[Any, Prepared | None]]:
        it = iter(items)

        def chunk() -> list[Any]:
            out = []
            for item in it:
                out.append(item)
                if len(out) >= CHUNK:
                    break
            return out

        current = chunk()
        if current:
            self._begin(current)
        while current:
            results = self._finish()
            nxt = chunk()
            if nxt:
                self._begin(nxt)  # the worker prepares the next chunk while the caller stores this one
            for item, prep in zip(current, results, strict=True):
                yield item, (prep if item[self.raw_at] is not None else None)
            current = nxt

    def _begin(self, items: list[Any]) -> None:
        raws = [item[self.raw_at] or b"" for item in items]
        self.worker.begin(raws, [self.sender] * len(raws))

    def _finish(self) -> list[Prepared | None]:
        t0 = time.perf_counter()
        out = self.worker.finish()
        self.waited += time.perf_counter() - t0
        self.prepared += sum(1 for x in out if x is not None)
        return out

    def close(self) -> None:
        log.debug("parse-ahead: %d mails prepared, %.2f s waited for the worker", self.prepared, self.waited)
        self.worker.stop()
