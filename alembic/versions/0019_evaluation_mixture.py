"""evaluations on a mixture's held-out parts: evaluations.mixture, dataset_id optional, and the
dataset of each stored sample (issue 17)

Revision ID: 0019_eval_mixture
Revises: 0017
"""

import sqlalchemy as sa
from alembic import op

revision = "0019_eval_mixture"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as b:
        b.add_column(sa.Column("mixture", sa.JSON(), nullable=True))
        b.alter_column("dataset_id", existing_type=sa.Integer(), nullable=True)
    with op.batch_alter_table("evaluation_samples") as b:
        b.add_column(sa.Column("dataset", sa.String(length=200), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluation_samples") as b:
        b.drop_column("dataset")
    with op.batch_alter_table("evaluations") as b:
        b.alter_column("dataset_id", existing_type=sa.Integer(), nullable=False)
        b.drop_column("mixture")
