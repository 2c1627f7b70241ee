"""chat_requests and chat_tokens: the playground's queue for the workers' model servers, and
the lease holder column for a model server's GPU (issue 13)

Revision ID: 0013c
Revises: 0013
"""

import sqlalchemy as sa
from alembic import op

revision = "0013c"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chat_requests",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("owner_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True, index=True),
        sa.Column("status", sa.String(length=20), nullable=False, index=True),
        sa.Column("model_path", sa.Text(), nullable=False),
        sa.Column("builtin", sa.Boolean(), nullable=False),
        sa.Column("template", sa.String(length=50), nullable=False),
        sa.Column("tiling", sa.JSON(), nullable=True),
        sa.Column("conversation", sa.JSON(), nullable=False),
        sa.Column("image", sa.Text(), nullable=True),
        sa.Column("max_new_tokens", sa.Integer(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("batch_size", sa.Integer(), nullable=True),
        sa.Column("reply", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_table(
        "chat_tokens",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("chat_id", sa.Integer(), sa.ForeignKey("chat_requests.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
    )
    op.create_index("ix_chat_tokens_chat_seq", "chat_tokens", ["chat_id", "seq"], unique=True)
    with op.batch_alter_table("gpu_leases") as b:
        b.add_column(sa.Column("holder", sa.String(length=200), nullable=True))
        b.create_index("ix_gpu_leases_holder", ["holder"])


def downgrade() -> None:
    with op.batch_alter_table("gpu_leases") as b:
        b.drop_index("ix_gpu_leases_holder")
        b.drop_column("holder")
    op.drop_index("ix_chat_tokens_chat_seq", "chat_tokens")
    op.drop_table("chat_tokens")
    op.drop_table("chat_requests")
