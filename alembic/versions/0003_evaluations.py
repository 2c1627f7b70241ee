"""evaluations: evaluation jobs, their logs and per-sample outputs; validation split of datasets

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

STATUS = sa.Enum("queued", "starting", "running", "stopping", "succeeded", "failed", "cancelled",
                 name="jobstatus", native_enum=False, length=20)


def upgrade() -> None:
    with op.batch_alter_table("datasets") as b:
        b.add_column(sa.Column("val_annotation", sa.Text(), nullable=True))
        b.add_column(sa.Column("num_val_samples", sa.Integer(), nullable=False, server_default="0"))
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=True),
        sa.Column("status", STATUS, nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("split", sa.String(length=20), nullable=False),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("run_dir", sa.Text(), nullable=True),
        sa.Column("celery_task_id", sa.String(length=64), nullable=True),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("done", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"]),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name="fk_evaluations_owner_id_users"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evaluations_owner_id", "evaluations", ["owner_id"])
    op.create_index("ix_evaluations_status", "evaluations", ["status"])
    op.create_table(
        "evaluation_logs",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("stream", sa.String(length=10), nullable=False),
        sa.Column("line", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evaluation_logs_eval_seq", "evaluation_logs", ["evaluation_id", "seq"], unique=True)
    op.create_table(
        "evaluation_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("evaluation_id", sa.Integer(), nullable=False),
        sa.Column("model_index", sa.Integer(), nullable=False),
        sa.Column("sample_index", sa.Integer(), nullable=False),
        sa.Column("sample_id", sa.String(length=200), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("answers", sa.JSON(), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["evaluation_id"], ["evaluations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evaluation_samples_key", "evaluation_samples",
                    ["evaluation_id", "model_index", "sample_index"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_evaluation_samples_key", table_name="evaluation_samples")
    op.drop_table("evaluation_samples")
    op.drop_index("ix_evaluation_logs_eval_seq", table_name="evaluation_logs")
    op.drop_table("evaluation_logs")
    op.drop_index("ix_evaluations_status", table_name="evaluations")
    op.drop_index("ix_evaluations_owner_id", table_name="evaluations")
    op.drop_table("evaluations")
    with op.batch_alter_table("datasets") as b:
        b.drop_column("num_val_samples")
        b.drop_column("val_annotation")
