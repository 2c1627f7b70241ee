"""job service: users and API tokens, ownership, job scheduling and lifecycle fields,
worker heartbeats and GPU leases

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JOB_COLUMNS = [
    sa.Column("owner_id", sa.Integer(), nullable=True),
    sa.Column("gpus", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("priority", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("requeue_on_failure", sa.Boolean(), nullable=False, server_default=sa.false()),
    sa.Column("resume_from_checkpoint", sa.Text(), nullable=True),
    sa.Column("parent_job_id", sa.Integer(), nullable=True),
    sa.Column("node", sa.String(length=200), nullable=True),
    sa.Column("gpu_ids", sa.String(length=200), nullable=True),
    sa.Column("rendezvous_port", sa.Integer(), nullable=True),
    sa.Column("memory_estimate", sa.JSON(), nullable=True),
    sa.Column("command", sa.Text(), nullable=True),
    sa.Column("last_checkpoint", sa.Text(), nullable=True),
]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("is_admin", sa.Boolean(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "workers",
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_memory_mib", sa.Integer(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash", name="uq_api_tokens_token_hash"),
    )
    op.create_index("ix_api_tokens_user_id", "api_tokens", ["user_id"])
    op.create_table(
        "gpu_leases",
        sa.Column("node", sa.String(length=200), nullable=False),
        sa.Column("gpu_index", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("node", "gpu_index"),
    )
    op.create_index("ix_gpu_leases_job_id", "gpu_leases", ["job_id"])

    for table in ("datasets", "models"):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("owner_id", sa.Integer(), nullable=True))
            b.create_index(f"ix_{table}_owner_id", ["owner_id"])
            b.create_foreign_key(f"fk_{table}_owner_id_users", "users", ["owner_id"], ["id"])

    with op.batch_alter_table("jobs") as b:
        for col in JOB_COLUMNS:
            b.add_column(col)
        b.create_index("ix_jobs_owner_id", ["owner_id"])
        b.create_index("ix_jobs_queue", ["status", "priority", "id"])
        b.create_foreign_key("fk_jobs_parent_job_id_jobs", "jobs", ["parent_job_id"], ["id"])
        b.create_foreign_key("fk_jobs_owner_id_users", "users", ["owner_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.drop_constraint("fk_jobs_owner_id_users", type_="foreignkey")
        b.drop_constraint("fk_jobs_parent_job_id_jobs", type_="foreignkey")
        b.drop_index("ix_jobs_queue")
        b.drop_index("ix_jobs_owner_id")
        for col in reversed(JOB_COLUMNS):
            b.drop_column(col.name)
    for table in ("models", "datasets"):
        with op.batch_alter_table(table) as b:
            b.drop_constraint(f"fk_{table}_owner_id_users", type_="foreignkey")
            b.drop_index(f"ix_{table}_owner_id")
            b.drop_column("owner_id")
    op.drop_index("ix_gpu_leases_job_id", table_name="gpu_leases")
    op.drop_table("gpu_leases")
    op.drop_index("ix_api_tokens_user_id", table_name="api_tokens")
    op.drop_table("api_tokens")
    op.drop_table("workers")
    op.drop_table("users")
