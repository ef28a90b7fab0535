from gateway.migrate import head_revisions
from gateway.migrations import HEADS


def test_heads_constant_matches_alembic():
    """The start-up fast path compares the database with HEADS; it must name every migration head."""
    assert HEADS == head_revisions()
