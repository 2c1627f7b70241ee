"""model_imports join the one run lifecycle (issue 24): the lifecycle's states and columns

The import's own words become the lifecycle's states (running stays running; cancelling ->
stopping, done -> succeeded; queued, failed, cancelled unchanged), its ``error`` becomes the
``failure_reason`` every kind of run has, and the other run columns are added (``started_at``,
``updated_at``, ...). The API still answers with the import's words (services/model_imports.py).
Downgrade maps back (starting -> running, the state a claimed import had).

Revision ID: 0021_import_lifecycle
Revises: 0020_eval_suite
"""

import sqlalchemy as sa
from alembic import op

revision = "0021_import_lifecycle"
down_revision = "0020_eval_suite"
branch_labels = None
depends_on = None

UP = {"cancelling": "stopping", "done": "succeeded"}
DOWN = {"starting": "running", "stopping": "cancelling", "succeeded": "done"}


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
        op.execute(sa.text("UPDATE model_imports SET status = :new WHERE status = :old").bindparams(new=new, old=old))


def upgrade() -> None:
    with op.batch_alter_table("model_imports") as b:
        for column in _added():
            b.add_column(column)
    _map_status(UP)
    op.execute("UPDATE model_imports SET failure_reason = error, "
               "updated_at = COALESCE(finished_at, heartbeat_at, created_at)")
    with op.batch_alter_table("model_imports") as b:
        b.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        b.drop_column("error")


def downgrade() -> None:
    with op.batch_alter_table("model_imports") as b:
        b.add_column(sa.Column("error", sa.Text(), nullable=True))
    _map_status(DOWN)
    # the import's error was its failure only; a cancel's reason was its message
    op.execute("UPDATE model_imports SET error = failure_reason WHERE status = 'failed'")
    with op.batch_alter_table("model_imports") as b:
        for column in reversed(_added()):
            b.drop_column(column.name)
