"""`ticket-gateway serve`: one asyncio loop hosting the SMTP/LMTP listeners, pollers and periodic jobs.

Start: migrations (`ensure_current`), listeners bound, components installed, READY=1 to systemd, then every
mail stored but not threaded yet (a crash, an outage) is threaded. Stored mail is threaded by worker threads
fed from a queue; a periodic sweep catches anything the queue missed.

Storing uses group commit (`GroupCommit`): mails whose DATA ends while a store commits go together into the
next `Intake.store_many` (one transaction, one fsync); each sender gets its 250 after the commit holding its
mail, a failed batch answers 451 to each of its mails. On SQLite (one writer) the `WriteGate` alternates
between a store batch and one threading transaction. While mail arrives slowly enough for threading to keep
pace with at most `serve.thread_share` of the gate, in batches of the size it gets at that pace, it does; in a
burst it could not keep pace with anyway, arriving mail goes first and threading catches up after it (at most
`serve.defer_seconds` per mail, then it takes every other turn). The rule is gateway.thread_policy's.

SIGTERM/SIGINT: stop accepting, say 421 to idle sessions, let sessions inside a mail finish (up to
`serve.shutdown_grace_seconds`), wait for stores in flight, exit 0 -- within 30 s. SIGHUP: reopen the log file.

Plugging in more work (the IMAP poller, other periodic jobs) -- a component is a function taking the Service,
listed in COMPONENTS as "module:function", called before start:

    def install(service):
        for account in service.config.values.get("imap") or []:
            service.add_task(f"imap {account['user']}", lambda svc, a=account: poll(svc, a))
        service.add_job("imap-cleanup", cleanup, seconds=3600)   # sync callable, runs in a thread

A task is `async def poll(service, account)`: it runs until `service.stopping` (an asyncio.Event) is set, is
cancelled if still running at the end of the grace period, and must not exit on errors (log, back off, retry).
Sync code in a task goes through `await service.run_sync(fn, *args)`; sync code may watch
`service.stop_requested` (a threading.Event). Mail goes in through `await service.store(raw, envelope,
thread=False)` then `result = await service.process(mail_id)` (both raise StoreUnavailable on an outage):
they share the service's database write gate, which keeps SQLite writers from sleeping in its busy handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

from gateway.config import Config
from gateway.db import StoreUnavailable, is_unavailable
from gateway.intake import Envelope, Result
from gateway.store import raw as rawstore
from gateway.thread_policy import SAMPLE_SECONDS, THREAD_BATCH, CostModel, arrival_rate, gate_need, may_thread

log = logging.getLogger("gateway.service")

# Components that add tasks and jobs: "module:function", function(service) called before start.
COMPONENTS: tuple[str, ...] = (
    "gateway.imap:install_service",
    "gateway.spooldrain:install_service",  # mail piped by the MTA (`deliver`), drained on the doorbell
    "gateway.outbound:install_service",
    "gateway.sla:install_service",
    "gateway.api:install_service",   # HTTP: API, /healthz, /metrics ([http] listen)
    "gateway.blobprune:install_service",  # orphaned attachment blobs ([attachments] prune_minutes)
    "gateway.backends:install_service",
)

HARD_EXIT_SECONDS = 28.0   # from SIGTERM: whatever still runs then is abandoned (exit 0 stays within 30 s)


# systemd ---------------------------------------------------------------------------------------------------
class Notifier:
    """sd_notify(3) over $NOTIFY_SOCKET, standard library only. Silent no-op outside systemd."""

    def __init__(self, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]  # abstract namespace
        self.address = addr if addr[:1] in ("/", "\0") else ""
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_usec = int(usec) if usec.isdigit() and (not pid or pid == str(os.getpid())) else 0

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto("\n".join(lines).encode(), self.address)
            return True
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
            return False

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half the watchdog timeout), or None when systemd wants none."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None


# The database write gate ----------------------------------------------------------------------------------
class WriteGate:
    """One writer at a time in this process (SQLite only; PostgreSQL: a no-op), fair between the two kinds.

    SQLite has one writer anyway; when a second one waits inside SQLite, its busy handler sleeps in steps up to
    100 ms. Waiting here instead hands the lock over at once. Urgent writers (a store: clients wait for their
    250) go first, but not forever: when an urgent holder leaves while non-urgent writers (threading, sweeps)
    wait, the next turn is theirs. With group commit (one store batch at a time holds the gate for all the
    mails that arrived meanwhile) stores and threading alternate: a store waits for at most one threading
    transaction, and threading keeps going while mail arrives."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._cond = threading.Condition()
        self._busy = False
        self._urgent = 0        # urgent writers waiting
        self._other = 0         # non-urgent writers waiting
        self._owed = False      # an urgent writer went while others waited: the next turn is theirs

    @contextlib.contextmanager
    def hold(self, urgent: bool) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with self._cond:
            if urgent:
                self._urgent += 1
            else:
                self._other += 1
            try:
                while self._busy or ((self._owed and self._other) if urgent else (self._urgent and not self._owed)):
                    self._cond.wait()
            finally:
                if urgent:
                    self._urgent -= 1
                else:
                    self._other -= 1
            if not urgent:
                self._owed = False
            self._busy = True
        try:
            yield
        finally:
            with self._cond:
                self._busy = False
                if urgent and self._other:
                    self._owed = True
                self._cond.notify_all()


