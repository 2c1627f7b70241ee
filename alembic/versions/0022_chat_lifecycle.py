"""chat_requests join the one run lifecycle (issue 24): the lifecycle's states and columns

A chat's own words become the lifecycle's states (done -> succeeded; queued, running, failed,
cancelled unchanged), its ``error`` becomes the ``failure_reason`` every kind of run has, and
the other run columns are added (``started_at``, ``updated_at``, ...). Downgrade maps back
(starting -> running, the state a claimed chat had; stopping -> cancelled, what a chat whose
client went away was marked at once).

Revision ID: 0022_chat_lifecycle
Revises: 0021_import_lifecycle
"""

import sqlalchemy as sa
from alembic import op

revision = "0022_chat_lifecycle"
down_revision = "0021_import_lifecycle"
branch_labels = None
depends_on = None

UP = {"done": "succeeded"}
DOWN = {"starting": "running", "stopping": "cancelled", "succeeded": "done"}


def _added() -> tuple[sa.Column, ...]:
    return (
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True),  # NOT NULL once filled
        sa.Column("log_offset", sa.BigInteger(), nullable=False, server_default="0"),
    )


def _map_status(words: dict[str, str]) -> None:
    # one statement per word, each on rows that still hold an old word: no mapping applies twice
    for old, new in words.items():
        op.execute(sa.text("UPDATE chat_requests SET status = :new WHERE status = :old").bindparams(new=new, old=old))


# No batch (copy-and-rename) of chat_requests on SQLite: dropping the old table would delete the
# chats' chat_tokens rows (ON DELETE CASCADE, foreign keys are on). Plain ALTER TABLE ADD/DROP
# COLUMN on both (SQLite 3.35+); on SQLite updated_at stays nullable in the schema (always written).
def upgrade() -> None:
    for column in _added():
        op.add_column("chat_requests", column)
    _map_status(UP)
    op.execute("UPDATE chat_requests SET failure_reason = error, "
               "updated_at = COALESCE(finished_at, heartbeat_at, created_at)")
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("chat_requests", "updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    op.drop_column("chat_requests", "error")


def downgrade() -> None:
    op.add_column("chat_requests", sa.Column("error", sa.Text(), nullable=True))
    _map_status(DOWN)
    # a chat's error was its failure only
    op.execute("UPDATE chat_requests SET error = failure_reason WHERE status = 'failed'")
    for column in reversed(_added()):
        op.drop_column("chat_requests", column.name)
