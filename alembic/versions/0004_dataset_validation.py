"""datasets: status and progress of a background validation (issue 3)

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as b:
        b.add_column(sa.Column("status", sa.String(length=20), nullable=False, server_default="ready"))
        b.add_column(sa.Column("progress", sa.Float(), nullable=False, server_default="1"))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as b:
        b.drop_column("progress")
        b.drop_column("status")