# Group commit ---------------------------------------------------------------------------------------------
class GroupCommit:
    """Stores with group commit: mails whose DATA completes while a store is committing wait for it to end
    and then go together in the next `Intake.store_many` (one transaction, one fsync for all, all or none).
    Each caller's future resolves only after the commit that holds its mail (its id), or with that commit's
    exception (every mail of a failed batch: the caller answers 451).

    SQLite: one batch in flight (there is one writer anyway). PostgreSQL: a few batches in parallel.
    Runs on the event loop; the commits run in `pool`."""

    def __init__(self, commit: Callable[[list[tuple[bytes, Envelope]]], list[int]], pool: ThreadPoolExecutor,
                 *, parallel: int = 1, max_items: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.commit = commit
        self.pool = pool
        self.parallel = parallel
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.waiting: list[tuple[bytes, Envelope, asyncio.Future[int]]] = []
        self.running = 0
        self.batches = 0            # statistics (tests, logs)
        self.mails = 0

    def submit(self, raw: bytes, envelope: Envelope) -> asyncio.Future[int]:
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.waiting.append((raw, envelope, fut))
        self._next()
        return fut

    def _next(self) -> None:
        while self.waiting and self.running < self.parallel:
            n = size = 0
            for raw, _, _ in self.waiting:
                if n and (n >= self.max_items or size + len(raw) > self.max_bytes):
                    break
                n += 1
                size += len(raw)
            batch, self.waiting = self.waiting[:n], self.waiting[n:]
            try:
                done = asyncio.get_running_loop().run_in_executor(self.pool, self.commit,
                                                                  [(r, e) for r, e, _ in batch])
            except RuntimeError as e:  # the pool was shut down (the service is stopping): nothing stored
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreUnavailable(f"store closed: {e}"))
                continue
            self.running += 1
            self.batches += 1
            self.mails += n
            done.add_done_callback(lambda f, batch=batch: self._done(f, batch))  # type: ignore[misc]

    def _done(self, f: asyncio.Future[list[int]], batch: list[tuple[bytes, Envelope, asyncio.Future[int]]]) -> None:
        self.running -= 1
        try:
            if f.cancelled():  # the pool shut down under us: nothing was committed
                error: BaseException | None = StoreUnavailable("store cancelled (shutting down)")
                ids: list[int] = []
            else:
                error = f.exception()
                ids = [] if error is not None else f.result()
                if error is None and len(ids) != len(batch):
                    error = RuntimeError(f"store_many returned {len(ids)} ids for {len(batch)} mails")
            for i, (_, _, fut) in enumerate(batch):
                if fut.done():
                    continue
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(ids[i])
        finally:
            self._next()


# Logging --------------------------------------------------------------------------------------------------
class LogFile:
    """logging.file: replaces the stderr handler; reopen() after logrotate moved the file (SIGHUP)."""

    def __init__(self, path: str, level: int, fmt: str = "text") -> None:
        from gateway.observe import formatter

        self.handler = logging.FileHandler(path, encoding="utf-8", delay=False)
        self.handler.setFormatter(formatter(fmt))
        root = logging.getLogger()
        for h in list(root.handlers):
            root.removeHandler(h)
        root.addHandler(self.handler)
        root.setLevel(level)

    def reopen(self) -> None:
        old = self.handler.setStream(self.handler._open())
        if old is not None:
            old.close()


