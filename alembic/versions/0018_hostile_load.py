"""hostile load and input (issue 18): idempotent submission, one resume per job, CPU count of
workers, 64-bit step counters, a heartbeat of background validations

Revision ID: 0018_hostile
Revises: 0013c
"""

import sqlalchemy as sa
from alembic import op

revision = "0018_hostile"
down_revision = "0013c"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("idempotency_key", sa.String(length=200), nullable=True))
        b.alter_column("step", type_=sa.BigInteger(), existing_type=sa.Integer())
        b.alter_column("total_steps", type_=sa.BigInteger(), existing_type=sa.Integer())
    op.create_index("ux_jobs_idempotency", "jobs", ["owner_id", "idempotency_key"], unique=True,
                    postgresql_where=sa.text("idempotency_key IS NOT NULL"),
                    sqlite_where=sa.text("idempotency_key IS NOT NULL"))
    # A job is continued from its checkpoint at most once (resume, or requeue after a failure).
    op.create_index("ux_jobs_one_resume", "jobs", ["parent_job_id"], unique=True,
                    postgresql_where=sa.text("resume_from_checkpoint IS NOT NULL"),
                    sqlite_where=sa.text("resume_from_checkpoint IS NOT NULL"))
    with op.batch_alter_table("workers") as b:
        b.add_column(sa.Column("cpus", sa.Integer(), nullable=True))
    with op.batch_alter_table("datasets") as b:
        b.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as b:
        b.drop_column("heartbeat_at")
    with op.batch_alter_table("workers") as b:
        b.drop_column("cpus")
    op.drop_index("ux_jobs_one_resume", "jobs")
    op.drop_index("ux_jobs_idempotency", "jobs")
    with op.batch_alter_table("jobs") as b:
        b.alter_column("total_steps", type_=sa.Integer(), existing_type=sa.BigInteger())
        b.alter_column("step", type_=sa.Integer(), existing_type=sa.BigInteger())
        b.drop_column("idempotency_key")
