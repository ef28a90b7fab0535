"""Exit statuses of the `ticket-gateway` command and `serve`, from sysexits(3): an MTA reads them (75 means
"try again later"), systemd and scripts too. A leaf module: the CLI and the service share it."""

from __future__ import annotations

EX_OK = 0
EX_USAGE = 64  # the command line is wrong
EX_DATAERR = 65  # the input is not a mail
EX_NOINPUT = 66  # an input file cannot be read; also what a command names does not exist (no ticket #99)
EX_NOUSER = 67  # not one of our addresses (the MTA pipe's or ingest's --recipient: an MTA bounces it)
EX_SOFTWARE = 70  # a bug
EX_OSERR = 71  # the operating system refused (e.g. a port in use)
EX_TEMPFAIL = 75  # the store is unavailable: try again later
EX_CONFIG = 78  # the configuration is wrong
EX_PIPE = 141  # stdout's reader went away (`| head`): as a command killed by SIGPIPE
