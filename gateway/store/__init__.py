"""The store seam (issue 11): what the pipeline's handlers ask of the store, and every speed-up behind it.

- `gateway.store.base`: the `Store` protocol (the handlers' questions and writes), what handlers declare ahead
  (`Asks`), the dedupe claims;
- `gateway.store.sql`: `SqlStore`, the database, and every speed-up of the pipeline's database work: what is
  loaded ahead for a batch, the plain INSERTs, the driver-level savepoints;
- `gateway.store.memo`: what a write transaction remembers, and when it is forgotten;
- `gateway.store.ahead`: the pure work of a mail done ahead by the preparation worker (gateway.prepare);
- `gateway.store.memory`: `InMemoryStore`, the twin the handlers' unit tests run on.

Handlers import `gateway.store.base` (and `gateway.store.ahead` for its OverBudget) only.
"""
