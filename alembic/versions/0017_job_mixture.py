"""jobs: the resolved training mixture; dataset_id optional (a job on a meta file only) (issue 17)

Revision ID: 0017
Revises: 0013d
"""

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0013d"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.add_column(sa.Column("mixture", sa.JSON(), nullable=True))
        b.alter_column("dataset_id", existing_type=sa.Integer(), nullable=True)


def downgrade() -> None:
    with op.batch_alter_table("jobs") as b:
        b.alter_column("dataset_id", existing_type=sa.Integer(), nullable=False)
        b.drop_column("mixture")