# The service ----------------------------------------------------------------------------------------------
class Service:
    def __init__(self, config: Config, *, app: Any = None, verbose: bool = False,
                 notifier: Notifier | None = None, handle_signals: bool = True) -> None:
        self.config = config
        self.handle_signals = handle_signals
        self.verbose = verbose
        self._app = app
        self.notifier = notifier or Notifier()
        serve = config.values["serve"]
        self.grace = float(serve["shutdown_grace_seconds"])
        self.sweep_seconds = float(serve["pending_sweep_seconds"])
        self.workers = int(serve["workers"])
        self.defer = float(serve["defer_seconds"])
        self.share = float(serve["thread_share"])              # see _may_thread
        self.ingest_busy = False                               # mail is arriving (see _watch_ingest)
        self.arrivals = 0.0                                    # mails stored per second (moving average)
        self.cost_model = CostModel()                          # what threading costs (see thread_gate)
        self.burst = False                                     # mail arrives faster than threading keeps pace
        self._stored_count = 0
        self._last_busy = 0.0
        self.stopping: asyncio.Event | None = None            # set when shutdown starts (tasks end on it)
        self.stop_requested = threading.Event()                # the same, for sync code in threads
        self.listeners: list[Any] = []
        self.intake: Any = None
        self.engine: Any = None                                # gateway.engine.Engine: stored mail in batches
        self.spool_drainer: Any = None                         # gateway.spooldrain.SpoolDrainer
        self.ahead: Any = None                                 # gateway.prepare.ParseAhead: the worker process
        self.registry: Any = None
        self.queue: asyncio.Queue[tuple[int, float]] | None = None
        self.gate = WriteGate(False)
        self.group_commit: GroupCommit | None = None
        self._tasks: list[tuple[str, Callable[[Service], Awaitable[None]]]] = []
        self._jobs: list[tuple[str, Callable[[], Any], float, bool]] = []
        self._running: list[asyncio.Task[Any]] = []
        self._workers: list[asyncio.Task[Any]] = []
        self._inflight: set[asyncio.Future[Any]] = set()
        self._started = threading.Event()                      # tests: listeners are bound
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logfile: LogFile | None = None
        self.http_where: str | None = None                     # the HTTP listener (gateway.api), when on
        self.store_pool = ThreadPoolExecutor(8, thread_name_prefix="store")
        self.process_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="thread")
        self.stage_pool = ThreadPoolExecutor(self.workers, thread_name_prefix="stage")  # Engine.stage
        self.pool = ThreadPoolExecutor(32, thread_name_prefix="svc")

    # Plug-in API ---------------------------------------------------------------------------------------
    @property
    def app(self) -> Any:
        if self._app is None:
            from gateway.app import build_app

            self._app = build_app(self.config)
        return self._app

    def add_task(self, name: str, factory: Callable[[Service], Awaitable[None]]) -> None:
        """A long-running coroutine `factory(service)`, started after the listeners, ended by `stopping`."""
        self._tasks.append((name, factory))

    def add_job(self, name: str, func: Callable[[], Any], seconds: float, *, start_now: bool = False) -> None:
        """A periodic job (APScheduler interval; coalesce, one instance at a time). `func` is a plain callable
        (runs in a thread) or a coroutine function."""
        self._jobs.append((name, func, seconds, start_now))

    async def run_sync(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.pool, func, *args)

    async def store(self, raw: bytes, envelope: Envelope, *, thread: bool = True) -> int:
        """Store durably (the commit happened when this returns). thread=True: the workers thread it next.

        Group commit: stores that arrive while one is committing go together in the next transaction; this
        returns once the commit holding this mail is done (raises what that commit raised)."""
        if self.group_commit is None:  # before run(): no batching
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[int] = loop.run_in_executor(self.store_pool, self._store_sync, raw, envelope)
        else:
            fut = self.group_commit.submit(raw, envelope)
        self._inflight.add(fut)
        fut.add_done_callback(lambda f: self._stored(f, thread))
        # shielded: a client that hangs up while we commit does not orphan the mail (the sweep would catch
        # it, but the callback queues it at once)
        return await asyncio.shield(fut)

    async def authenticate(self, raw: bytes, envelope: Envelope) -> Envelope:
        """The envelope with the mail's sender authentication (gateway.auth; DNS, in a thread): before storing."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, self.app.auth.envelope, raw, envelope)

    async def process(self, mail_id: int) -> Result:
        """Thread a stored mail now (raises StoreUnavailable on an outage)."""
        return await asyncio.get_running_loop().run_in_executor(self.process_pool, self._process_sync, mail_id)

    async def process_batch(self, mail_ids: list[int], *, skip_locked: bool = False) -> list[Result]:
        """Thread stored mails now, as one batch (raises StoreUnavailable on an outage). skip_locked: leave out
        (no result) a mail that another instance sharing the database threads now (Engine.thread)."""
        return await asyncio.get_running_loop().run_in_executor(self.process_pool, self._thread_sync, mail_ids,
                                                                skip_locked)

    def enqueue(self, mail_id: int) -> None:
        """Have the workers thread a stored mail (after arriving mail, up to serve.defer_seconds)."""
        if self.queue is not None:
            self.queue.put_nowait((mail_id, time.monotonic()))

    # Sync parts (threads) ------------------------------------------------------------------------------
    def _store_sync(self, raw: bytes, envelope: Envelope) -> int:
        with self.gate.hold(urgent=True):
            return self.intake.store(raw, envelope)

    def _store_many_sync(self, items: list[tuple[bytes, Envelope]]) -> list[int]:
        with self.gate.hold(urgent=True):
            return self.intake.store_many(items)

    def _process_sync(self, mail_id: int) -> Result:
        results = self._thread_sync([mail_id])
        if not results:
            raise KeyError(f"no inbound mail {mail_id}")
        return results[0]

    def _thread_sync(self, mail_ids: list[int], skip_locked: bool = False) -> list[Result]:
        """Thread stored mails as one batch (Intake.thread): prepared by the worker process first, then one
        write transaction holding the write gate (a savepoint per mail)."""
        return self.waiting(self.engine.thread(mail_ids, hold=thread_gate(self, len(mail_ids), learn=False),
                                               skip_locked=skip_locked))

    def waiting(self, results: list[Result]) -> list[Result]:
        """(thread) The mails among these that wait for another (a reply for its original, handlers/wait.py) are
        queued again when their `retry_in` has passed (the sweep is the fallback). Returns the results."""
        loop = self._loop
        for r in results:
            if r.retry_in is not None and loop is not None:
                try:
                    loop.call_soon_threadsafe(loop.call_later, r.retry_in, self.enqueue, r.mail_id)
                except RuntimeError:  # the loop is closed (shutdown): the sweep of the next start threads it
                    break
        return results

    def _may_thread(self, since: float) -> bool:
        """Threading may take its next turn (alternating with store batches at the write gate): no mail
        arriving (or PostgreSQL: no single writer); or mail arrives slowly enough for threading to keep pace
        with at most serve.thread_share of the write gate; or the mail it is about to thread has waited
        serve.defer_seconds since `since` (gateway.thread_policy.may_thread)."""
        now = time.monotonic()
        costs = self.cost_model.costs(now)
        verdict = may_thread(single_writer=self.gate.enabled, arriving=self.ingest_busy, rate=self.arrivals,
                             costs=costs, share=self.share, batch=THREAD_BATCH, burst=self.burst, queued_at=since,
                             now=now, defer=self.defer)
        if verdict.burst != self.burst:
            log.debug("%s: %.0f mail/s arriving, threading them would need %.0f%% of the write gate (%.1f ms a "
                      "transaction + %.1f ms a mail)", "burst, arriving mail first" if verdict.burst else
                      "burst over", self.arrivals, 100 * gate_need(self.arrivals, costs, THREAD_BATCH),
                      1000 * costs.per_txn, 1000 * costs.per_mail)
        self.burst = verdict.burst
        return verdict.thread

    def learn_thread_cost(self, mails: int, seconds: float) -> None:
        """(thread) Threading a batch of `mails` mails took `seconds` from arriving mail (see thread_gate)."""
        self.cost_model = self.cost_model.learn(mails, seconds, time.monotonic())

    def _wait_quiet(self, since: float) -> None:
        """(thread) Let arriving mail go first (see _may_thread)."""
        while not self._may_thread(since) and not self.stop_requested.is_set():
            time.sleep(0.02)

    def _stored(self, fut: asyncio.Future[int], thread: bool) -> None:
        self._inflight.discard(fut)
        self._stored_count += 1
        self._last_busy = time.monotonic()
        if thread and not fut.cancelled() and fut.exception() is None:
            self.enqueue(fut.result())

    def sweep(self, older_than: float | None = None) -> int:
        """Thread every stored mail still 'received' (Intake.pending + process, like process_pending, but
        one broken mail does not stop the rest and a shutdown stops it between mails)."""
        from datetime import timedelta

        age = timedelta(seconds=self.sweep_seconds if older_than is None else older_than)
        done = 0
        seen: set[int] = set()
        started = time.monotonic()
        while not self.stop_requested.is_set():
            ids = [i for i in self.intake.pending(older_than=age, limit=100) if i not in seen]
            if not ids:
                break
            for i in range(0, len(ids), THREAD_BATCH):
                if self.stop_requested.is_set():
                    break
                chunk = ids[i:i + THREAD_BATCH]
                seen.update(chunk)
                self._wait_quiet(started)
                try:
                    # a mail another instance sharing the database threads now is its business: not waited for
                    done += len(self._thread_sync(chunk, skip_locked=True))
                except StoreUnavailable:
                    raise
                except Exception as e:  # noqa: BLE001
                    if is_unavailable(e):
                        raise StoreUnavailable(str(e)) from e
                    log.exception("sweep: mails %s failed", chunk)
        if done:
            log.info("sweep: threaded %d stored mail(s)", done)
        return done

    # Running -------------------------------------------------------------------------------------------
    def install_components(self) -> None:
        for spec in COMPONENTS:
            module, _, func = spec.partition(":")
            getattr(importlib.import_module(module), func or "install")(self)

    async def _watch_ingest(self) -> None:
        """ingest_busy: a store in flight or a session inside a mail now or in the last 150 ms. arrivals: mails
        stored per second, sampled every SAMPLE_SECONDS, averaged over about a second; a clear burst counts at
        once (gateway.thread_policy.arrival_rate)."""
        sampled = time.monotonic()
        while True:
            now = time.monotonic()
            if now - sampled >= SAMPLE_SECONDS:
                rate, self._stored_count = self._stored_count / (now - sampled), 0
                self.arrivals = arrival_rate(self.arrivals, rate, self.cost_model.costs(now), self.share,
                                             THREAD_BATCH)
                sampled = now
            if self._inflight or (self.registry is not None and self.registry.in_transaction()):
                self._last_busy = now
            self.ingest_busy = now - self._last_busy < 0.15
            await asyncio.sleep(0.02)

    async def _run_task(self, name: str, factory: Callable[[Service], Awaitable[None]]) -> None:
        try:
            await factory(self)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001
            log.exception("task %s failed", name)

    async def _watchdog(self, interval: float) -> None:
        while True:
            self.notifier.send("WATCHDOG=1")
            await asyncio.sleep(interval)

    def _job(self, name: str, func: Callable[[], Any]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            try:
                if asyncio.iscoroutinefunction(func):
                    await func()
                else:
                    await asyncio.get_running_loop().run_in_executor(self.pool, func)
            except StoreUnavailable as e:  # one line per change of state (gateway.observe), not one per run
                if not self.app.observe.state("database", False, f"{type(e).__name__}: {e}"):
                    log.debug("job %s: store unavailable: %s", name, e)
            except Exception:  # noqa: BLE001
                log.exception("job %s failed", name)
            else:
                self.app.observe.state("database", True)
        return job

    def request_stop(self, why: str = "") -> None:
        if self.stopping is not None and not self.stopping.is_set():
            log.info("stopping%s", f" ({why})" if why else "")
            self.stopping.set()
            self.stop_requested.set()

    def stop_threadsafe(self) -> None:
        """request_stop from another thread (tests, embedding)."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.request_stop, "requested")

    def reopen_logs(self) -> None:
        if self._logfile is not None:
            self._logfile.reopen()
            log.info("log file reopened")

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (or request_stop). Returns the exit code."""
        from gateway.config import ConfigError
        from gateway.exitcodes import EX_CONFIG, EX_TEMPFAIL
        from gateway.guard.connlimits import ConnLimits
        from gateway.migrate import ensure_current
        from gateway.smtp import SessionRegistry, quiet_aiosmtpd, start_listeners, stop_listeners

        loop = self._loop = asyncio.get_running_loop()
        self.stopping = asyncio.Event()
        quiet_aiosmtpd(self.verbose)
        logging.getLogger("apscheduler").setLevel(logging.DEBUG if self.verbose else logging.WARNING)
        logfile = self.config.get("logging", "file")
        if logfile:
            level = logging.DEBUG if self.verbose else getattr(logging, self.config.get("logging", "level"))
            self._logfile = LogFile(str(self.config.base_dir / os.path.expanduser(logfile)), level,
                                    self.config.get("logging", "format"))

        try:
            app = await loop.run_in_executor(self.pool, lambda: self.app)
            await loop.run_in_executor(self.pool, ensure_current, app.engine)
        except Exception as e:  # noqa: BLE001
            if is_unavailable(e):
                log.error("store unavailable at start, giving up (systemd restarts us): %s", e)
                return EX_TEMPFAIL
            raise
        from gateway.engine import Engine, start_worker

        self.intake = app.intake()
        self.engine = Engine(app, self.intake)
        # the preparation worker, a fresh interpreter: this process already runs threads
        self.ahead = app.ahead = await loop.run_in_executor(
            self.pool, functools.partial(start_worker, self.config, context="exec"))
        rawstore.release_big_binds(app.engine)
        sqlite = app.engine.dialect.name == "sqlite"
        self.gate = WriteGate(sqlite)
        self.group_commit = GroupCommit(self._store_many_sync, self.store_pool, parallel=1 if sqlite else 4)

        self.registry = SessionRegistry(self.config.get("limits", "max_sessions"),
                                        ConnLimits.of(self.config.values["limits"]))
        self.queue = asyncio.Queue()
        self.registry.observe = app.observe
        try:
            self.listeners = await start_listeners(self.config, self.store, self.registry, disk=app.disk,
                                                   authenticate=self.authenticate if app.auth.active else None)
            self.install_components()  # they may bind too (HTTP)
        except ConfigError as e:
            log.error("configuration error: %s", e)
            await stop_listeners(self.listeners)
            return EX_CONFIG
        except OSError as e:
            log.error("cannot listen: %s", e)
            await stop_listeners(self.listeners)
            return 71  # EX_OSERR

        if self.handle_signals:
            for sig, what in ((signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT")):
                loop.add_signal_handler(sig, self.request_stop, what)
            loop.add_signal_handler(signal.SIGHUP, self.reopen_logs)

        scheduler = start_scheduler(loop, [("pending-sweep", self._job("pending-sweep", self.sweep),
                                             self.sweep_seconds, False),
                                            ("startup-sweep", self._job("startup-sweep", lambda: self.sweep(0)), 0,
                                             True)]
                                    + [(n, self._job(n, f), sec, now) for n, f, sec, now in self._jobs])
        self._workers = [loop.create_task(ThreadingWorker(self).run(), name=f"worker-{i}") for i in range(self.workers)]
        self._workers.append(loop.create_task(self._watch_ingest(), name="watch-ingest"))
        self._running = [loop.create_task(self._run_task(n, f), name=n) for n, f in self._tasks]
        wd = self.notifier.watchdog_interval()
        watchdog = loop.create_task(self._watchdog(wd)) if wd else None

        from gateway.observe import log_startup

        log_startup(self)
        self.notifier.send("READY=1", f"STATUS=listening: {', '.join(li.where for li in self.listeners)}",
                           f"MAINPID={os.getpid()}")
        self._started.set()

        await self.stopping.wait()
        t0 = time.monotonic()
        self.notifier.send("STOPPING=1", "STATUS=finishing sessions")
        # 1. stop accepting; 421 to idle sessions; sessions inside a mail go on until the grace deadline
        self.registry.closing = True
        await stop_listeners(self.listeners)
        deadline = t0 + self.grace
        await finish_sessions(self.registry, deadline, self.grace)
        # 2. stores in flight finish (they were committing: their mail is kept and queued)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=max(0.5, t0 + self.grace + 3 - time.monotonic()))
        # 3. pollers and other tasks end on `stopping`; cancel what is left
        if self._running:
            _, pending = await asyncio.wait(self._running, timeout=max(0.1, deadline - time.monotonic()))
            for t in pending:
                t.cancel()
        # 4. queued threading work is not waited for: it is stored, and threaded at the next start
        assert self.queue is not None
        left = self.queue.qsize()
        if left:
            log.info("%d stored mail(s) will be threaded at next start", left)
        scheduler.shutdown(wait=False)
        for t in self._workers + ([watchdog] if watchdog else []):
            t.cancel()
        await asyncio.gather(*self._workers, *self._running, return_exceptions=True)
        # 5. threads: in-flight pipeline runs finish (their transactions are short); then close the store
        pools = (self.store_pool, self.stage_pool, self.process_pool, self.pool)
        ok = await loop.run_in_executor(None, join_pools, pools, t0 + HARD_EXIT_SECONDS - 2)
        if ok:
            if self.ahead is not None:
                self.app.ahead = None
                self.ahead.close()
            with contextlib.suppress(Exception):
                self.app.close()
        log.info("stopped after %.1fs", time.monotonic() - t0)
        return 0



# Threading stored mail ------------------------------------------------------------------------------------
def thread_gate(service: Service, mails: int, *, learn: bool = True,
                staged_cpu: float = 0.0) -> Callable[[], contextlib.AbstractContextManager[None]]:
    """The service's write gate for a threading transaction of `mails` mails. learn: the transaction is the
    whole of threading those mails (`Engine.run_staged`: the try counted and the mails run in one turn); the
    time it held the gate plus `staged_cpu`, the CPU seconds this process spent staging them (`Engine.stage`:
    reading, handing over to the worker process), is what threading them took from arriving mail (the
    stores wait for the gate, the SMTP sessions for the interpreter), and teaches the service what threading
    costs (Service.learn_thread_cost: a fixed part per transaction and a part per mail,
    gateway.thread_policy.CostModel, used by Service._may_thread). Not for `Engine.thread`, which takes the
    gate twice per batch (a short turn to count the tries first)."""
    @contextlib.contextmanager
    def gate() -> Iterator[None]:
        with service.gate.hold(urgent=False):
            t = time.monotonic()
            try:
                yield
            finally:
                if learn and service.gate.enabled:
                    service.learn_thread_cost(mails, time.monotonic() - t + staged_cpu)

    return gate


SHORT_QUEUE = 4  # a threading worker that finds fewer mails queued threads them at once (see ThreadingWorker)


class ThreadingWorker:
    """One of serve's threading workers (serve.workers): threads what is stored, in batches: the mails queued by
    the time it takes its turn (at most THREAD_BATCH), one write transaction for them all. Pipelined: the next
    batch is read and prepared by the worker process (`Engine.stage`) while this one's write transaction runs
    (`Engine.run_staged`); failures are logged (the sweep tries again)."""

    def __init__(self, service: Service) -> None:
        self.service = service

    async def run(self) -> None:
        svc = self.service
        queue = svc.queue
        assert queue is not None
        loop = asyncio.get_running_loop()
        running: asyncio.Future[None] | None = None  # the write transactions of the batch before
        while True:
            if running is not None and queue.empty():
                await running  # nothing to prepare meanwhile
                running = None
            batch = [await queue.get()]
            while len(batch) < THREAD_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            # a short queue: threading keeps pace; a long one waits its turn (_may_thread)
            while len(batch) >= SHORT_QUEUE and not svc._may_thread(batch[0][1]):
                await asyncio.sleep(0.02)
            ids = [mail_id for mail_id, _ in batch]
            try:
                staged, cpu = await loop.run_in_executor(svc.stage_pool, self.stage, ids)
            except Exception as e:  # noqa: BLE001
                self.failed(ids, e)
                continue
            try:
                if running is not None:
                    await running
                running = loop.run_in_executor(svc.process_pool, self.run_staged, staged, cpu)
            except BaseException:  # cancelled (shutdown): not run; stored, threaded at the next start or sweep
                staged.drop()
                raise

    def stage(self, ids: list[int]) -> tuple[Any, float]:
        """(thread) A batch staged (`Engine.stage`), and the CPU seconds this thread spent on it."""
        cpu = time.thread_time()
        staged = self.service.engine.stage(ids, skip_locked=True)
        return staged, time.thread_time() - cpu

    def run_staged(self, staged: Any, staged_cpu: float = 0.0) -> None:
        """(thread) The write transactions of a staged batch."""
        try:
            results = self.service.waiting(self.service.engine.run_staged(
                staged, hold=thread_gate(self.service, len(staged.ids), staged_cpu=staged_cpu)))
            log.debug("mails %s: %s", staged.ids, [r.outcome for r in results])
        except Exception as e:  # noqa: BLE001
            self.failed(staged.ids, e)

    def failed(self, ids: list[int], e: Exception) -> None:
        if isinstance(e, StoreUnavailable) or is_unavailable(e):  # the sweep threads them later; one line per
            # change of state
            if not self.service.app.observe.state("database", False, f"{type(e).__name__}: {e}"):
                log.debug("mails %s stored, threading postponed (store unavailable: %s)", ids, e)
        else:
            log.error("mails %s: threading failed; the sweep tries again", ids, exc_info=e)



def start_scheduler(loop: asyncio.AbstractEventLoop,
                    jobs: list[tuple[str, Callable[[], Awaitable[None]], float, bool]]) -> Any:
    """APScheduler on the loop: each job (name, coroutine function, seconds: 0 once now, start now)."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    scheduler = AsyncIOScheduler(event_loop=loop, timezone=UTC)
    for name, job, seconds, start_now in jobs:
        if seconds <= 0:  # one-off
            scheduler.add_job(job, "date", run_date=datetime.now(UTC), id=name, name=name,
                              misfire_grace_time=None)
            continue
        kw: dict[str, Any] = {"next_run_time": datetime.now(UTC)} if start_now else {}
        scheduler.add_job(job, "interval", seconds=seconds, id=name, name=name, coalesce=True, max_instances=1,
                          misfire_grace_time=max(1, int(seconds)), **kw)
    scheduler.start()
    return scheduler


