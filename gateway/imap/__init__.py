"""The IMAP poller: fetches mail from IMAP mailboxes (`[[imap]]` accounts) into the intake.

For every message in the account's folder (UNDELETED, in UID order, in batches of `batch_size`, at most
32 MiB of mail a batch):

1. look up its key (account, folder, UIDVALIDITY, UID) in `imap_seen`: a message already stored (a crash or
   an error after the commit, before the move) is only moved, never fetched again;
2. otherwise fetch `BODY.PEEK[]` (the \\Seen flag is left alone) for the whole batch, store the batch's mails
   with `Intake.store_many()` (durable, one commit for the batch) and record their keys (state `stored`);
3. only then move the whole batch to `processed_folder` with one UID MOVE of its UID set (UID COPY +
   \\Deleted + UID EXPUNGE without MOVE); the keys become `moved`, and where each message went (the server's
   UIDPLUS COPYUID answer) is recorded as a key in `processed_folder` (state `filed`);
4. threading runs from the stored mail, as on the SMTP path (`thread_stored`: batches of 16 through the intake
   engine, in the order they were stored, each mail's CPU work in the preparation worker within
   limits.mail_cpu_seconds), between the batches of the drain and after each pass over the folder: the
   worker prepares the next batch (`gateway.engine.ThreadAhead`) while this thread writes one or fetches and
   stores the next batch of the drain; the outcome is recorded on the keys, and a mail the pipeline
   quarantined is moved on from `processed_folder` to `quarantine_folder` by the UID it got there. Mail over
   `limits.max_message_size` goes to the quarantine folder unfetched.

Without UIDPLUS (so no way to find a moved message again) and with a quarantine folder of its own, the
poller threads each batch before it moves it instead (the slower order: stored, threaded, then moved by
outcome); `thread_after_move` forces either order.

Nothing is lost, nothing doubled: a crash between the commit and the move leaves the message in the folder,
found in `imap_seen` it is only moved; a crash after the move leaves it stored and not threaded, and the next
drain threads it (processing is idempotent; the service's sweep does it as well) and refiles it if it was
quarantined. A new UIDVALIDITY (the folder was recreated), or a crash before `imap_seen` was written, makes
the message be fetched and stored again; the core's dedupe (same Message-ID and sender, or same bytes)
records the second copy as a `duplicate`, so no second ticket is ever opened. (One narrow window is not
covered: a crash after the MOVE and before its record; the mail is stored and threaded, but if quarantined
it stays in `processed_folder`.) When the database is unreachable the message stays where it is and the
poller tries again later (backing off); stored mail whose threading was postponed is threaded on the next
drain.

One poller per mailbox across instances: every `serve` (and `imap poll`) sharing the database polls an
account only while it holds the account's lease (gateway.lease, name `imap:<account>`). The service loop
takes it when it is free, renews it every third of `lease_seconds` (also while it waits in IDLE or sleeps),
and checks it before every batch it stores; an instance without it stands by (no IMAP connection) and tries
again every third of `lease_seconds`, so it takes over within about 1.3 times `lease_seconds` of the holder's
death. A drain that lost the lease stops like a stopped one (what is committed is moved); the new holder
threads whatever its predecessor stored and did not thread. `imap poll` skips an account another instance
holds.

TLS: `security` 'tls' (implicit) or 'starttls', the certificate and host name verified against `ca_file` (or
the system's CAs). A certificate that is not accepted, or a `ca_file` that cannot be loaded, raises
TlsSetupError: the service loop logs it once, shows it in the account's state (/healthz) and stops polling
that account (no retries: the operator must act); `imap poll` exits 78.

Running it:

- once (tests, cron, `ticket-gateway imap poll`): `ImapPoller(app, account).poll_once()` drains the folder
  and returns a `PollResult` (counts);
- as a service: `ImapPoller(app, account).run(stop_event)` blocks until `stop_event` (a `threading.Event`)
  is set: drain, then IDLE (re-issued every `idle_seconds`) where the server has it, else sleep
  `poll_seconds`; reconnect with exponential backoff (1 s doubling to 5 min) on any IMAP or network error.
  `start_pollers(app, stop_event)` starts one daemon thread per configured account and returns the threads
  (join them after setting the event); from asyncio, `await run_pollers(app, stop_event)` runs them on a
  dedicated executor and returns when all have stopped. After `stop_event.set()` a poller finishes the mail
  in hand (moves what is committed), logs out and returns within about a second.

The package: `account` (the `[[imap]]` account, PollResult, the exceptions), `mailbox` (the IMAP connection),
`ledger` (what is durable: imap_seen), `drain` (one drain: store, record, move), `threads` (threading the
stored mail, refiling the quarantined), `loop` (ImapPoller: the service loop, backoff, the lease) and `pollers`
(running them).
"""

from gateway.imap.account import ImapAccount, PollResult, TlsSetupError, accounts
from gateway.imap.loop import ImapPoller
from gateway.imap.pollers import account_status, install_service, poll_accounts, run_pollers, start_pollers

__all__ = ["ImapAccount", "ImapPoller", "PollResult", "TlsSetupError", "account_status", "accounts", "install_service",
           "poll_accounts", "run_pollers", "start_pollers"]
