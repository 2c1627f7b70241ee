"""benchmark-suite evaluations (issue 23, part 3): evaluations.benchmarks (the registered
benchmarks an evaluation runs, resolved at submission) and evaluations.samples_per_second (the
evaluation program's generation rate, in its progress)

Revision ID: 0020_eval_suite
Revises: 0019_eval_mixture
"""

import sqlalchemy as sa
from alembic import op

revision = "0020_eval_suite"
down_revision = "0019_eval_mixture"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("evaluations") as b:
        b.add_column(sa.Column("benchmarks", sa.JSON(), nullable=True))
        b.add_column(sa.Column("samples_per_second", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as b:
        b.drop_column("samples_per_second")
        b.drop_column("benchmarks")