async def finish_sessions(registry: Any, deadline: float, grace: float) -> None:
    """Shutdown: 421 to idle sessions; sessions inside a mail go on until the deadline, then are closed."""
    while registry.live and time.monotonic() < deadline:
        registry.close_idle()
        registry.changed.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(registry.changed.wait(), 0.1)
    if registry.live:
        log.warning("%d session(s) still busy after %.0fs: closing them (no 250 was given)", len(registry.live),
                    grace)
        registry.abort_all()


def join_pools(pools: tuple[ThreadPoolExecutor, ...], until: float) -> bool:
    """Shut the thread pools down and wait for their threads until `until`; False when some still run."""
    for p in pools:
        p.shutdown(wait=False, cancel_futures=True)
    threads = [t for p in pools for t in getattr(p, "_threads", ())]
    for t in threads:
        t.join(max(0.0, until - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    if alive:
        log.error("threads still running at shutdown: %s", ", ".join(alive))
    return not alive


MMAP_THRESHOLD = 1024 * 1024  # see release_big_buffers
ARENAS = 2  # glibc malloc arenas for all of serve's threads (see release_big_buffers)


def release_big_buffers(threshold: int = MMAP_THRESHOLD) -> bool:
    """glibc malloc: every allocation of `threshold` bytes or more is its own mmap, unmapped when freed.

    A large mail passes through several buffers of its size (the DATA buffer, SQLite's copies of the bound
    blob and of the record, the bytes read back for threading, decoded attachments). glibc serves the first
    of them by mmap, but freeing it raises its (dynamic) mmap threshold to that size (up to 32 MiB): from then
    on buffers of a mail's size come from the heap arenas, and what is freed there largely stays in RSS and
    fragments, so the copies of storing and threading add up. A fixed threshold turns the dynamic adjustment
    off. The heap arenas are capped at ARENAS too: glibc gives each of serve's threads (stores, threading,
    HTTP, jobs) up to 8 per core, and each one grows and fragments on its own, so RSS crept up under steady
    mail (bench/bench_soak.py: about 1 MiB/min with the default, ~12 MiB less and flat with 2). Returns False
    where there is no glibc mallopt (musl, macOS)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    M_MMAP_THRESHOLD, M_ARENA_MAX = -3, -8
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold))) and bool(mallopt(M_ARENA_MAX, ARENAS))


def serve(config: Config, *, verbose: bool = False) -> int:
    """Run the service in a new event loop (the `serve` command)."""
    release_big_buffers()
    service = Service(config, verbose=verbose)
    code = asyncio.run(service.run())
    lingering = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if lingering:
        # a thread stuck in a database call must not keep us past systemd's stop timeout; its transaction is
        # rolled back by the database like after a crash
        logging.shutdown()
        os._exit(code)
    return code


__all__ = ["COMPONENTS", "Notifier", "Service", "WriteGate", "serve"]
