"""Alembic migrations. 0001_core is the root; each feature adds its own branch from it
(0002_outbound, 0003_sla, 0004_transports, 0005_hostile_senders, ...), and `upgrade` applies every head."""

# Every head revision; a test checks this equals Alembic's heads. Lets start-up skip loading Alembic.
HEADS = frozenset({"0002_outbound", "0003_sla", "0004_transports", "0005_hostile_senders", "0005_api",
                   "0005_backends", "0006_staff_model", "0007_leases", "0008_ticket_numbers"})
