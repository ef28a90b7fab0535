"""Alembic migrations. Revisions form one linear chain: 0001_core, 0002_outbound, 0003_sla, 0004_transports."""

# The newest revision; a test checks that it equals Alembic's head. Lets start-up skip loading Alembic.
HEAD = "0001_core"
